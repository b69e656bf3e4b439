"""Our request -> the keyword arguments of one ``AceStepPipeline`` call (diffusers >= 0.42), typed as it needs them.

The pipeline reads tempo, key, time signature and duration only as text: it formats them into the block it encodes
(``# Metas`` with ``- bpm: 80``, ``- keyscale: A minor``, ``- timesignature: 4``, ``- duration: 30 seconds``).
It is strict about types in ways that are easy to get wrong, and this adapter never does:

* ``bpm`` is an ``int`` (a string raises in its ``bpm > 0`` check; a float would print "80.0");
* ``timesignature`` is a string such as ``"4"`` (an int raises on ``.strip()``), ``None`` when unset;
* ``prompt`` and ``lyrics`` are single strings: one piece per call (a list of prompts with one lyrics string
  raises, since it indexes the lyrics per prompt); an instrumental request sends ACE-Step 1.5's lyrics marker
  ``INSTRUMENTAL``;
* no seed argument: a ``torch.Generator`` seeded from the request's seed (``None``: the pipeline draws one).

Turbo checkpoints have guidance distilled into the weights; the pipeline then ignores ``guidance_scale`` with a
warning, so the adapter sends 1.0 for them.
"""

from __future__ import annotations

import torch

from generation.acestep_requests import AceStep15Request, to_v15
from generation.conditioning import MusicRequest

INSTRUMENTAL = "[Instrumental]"
"""ACE-Step 1.5's lyrics for a piece without vocals."""


def pipeline_kwargs(request: AceStep15Request, *, shift: float = 3.0, turbo: bool = False,
                    vocal_language: str = "en") -> dict[str, object]:
    """The ``AceStepPipeline.__call__`` keyword arguments for ``request`` (audio returned as numpy)."""
    return {
        "prompt": request.caption,
        "lyrics": INSTRUMENTAL if request.instrumental else request.lyrics,
        "bpm": None if request.bpm is None else int(request.bpm),
        "keyscale": request.keyscale or None,
        "timesignature": request.timesignature or None,
        "audio_duration": float(request.duration),
        "vocal_language": vocal_language,
        "num_inference_steps": int(request.inference_steps),
        "guidance_scale": 1.0 if turbo else float(request.guidance_scale),
        "shift": float(shift),
        "generator": torch.Generator().manual_seed(request.seed) if request.seed >= 0 else None,
        "output_type": "np",
    }


def music_request_kwargs(request: MusicRequest, *, num_inference_steps: int, guidance_scale: float,
                         shift: float, turbo: bool) -> dict[str, object]:
    """``pipeline_kwargs`` of a ``MusicRequest``, through its ACE-Step 1.5 fields (``to_v15``)."""
    fields = to_v15(request, inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    return pipeline_kwargs(fields, shift=shift, turbo=turbo)
