"""Write generated audio as a 16-bit PCM WAV file (the standard library's ``wave``: no audio package needed)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from storage.atomic import atomic_write


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``audio`` (float ``[channels, samples]`` in [-1, 1]; louder samples are clipped) to ``path``.

    The file appears whole or not at all (``storage.atomic``).
    """
    samples = np.asarray(audio, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] < 1 or not np.all(np.isfinite(samples)):
        raise ValueError(f"audio must be finite float samples [channels, samples]. Found shape {samples.shape}.")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").T  # interleaved frames
    target = Path(path)
    with atomic_write(target) as handle, wave.open(handle, "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return target
