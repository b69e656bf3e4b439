"""The device model's streaming step in ONNX Runtime: what runs on the phone, without torch.

``model.device.export.export_device_model`` writes the causal model's single step as an ONNX file; ``DeviceStep`` loads it
into an ONNX Runtime session and advances a user's state one event at a time:
``(event inputs ..., h, c) -> (logits [1, 8], h, c)``. This module needs only numpy and ``onnxruntime`` (the app
ships ORT's mobile package; in Python, the ``onnxruntime`` wheel).

Why ONNX Runtime and not ExecuTorch (both on the package index; measured on this 2-core machine, one thread, the
default 32-unit device model, 2,000 calls of the same step, 2026-12):

* ONNX Runtime 1.32: installed Python package 78 MB (onnxruntime/, its native library 37 MB) and numpy, nothing
  else; per-event p50 0.021 ms, p99 0.066 ms. Exporting needs ``onnx`` and ``onnxscript`` (39 MB), not the device.
* ExecuTorch 1.5.1 (``.pte`` lowered to XNNPACK): installed package 130 MB plus torchao 26 MB, and its Python
  runtime takes torch tensors, so torch (754 MB) comes along; per-event p50 0.015 ms, p99 0.136 ms.

Both are two orders of magnitude under the 80 ms budget; ONNX Runtime runs the file without torch, with the
smaller install and the steadier tail, and its session reports the file's input and output shapes, which is how a
file made for another model shape is refused before the first event (``DeviceModelMismatch``).
``benchmarks/device_inference.py`` reports its per-event latency beside torch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

STATE_NAMES = ("h", "c")
OUTPUT_NAMES = ("logits", "h_next", "c_next")


class DeviceModelMismatch(ValueError):
    """An exported step does not fit the model shape the app expects (another hidden size, feature width ...)."""


@dataclass(frozen=True)
class StepSignature:
    """Names and shapes of a step's tensors, all float32, batch 1.

    Attributes:
        inputs: ``(name, shape)`` of the event inputs, then of ``h`` and ``c``.
        outputs: ``(name, shape)`` of ``logits``, ``h_next`` and ``c_next``.
    """

    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def event_inputs(self) -> tuple[str, ...]:
        """Names of the inputs that are not the state."""
        return tuple(name for name, _ in self.inputs if name not in STATE_NAMES)

    def state_shape(self) -> tuple[int, ...]:
        return dict(self.inputs)["h"]


def _describe(tensors: tuple[tuple[str, tuple[int, ...]], ...]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in tensors)


def session_signature(session: ort.InferenceSession) -> StepSignature:
    """The signature of a loaded ONNX step, read from the session (the file's graph, not its metadata)."""
    def shapes(args) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple((a.name, tuple(d if isinstance(d, int) else -1 for d in a.shape)) for a in args)
    return StepSignature(shapes(session.get_inputs()), shapes(session.get_outputs()))


class DeviceStep:
    """One exported step in an ONNX Runtime session, checked against the signature the app expects.

    Args:
        path: the ``.onnx`` file (``model.device.export.export_device_model``).
        expected: the signature of the model the app was built for (``model.device.export.step_signature(model)``, or the
            one the app shipped with); ``None`` accepts the file's own.
        threads: ONNX Runtime intra-op threads (1: a phone's background work should not spread over cores).

    Raises:
        DeviceModelMismatch: the file's inputs or outputs differ from ``expected`` (named, with both shapes).
        FileNotFoundError: no file at ``path``.
    """

    def __init__(self, path: str | Path, expected: StepSignature | None = None, *, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no exported device model at {self.path}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.signature = session_signature(self._session)
        if expected is not None and self.signature != expected:
            raise DeviceModelMismatch(
                f"{self.path} was exported for another model shape: the file takes {_describe(self.signature.inputs)}"
                f" and returns {_describe(self.signature.outputs)}; this app's model takes "
                f"{_describe(expected.inputs)} and returns {_describe(expected.outputs)}. Export the model the app "
                "runs (model.device.export.export_device_model) and ship that file."
            )
        if tuple(name for name, _ in self.signature.outputs) != OUTPUT_NAMES or \
                tuple(name for name, _ in self.signature.inputs[-2:]) != STATE_NAMES:
            raise DeviceModelMismatch(f"{self.path} is not a device step: inputs must end with {list(STATE_NAMES)} "
                                      f"and outputs be {list(OUTPUT_NAMES)}. Found {_describe(self.signature.inputs)}"
                                      f" -> {_describe(self.signature.outputs)}.")
        self._shapes = dict(self.signature.inputs)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``(h, c)`` for a new user."""
        shape = self.signature.state_shape()
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def __call__(self, *event_inputs: np.ndarray, h: np.ndarray, c: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One event: ``(event inputs in signature order, h, c) -> (logits, h, c)``, float32 arrays.

        Raises:
            ValueError: an input has another shape than the file's (named, with both shapes).
        """
        names = self.signature.event_inputs
        if len(event_inputs) != len(names):
            raise ValueError(f"the step takes {len(names)} event input(s) {list(names)}; found {len(event_inputs)}.")
        feed = dict(zip(names, event_inputs))
        feed["h"], feed["c"] = h, c
        for name, value in feed.items():
            if value.shape != self._shapes[name]:
                raise ValueError(f"input {name!r} must have shape {list(self._shapes[name])} (the exported "
                                 f"model's); found {list(value.shape)}.")
        feed = {name: np.asarray(value, dtype=np.float32) for name, value in feed.items()}
        logits, h_next, c_next = self._session.run(None, feed)
        return logits, h_next, c_next
