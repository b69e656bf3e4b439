"""Music generators behind one protocol: real ACE-Step v1 where it is installed, and nothing pretending otherwise.

``Generator.generate(request) -> GenerationResult``. ``AceStepGenerator`` runs ACE-Step v1 and returns the path of
the audio it wrote. It never downloads: ACE-Step's weights are fetched from a model hub on first use, which this
project does not do, so the generator refuses unless the package is installed and a checkpoint directory already
holds the weights. ``model.simulated_generator.SimulatedGenerator`` stands in for experiments without audio.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from model.acestep_requests import to_v1
from model.conditioning import MusicRequest
from model.vocab import GENRES

ACESTEP_CHECKPOINT_DIRS = ("music_dcae_f8c8", "music_vocoder", "ace_step_transformer", "umt5-base")
"""Sub-directories ACE-Step v1 loads from its checkpoint directory (autoencoder, vocoder, transformer, text encoder)."""

ACESTEP_INSTALL_HINT = (
    "Install ACE-Step v1 from its source repository (ace-step/ACE-Step, Python package `acestep`; the `ace-step` "
    "sdist on the package index does not build) into this environment"
)


class AceStepUnavailable(RuntimeError):
    """ACE-Step cannot run here: the package or its weights are missing. Nothing was downloaded."""


@dataclass(frozen=True)
class SegmentDescriptor:
    """What a generated segment sounds like, as the simulation describes it (never audio).

    Attributes:
        genre_mix: share of each genre in the piece, ``GENRES`` order, sums to 1.
        bpm: felt tempo.
        instruments: instruments audible in the piece.
    """

    genre_mix: tuple[float, ...]
    bpm: float
    instruments: tuple[str, ...]

    @property
    def main_genre(self) -> str:
        return GENRES[max(range(len(self.genre_mix)), key=self.genre_mix.__getitem__)]


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one generation.

    Attributes:
        source: "ace-step-v1" for real audio, "simulated" for a descriptor from the simulation.
        audio_path: the audio file written (real generation only).
        descriptor: what the piece would sound like (simulation only).
    """

    source: str
    audio_path: Path | None = None
    descriptor: SegmentDescriptor | None = None

    @property
    def is_simulated(self) -> bool:
        return self.source == "simulated"


@runtime_checkable
class Generator(Protocol):
    """Anything that turns a ``MusicRequest`` into a ``GenerationResult``."""

    def generate(self, request: MusicRequest) -> GenerationResult: ...


def acestep_installed() -> bool:
    """Whether the ACE-Step v1 package ``acestep`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("acestep") is not None


def missing_checkpoint_dirs(checkpoint_dir: Path) -> list[str]:
    """The ``ACESTEP_CHECKPOINT_DIRS`` that are absent or empty under ``checkpoint_dir``."""
    return [name for name in ACESTEP_CHECKPOINT_DIRS
            if not (checkpoint_dir / name).is_dir() or not any((checkpoint_dir / name).iterdir())]


class AceStepGenerator:
    """ACE-Step v1 on this machine, from weights already on disk.

    ACE-Step writes, next to each audio file, a ``*_input_params.json`` that repeats the prompt: ``output_dir``
    must be the device's private storage, like the behaviour log.

    Args:
        checkpoint_dir: a directory holding ``ACESTEP_CHECKPOINT_DIRS`` with the v1 weights.
        output_dir: where audio files are written.
        dtype: "bfloat16" or "float32", passed to ``ACEStepPipeline``.
        cpu_offload: keep idle sub-models on the CPU (less GPU memory, slower).
        device_id: CUDA device index.
        infer_step: diffusion steps per generation (the pipeline's default is 60).
    """

    def __init__(self, checkpoint_dir: str | Path, output_dir: str | Path, *, dtype: str = "bfloat16",
                 cpu_offload: bool = False, device_id: int = 0, infer_step: int = 60) -> None:
        if dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be 'bfloat16' or 'float32'. Found {dtype!r}.")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.output_dir = Path(output_dir)
        self.dtype, self.cpu_offload, self.device_id, self.infer_step = dtype, cpu_offload, device_id, infer_step
        self._pipeline = None

    def check_available(self) -> None:
        """Raise ``AceStepUnavailable`` saying what is missing, unless ACE-Step can run from local weights."""
        if not acestep_installed():
            raise AceStepUnavailable(
                f"ACE-Step v1 (package `acestep`) is not installed. {ACESTEP_INSTALL_HINT}, and put its weights "
                f"under {self.checkpoint_dir} (sub-directories {', '.join(ACESTEP_CHECKPOINT_DIRS)}). "
                "Nothing is downloaded: use SimulatedGenerator to run without ACE-Step."
            )
        missing = missing_checkpoint_dirs(self.checkpoint_dir)
        if missing:
            raise AceStepUnavailable(
                f"ACE-Step v1 weights must be in {self.checkpoint_dir}, with non-empty sub-directories "
                f"{', '.join(ACESTEP_CHECKPOINT_DIRS)}. Missing: {', '.join(missing)}. Nothing is downloaded: copy "
                "the v1 checkpoint there first."
            )

    def _load(self):
        if self._pipeline is None:
            self.check_available()
            os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the pipeline must not reach a model hub
            # Imported lazily: heavy, and absent on most machines.
            from acestep.pipeline_ace_step import ACEStepPipeline

            self._pipeline = ACEStepPipeline(checkpoint_dir=str(self.checkpoint_dir), device_id=self.device_id,
                                             dtype=self.dtype, cpu_offload=self.cpu_offload)
        return self._pipeline

    def generate(self, request: MusicRequest) -> GenerationResult:
        """Generate one piece; returns the path of the audio ACE-Step wrote into ``output_dir``.

        Raises:
            AceStepUnavailable: ACE-Step or its weights are missing.
        """
        pipeline = self._load()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_path = self.output_dir / f"{uuid.uuid4().hex}.wav"
        outputs = pipeline(**to_v1(request, infer_step=self.infer_step).to_kwargs(), save_path=str(save_path))
        return GenerationResult(source="ace-step-v1", audio_path=Path(outputs[0]))
