"""Render a ``MusicRequest`` as ACE-Step 1.5's generation fields.

ACE-Step 1.5 takes a natural-language ``caption`` *without* tempo or key (its guide says they belong in ``bpm``
30-300, ``keyscale`` and ``timesignature``), ``duration``, ``seed``, ``lyrics``, ``inference_steps`` ... (the
fields of its ``GenerationParams``). ``generation.pipeline_call`` turns them into an ``AceStepPipeline`` call.
(ACE-Step v1's tag prompts are not rendered: v1 does not install from the package index, so nothing here runs it.)

The request hides the caption from ``repr``: it holds the user's own words and stays on the device.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field

from generation.conditioning import ACE_BPM_MAX, ACE_BPM_MIN, MusicRequest

GENRE_TAGS = {"rnb": "r&b", "hiphop": "hip-hop"}
"""Tag spelling of genres whose vocabulary name is not how music is tagged."""
CAPTION_MAX_CHARS = 512
TIME_SIGNATURES = ("", "2", "3", "4", "6")
"""ACE-Step 1.5's time signatures, as the strings its pipeline formats ("4" is 4/4, "6" is 6/8; "": unset)."""
_TEMPO_WORD = re.compile(r"\b\d*\s*(?:bpm|beats per minute)\b", re.IGNORECASE)


def genre_tag(genre: str) -> str:
    return GENRE_TAGS.get(genre, genre)


def instrument_tag(instrument: str) -> str:
    return instrument.replace("_", " ")


@dataclass(frozen=True)
class AceStep15Request:
    """Fields of an ACE-Step 1.5 generation, named as in its ``GenerationParams``, checked as its pipeline needs."""

    caption: str = field(repr=False)
    bpm: int | None = None
    duration: float = 30.0
    seed: int = -1
    lyrics: str = ""
    instrumental: bool = True
    keyscale: str = ""
    timesignature: str = ""
    inference_steps: int = 8
    guidance_scale: float = 7.0

    def __post_init__(self) -> None:
        for name in ("caption", "lyrics", "keyscale", "timesignature"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string. Found {type(getattr(self, name)).__name__}.")
        if self.bpm is not None and (not isinstance(self.bpm, numbers.Integral) or isinstance(self.bpm, bool)):
            raise TypeError(f"bpm must be an integer or None. Found {type(self.bpm).__name__} {self.bpm!r}.")
        if self.timesignature not in TIME_SIGNATURES:
            raise ValueError(f"timesignature must be one of {list(TIME_SIGNATURES)}. Found {self.timesignature!r}.")
        if _TEMPO_WORD.search(self.caption):
            raise ValueError("caption must not state the tempo: ACE-Step 1.5 reads it from the bpm field.")
        if len(self.caption) > CAPTION_MAX_CHARS:
            raise ValueError(f"caption must be at most {CAPTION_MAX_CHARS} characters. Found {len(self.caption)}.")
        if self.bpm is not None and not ACE_BPM_MIN <= self.bpm <= ACE_BPM_MAX:
            raise ValueError(f"bpm must be an integer in [{ACE_BPM_MIN}, {ACE_BPM_MAX}]. Found {self.bpm}.")
        if not 10.0 <= self.duration <= 600.0:
            raise ValueError(f"duration must be in [10, 600] seconds. Found {self.duration}.")
        if self.inference_steps < 1:
            raise ValueError(f"inference_steps must be >= 1. Found {self.inference_steps}.")


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption(request: MusicRequest) -> str:
    """A one-sentence description for ACE-Step 1.5, e.g. "Calm, soft folk with acoustic guitar and ambient pad."

    The user's words follow the sentence, cut to fit ``CAPTION_MAX_CHARS``; tempo and key are left out.
    """
    moods = ", ".join(request.moods)
    text = f"{moods + ' ' if moods else ''}{_join([genre_tag(g) for g in request.genres])}"
    if request.instruments:
        text += f" with {_join([instrument_tag(i) for i in request.instruments])}"
    text = text[0].upper() + text[1:] + "."
    words = _TEMPO_WORD.sub(" ", request.user_text).strip()
    if words:
        text = f"{text} {words}"[:CAPTION_MAX_CHARS]
    return text


def to_v15(request: MusicRequest, *, lyrics: str = "", inference_steps: int = 8,
           guidance_scale: float = 7.0) -> AceStep15Request:
    """The ACE-Step 1.5 ``GenerationParams`` fields for ``request`` (instrumental when there are no lyrics)."""
    return AceStep15Request(
        caption=caption(request),
        bpm=request.bpm,
        duration=request.duration_s,
        seed=request.seed if request.seed is not None else -1,
        lyrics=lyrics,
        instrumental=not lyrics,
        keyscale=request.keyscale,
        inference_steps=inference_steps,
        guidance_scale=guidance_scale,
    )
