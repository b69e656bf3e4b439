"""The ``generation`` config group: how the closed-loop experiment generates music, validated before anything runs.

* ``simulated`` (default): ``simulations.loop.simulated_generator`` describes each piece; no audio.
* ``acestep_tiny``: ACE-Step 1.5's pipeline code with tiny random weights built from code
  (``generation.tiny_pipeline``): real pipeline calls and WAV files, but the audio is noise.
* ``acestep``: ACE-Step 1.5's trained weights from ``pipeline_dir``, a diffusers-format folder the user already
  has. It is never downloaded: a missing or incomplete folder is refused here, naming every missing part.

In the pipeline modes the simulated listener still reacts to the simulated descriptor of each request, not to
the audio (``simulations.loop.generation``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from generation.pipeline_folder import missing_parts
from validation.config import ConfigError, check_range

BACKENDS = ("simulated", "acestep_tiny", "acestep")
DTYPES = ("float32", "bfloat16", "float16")
INSTALL_HINT = "install the optional extra: pip install -e '.[acestep]' (diffusers, transformers, accelerate)"


@dataclass(frozen=True)
class GenerationSettings:
    """Attributes:
    backend: one of ``BACKENDS``.
    pipeline_dir: the ACE-Step 1.5 pipeline folder (diffusers format), for backend "acestep" only.
    num_inference_steps: flow-matching steps per piece (ACE-Step 1.5 turbo: 8).
    guidance_scale: classifier-free guidance of non-turbo checkpoints (turbo ones ignore it).
    shift: the timestep schedule's shift (the pipeline's default 3.0).
    keep_audio: newest WAV files each device keeps; older ones are deleted (0: keep all).
    device: torch device of the pipeline ("cpu", "cuda", "cuda:1" ...).
    dtype: weights' dtype, one of ``DTYPES``.
    """

    backend: str = "simulated"
    pipeline_dir: Optional[str] = None
    num_inference_steps: int = 8
    guidance_scale: float = 7.0
    shift: float = 3.0
    keep_audio: int = 4
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"generation.backend must be one of {list(BACKENDS)}. Found {self.backend!r}.")
        check_range("generation.num_inference_steps", self.num_inference_steps, 1, 1000)
        check_range("generation.guidance_scale", self.guidance_scale, 0)
        check_range("generation.shift", self.shift, 0, low_open=True)
        check_range("generation.keep_audio", self.keep_audio, 0, note=" (0: keep all)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"generation.dtype must be one of {list(DTYPES)}. Found {self.dtype!r}.")
        if not (self.device == "cpu" or self.device.split(":")[0] in ("cuda", "mps")):
            raise ConfigError(f"generation.device must be 'cpu', 'cuda[:N]' or 'mps'. Found {self.device!r}.")
        if self.backend != "acestep" and self.pipeline_dir is not None:
            raise ConfigError("generation.pipeline_dir is read only with generation=acestep (real weights). Found "
                              f"generation.backend={self.backend!r} with pipeline_dir={self.pipeline_dir!r}.")
        if self.backend == "simulated":
            return
        if importlib.util.find_spec("diffusers") is None:
            raise ConfigError(f"generation={self.backend} needs diffusers' AceStepPipeline: {INSTALL_HINT}.")
        if self.backend == "acestep":
            self._check_pipeline_dir()

    def _check_pipeline_dir(self) -> None:
        if not self.pipeline_dir:
            raise ConfigError("generation=acestep needs generation.pipeline_dir=PATH: a diffusers-format ACE-Step "
                              "1.5 folder already on this machine (it is never downloaded). Found none.")
        missing = missing_parts(Path(self.pipeline_dir).expanduser())
        if missing:
            raise ConfigError(f"generation.pipeline_dir={self.pipeline_dir} is not a complete ACE-Step 1.5 pipeline "
                              f"folder (diffusers format). Missing: {'; '.join(missing)}. Nothing is downloaded.")

    @property
    def makes_audio(self) -> bool:
        return self.backend != "simulated"
