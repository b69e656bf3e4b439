"""The last global prior a device received, kept in its own storage for on-device inference.

A prior arrives with every train and evaluate message. ``PriorStore.install`` keeps it only after checking it: a
newer global model than the one kept (within a run: a train message of round r carries the model after round r-1,
the devices' evaluation after the run's last round), a causal architecture the device can stream, exactly the
architecture's parameter names and shapes, finite values. It then writes the weights and their ONNX step
(``model.device.export.fill_weights`` into the architecture's graph, exported once and kept in ``graphs/``) into a
new folder, loads the step in ONNX Runtime and checks its signature and its answer on a probe event against torch's,
and only then points ``current.json`` at it (an atomic replace): until the new prior loads, the previous one stays in
use. The folder of the prior it replaces is removed afterwards.

Layout::

    graphs/<architecture>.onnx      one unfilled step graph per architecture
    <n>/weights.npz, <n>/step.onnx  the n-th prior kept (numpy arrays, no pickle; its exported step)
    <n>/prior.json                  where it came from: run, round, message, version, model, fingerprint, signature
    current.json                    {"folder": "<n>"}

Installing is serialised by a lock file, so a device's ClientApp and its app may both install. Nothing here sends
anything anywhere: a refusal (``PriorRefused``) stays in the device's own log.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from model.device.export import fill_weights, step_graph, step_signature
from model.device.runtime import DeviceStep, StepSignature
from model.device.stream_state import model_fingerprint
from model.features.encoding import FEATURE_DIM
from model.network.networks import ModelConfig, PreferenceLSTM
from storage.atomic import atomic_write_bytes

MESSAGES = ("train", "evaluate")
_GRAPHS: dict[str, onnx.ModelProto] = {}
"""Step graphs by architecture, shared by every store in this process (an export takes seconds)."""
PROBE_TOLERANCE = 1e-4
"""Largest difference allowed between ONNX Runtime's and torch's logits on the probe event."""


class PriorRefused(ValueError):
    """A received prior the device does not keep; ``reason`` is a short code, the message names the rule and value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class PriorInfo:
    """Where a kept prior came from (its ``prior.json``).

    Attributes:
        run_key: the run it belongs to (``TrainInstructions.run_key``).
        round: the round of the message that carried it.
        message: "train" or "evaluate".
        version: the global model's version: rounds aggregated into it (round - 1 for train, round for evaluate).
        model: its architecture (``ModelConfig`` fields).
        fingerprint: ``model_fingerprint`` of its weights.
        signature: its ONNX step's inputs and outputs, as ``[[name, shape], ...]`` lists.
        received_at: UTC seconds when the device kept it.
    """

    run_key: str
    round: int
    message: str
    version: int
    model: dict
    fingerprint: str
    signature: dict
    received_at: float

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.model)

    @property
    def step_signature(self) -> StepSignature:
        def shapes(pairs: list) -> tuple[tuple[str, tuple[int, ...]], ...]:
            return tuple((str(name), tuple(int(d) for d in shape)) for name, shape in pairs)
        return StepSignature(shapes(self.signature["inputs"]), shapes(self.signature["outputs"]))


@dataclass(frozen=True)
class KeptPrior:
    """A prior in the store: its folder and ``PriorInfo``."""

    folder: Path
    info: PriorInfo

    @property
    def onnx_path(self) -> Path:
        return self.folder / "step.onnx"

    def weights(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / "weights.npz", allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}

    def model(self) -> PreferenceLSTM:
        """The prior as a torch model in evaluation mode (for what needs a whole window: the personal offset)."""
        with torch.random.fork_rng(devices=[]):
            model = PreferenceLSTM(self.info.model_config)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights().items()})
        return model.eval()

    def runtime(self) -> DeviceStep:
        """Its step in ONNX Runtime, checked against the signature it was kept with."""
        return DeviceStep(self.onnx_path, expected=self.info.step_signature)


def message_version(message: str, round_number: int) -> int:
    """The global model version a message carries: a train message of round r the model after r - 1 rounds, the
    devices' evaluation (after the last round r) the model after r rounds."""
    if message not in MESSAGES:
        raise ValueError(f"message must be one of {list(MESSAGES)}; found {message!r}.")
    return round_number - 1 if message == "train" else round_number


def architecture_key(config: ModelConfig) -> str:
    """A file-name-safe key of an architecture and the feature width it reads."""
    text = json.dumps({**dataclasses.asdict(config), "feature_dim": FEATURE_DIM}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PriorStore:
    """The priors kept in ``folder`` (created on first install). Reading needs no lock; installing takes one."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def current(self) -> KeptPrior | None:
        """The prior in use, or None before the first one is kept.

        An install in another process may swap the pointer and delete the folder it named between the two reads
        here; the pointer is then read again (it names the new folder, which stays until the next install)."""
        try:
            return self._read_current()
        except FileNotFoundError:  # the folder the pointer named was removed by an install elsewhere: read it again
            return self._read_current()

    def _read_current(self) -> KeptPrior | None:
        try:
            name = json.loads(self._pointer.read_text())["folder"]
        except FileNotFoundError:
            return None
        folder = self.folder / str(name)
        return KeptPrior(folder, PriorInfo(**json.loads((folder / "prior.json").read_text())))

    def stamp(self) -> tuple[int, int] | None:
        """What changes whenever a prior is installed (the pointer file's inode and time: it is replaced by a rename),
        so a reader re-reads ``current()`` only then; None before the first install."""
        try:
            stat = self._pointer.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    @property
    def _pointer(self) -> Path:
        return self.folder / "current.json"

    def install(self, arrays: Mapping[str, np.ndarray], config: ModelConfig, *, run_key: str, round_number: int,
                message: str, expected: StepSignature | None = None, now: float | None = None) -> KeptPrior:
        """Check, write and export a received prior, then make it the current one (module docstring).

        Args:
            arrays: the global model's arrays by ``state_dict`` name.
            config: its architecture, as the message announces it.
            run_key, round_number, message: where it came from ("train" or "evaluate").
            expected: the step signature the app was built for, if it fixes one.
            now: UTC seconds to record (default: the clock).

        Raises:
            PriorRefused: stale, not streamable, another shape, not finite, another signature, or its ONNX step
                disagrees with torch; the current prior is left in use.
        """
        version = message_version(message, round_number)
        with self._locked():
            kept = self.current()
            if kept is not None and kept.info.run_key == run_key and version <= kept.info.version:
                raise PriorRefused("stale", f"run {run_key!r} version {version} is not newer than the kept version "
                                            f"{kept.info.version}")
            model, weights = _checked_model(arrays, config)
            signature = step_signature(model)
            if expected is not None and signature != expected:
                raise PriorRefused("signature", f"the prior's step takes {signature.inputs}, the app's {expected.inputs}")
            folder = self._new_folder()
            try:
                self._write(folder, model, weights, signature)
                info = PriorInfo(run_key, round_number, message, version, dataclasses.asdict(config),
                                 model_fingerprint(model), _as_json(signature),
                                 time.time() if now is None else now)
                atomic_write_bytes(folder / "prior.json", json.dumps(dataclasses.asdict(info)).encode())
                atomic_write_bytes(self._pointer, json.dumps({"folder": folder.name}).encode())
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            for old in self._prior_folders():
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
            return KeptPrior(folder, info)

    def _write(self, folder: Path, model: PreferenceLSTM, weights: dict[str, np.ndarray],
               signature: StepSignature) -> None:
        """The weights and the ONNX step into ``folder``; the step must load and agree with torch on a probe."""
        buffer = io.BytesIO()
        np.savez(buffer, **weights)
        atomic_write_bytes(folder / "weights.npz", buffer.getvalue())
        atomic_write_bytes(folder / "step.onnx", fill_weights(self._graph(model), weights))
        try:
            runtime = DeviceStep(folder / "step.onnx", expected=signature)
        except Exception as error:  # noqa: BLE001 - any failure to load means the file is not kept
            raise PriorRefused("onnx", f"the exported step does not load: {error}") from None
        probe = np.linspace(-1.0, 1.0, FEATURE_DIM, dtype=np.float32)[None]
        h, c = runtime.initial_state()
        logits, _, _ = runtime(probe, h=h, c=c)
        with torch.no_grad():
            expected_logits, _ = model.step(torch.from_numpy(probe), model.initial_state(1))
        gap = float(np.max(np.abs(logits - expected_logits.numpy())))
        if not gap <= PROBE_TOLERANCE:
            raise PriorRefused("onnx", f"the exported step's logits differ from torch's by {gap:.3g} on the probe")

    def _graph(self, model: PreferenceLSTM) -> onnx.ModelProto:
        """The architecture's step graph: in this process's memory, else from ``graphs/``, else exported (once) and
        kept there."""
        key = architecture_key(model.config)
        path = self.folder / "graphs" / f"{key}.onnx"
        if key not in _GRAPHS:
            _GRAPHS[key] = onnx.load_model_from_string(path.read_bytes()) if path.is_file() else step_graph(model)
        if not path.is_file():  # this store keeps its own copy, whichever store exported it in this process
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _GRAPHS[key].SerializeToString())
        return _GRAPHS[key]

    def _prior_folders(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))

    def _new_folder(self) -> Path:
        folders = self._prior_folders()
        folder = self.folder / f"{(int(folders[-1].name) + 1) if folders else 1:06d}"
        folder.mkdir(parents=True)
        return folder

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _as_json(signature: StepSignature) -> dict:
    """A signature as ``prior.json`` holds it (lists, as JSON reads them back)."""
    return {"inputs": [[name, list(shape)] for name, shape in signature.inputs],
            "outputs": [[name, list(shape)] for name, shape in signature.outputs]}


def _checked_model(arrays: Mapping[str, np.ndarray], config: ModelConfig
                   ) -> tuple[PreferenceLSTM, dict[str, np.ndarray]]:
    """A torch model of ``config`` holding ``arrays``, after checking the architecture streams and the arrays fit."""
    if config.bidirectional:
        raise PriorRefused("not-streamable", "the model is bidirectional: a device streams one event at a time")
    with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave the caller's RNG alone
        model = PreferenceLSTM(config).eval()
    expected = model.state_dict()
    if set(arrays) != set(expected):
        raise PriorRefused("shapes", f"missing {sorted(set(expected) - set(arrays))}, unexpected "
                                     f"{sorted(set(arrays) - set(expected))}")
    weights = {}
    for name, reference in expected.items():
        value = np.asarray(arrays[name])
        if tuple(value.shape) != tuple(reference.shape) or value.dtype.kind != "f":
            raise PriorRefused("shapes", f"{name!r} is {value.dtype} {tuple(value.shape)}; the model needs float "
                                         f"{tuple(reference.shape)}")
        with np.errstate(over="ignore"):
            weights[name] = np.ascontiguousarray(value, dtype=np.float32)
        if not np.all(np.isfinite(weights[name])):  # checked as float32: 1e300 in float64 is infinite on the device
            raise PriorRefused("not-finite", f"{name!r} holds NaN or infinity (as float32)")
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    return model, weights
