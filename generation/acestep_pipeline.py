"""Load an ACE-Step 1.5 pipeline from a local folder and generate pieces with it, each a WAV on the device.

``load_pipeline`` refuses an incomplete folder (``generation.pipeline_folder.missing_parts``) before diffusers sees
it, then loads with ``local_files_only=True``: a real ACE-Step 1.5 checkpoint in diffusers format and the tiny
random-weight one (``generation.tiny_pipeline``) take the same path. ``AceStepPipelineGenerator`` turns a
``MusicRequest`` into one pipeline call (``generation.pipeline_call``) and writes the audio into the device's
private storage, keeping the newest ``keep_files`` pieces as an app's cache would.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from diffusers import AceStepPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from generation.conditioning import MusicRequest
from generation.generators import GenerationResult
from generation.pipeline_call import music_request_kwargs
from generation.pipeline_folder import missing_parts
from generation.wav import write_wav

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PIECE = re.compile(r"^(\d+)\.wav$")
WEIGHT_NORM_WARNING = r".*weight_norm.*deprecated"
"""The VAE (AutoencoderOobleck) still uses torch's old weight_norm, which warns each time one is built."""


class PipelineUnavailable(RuntimeError):
    """The pipeline folder is missing or incomplete. Nothing was downloaded."""


def load_pipeline(folder: str | Path, *, device: str = "cpu", dtype: str = "float32") -> AceStepPipeline:
    """The ``AceStepPipeline`` saved in ``folder`` (diffusers format), on ``device`` in ``dtype``.

    Raises:
        PipelineUnavailable: the folder lacks a part; every missing part is named.
    """
    missing = missing_parts(folder)
    if missing:
        raise PipelineUnavailable(
            f"{folder} is not a complete ACE-Step 1.5 pipeline folder (diffusers format). Missing: "
            f"{'; '.join(missing)}. Nothing is downloaded: copy the checkpoint there first.")
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()  # e.g. "guidance is ignored for turbo checkpoints", on every call
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=WEIGHT_NORM_WARNING, category=FutureWarning)
        pipeline = AceStepPipeline.from_pretrained(str(folder), local_files_only=True, dtype=DTYPES[dtype])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


class AceStepPipelineGenerator:
    """``MusicRequest`` -> a WAV file written by ACE-Step 1.5's pipeline into ``storage``.

    Args:
        pipeline: a loaded ``AceStepPipeline``.
        storage: the device's private folder for generated audio (created on first use).
        source: the ``GenerationResult.source`` label, e.g. "ace-step-1.5".
        num_inference_steps, guidance_scale, shift: sampler settings (1.5 turbo: 8 steps, guidance distilled).
        keep_files: newest pieces kept in ``storage``; older ones are deleted (0: keep every piece).
    """

    def __init__(self, pipeline: AceStepPipeline, storage: str | Path, *, source: str, num_inference_steps: int = 8,
                 guidance_scale: float = 7.0, shift: float = 3.0, keep_files: int = 0) -> None:
        self.pipeline, self.storage, self.source = pipeline, Path(storage), source
        self.num_inference_steps, self.guidance_scale, self.shift = num_inference_steps, guidance_scale, shift
        self.keep_files = keep_files

    def generate(self, request: MusicRequest) -> GenerationResult:
        kwargs = music_request_kwargs(request, num_inference_steps=self.num_inference_steps,
                                      guidance_scale=self.guidance_scale, shift=self.shift,
                                      turbo=self.pipeline.is_turbo)
        with torch.inference_mode():
            audio = self.pipeline(**kwargs).audios[0]
        self.storage.mkdir(parents=True, exist_ok=True)
        pieces = self._pieces()
        number = int(_PIECE.match(pieces[-1].name).group(1)) + 1 if pieces else 1
        path = write_wav(self.storage / f"{number:06d}.wav", audio, self.pipeline.sample_rate)
        if self.keep_files:
            for old in self._pieces()[: -self.keep_files]:
                old.unlink()
        return GenerationResult(source=self.source, audio_path=path)

    def _pieces(self) -> list[Path]:
        """This generator's WAV files in ``storage``, oldest first."""
        return sorted(p for p in self.storage.iterdir() if _PIECE.match(p.name))
