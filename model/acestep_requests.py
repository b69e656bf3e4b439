"""Render a ``MusicRequest`` in the two languages ACE-Step speaks.

* v1 (``acestep.pipeline_ace_step.ACEStepPipeline.__call__``): one comma-separated tag prompt such as
  ``"jazz, piano, saxophone, calm, 96 bpm"`` plus call parameters (``audio_duration``, ``infer_step``,
  ``guidance_scale``, ``scheduler_type``, ``cfg_type``, ``omega_scale``, ``manual_seeds``, ``lyrics`` ...).
  Tags are ordered strongest first: genres, instruments, moods, key, tempo, then the user's own words.
* 1.5 (``acestep.inference.GenerationParams``): a natural-language ``caption`` *without* tempo or key (its guide
  says they belong in ``bpm`` 30-300, ``keyscale`` and ``timesignature``), ``duration``, ``seed``,
  ``instrumental``, ``inference_steps`` ...

Both request types hide the prompt text from ``repr``: it holds the user's own words and stays on the device.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import asdict, dataclass, field

from model.conditioning import ACE_BPM_MAX, ACE_BPM_MIN, MusicRequest

GENRE_TAGS = {"rnb": "r&b", "hiphop": "hip-hop"}
"""Tag spelling of genres whose vocabulary name is not how music is tagged."""
SCHEDULERS = ("euler", "heun", "pingpong")
CFG_TYPES = ("apg", "cfg", "cfg_star")
CAPTION_MAX_CHARS = 512
TIME_SIGNATURES = ("", "2", "3", "4", "6")
"""ACE-Step 1.5's time signatures, as the strings its pipeline formats ("4" is 4/4, "6" is 6/8; "": unset)."""
_TEMPO_WORD = re.compile(r"\b\d*\s*(?:bpm|beats per minute)\b", re.IGNORECASE)


def genre_tag(genre: str) -> str:
    return GENRE_TAGS.get(genre, genre)


def instrument_tag(instrument: str) -> str:
    return instrument.replace("_", " ")


@dataclass(frozen=True)
class AceStepV1Request:
    """Keyword arguments of an ACE-Step v1 pipeline call (``ACEStepPipeline(...)(**request.to_kwargs())``)."""

    prompt: str = field(repr=False)
    lyrics: str = ""
    audio_duration: float = 30.0
    infer_step: int = 60
    guidance_scale: float = 15.0
    scheduler_type: str = "euler"
    cfg_type: str = "apg"
    omega_scale: float = 10.0
    manual_seeds: tuple[int, ...] | None = None
    guidance_interval: float = 0.5
    task: str = "text2music"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.lyrics, str):
            raise TypeError(f"lyrics must be a string (\"\" for none). Found {type(self.lyrics).__name__}.")
        if self.scheduler_type not in SCHEDULERS:
            raise ValueError(f"scheduler_type must be one of {list(SCHEDULERS)}. Found {self.scheduler_type!r}.")
        if self.cfg_type not in CFG_TYPES:
            raise ValueError(f"cfg_type must be one of {list(CFG_TYPES)}. Found {self.cfg_type!r}.")
        if not self.audio_duration > 0.0 or self.infer_step < 1 or self.batch_size < 1:
            raise ValueError("audio_duration must be > 0 and infer_step, batch_size >= 1. Found "
                             f"{self.audio_duration}, {self.infer_step}, {self.batch_size}.")

    def to_kwargs(self) -> dict[str, object]:
        """The call's keyword arguments (``manual_seeds`` as a list, as the pipeline expects)."""
        kwargs = asdict(self)
        kwargs["manual_seeds"] = list(self.manual_seeds) if self.manual_seeds is not None else None
        return kwargs


@dataclass(frozen=True)
class AceStep15Request:
    """Fields of an ACE-Step 1.5 ``GenerationParams`` (``GenerationParams(**request.to_kwargs())``)."""

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
    infer_method: str = "ode"

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

    def to_kwargs(self) -> dict[str, object]:
        return asdict(self)


def v1_tags(request: MusicRequest) -> list[str]:
    """The v1 tag list, strongest first."""
    tags = [genre_tag(g) for g in request.genres]
    tags += [instrument_tag(i) for i in request.instruments]
    tags += list(request.moods)
    if request.keyscale:
        tags.append(request.keyscale)
    tags.append(f"{request.bpm} bpm")
    if request.user_text:
        tags.append(request.user_text)
    return tags


def to_v1(request: MusicRequest, *, lyrics: str = "", infer_step: int = 60, guidance_scale: float = 15.0,
          scheduler_type: str = "euler", cfg_type: str = "apg", omega_scale: float = 10.0) -> AceStepV1Request:
    """The ACE-Step v1 call for ``request``; defaults are the pipeline's own."""
    return AceStepV1Request(
        prompt=", ".join(v1_tags(request)),
        lyrics=lyrics,
        audio_duration=request.duration_s,
        infer_step=infer_step,
        guidance_scale=guidance_scale,
        scheduler_type=scheduler_type,
        cfg_type=cfg_type,
        omega_scale=omega_scale,
        manual_seeds=(request.seed,) if request.seed is not None else None,
    )


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
