"""What a synthetic user does inside one generation request, and what the app generates for them.

A request follows the seed's loop: the user types a prompt, then wants a genre drawn from their taste at that
moment; they may pick a style, nudge the tempo and toggle instruments; the app generates a segment; the user keeps it
when it is the genre they wanted (or settles), otherwise redoes it and tries again, steering closer to what they
want. The app's step is a ``SegmentGenerator`` parameter so a closed-loop experiment can put a personalised
generator in its place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from generation.conditioning import GENRE_DEFAULT_BPM, GENRE_DEFAULT_INSTRUMENTS
from model.log.events import Event
from model.log.vocab import BPM_MAX, BPM_MIN, GENRES, INSTRUMENT_INDEX, INSTRUMENTS
from simulations.population.taste import Taste
from simulations.population.world import World

APP_DEFAULT_GENRE = "pop"
"""What the app generates when the user has not chosen a style (the seed's "default light pop piano")."""

GENRE_BPM: dict[str, float] = dict(GENRE_DEFAULT_BPM)
"""The app's default tempo for each style (one definition, in ``generation/conditioning.py``)."""

GENRE_INSTRUMENTS: dict[str, tuple[str, ...]] = {
    genre: tuple(sorted(names, key=INSTRUMENT_INDEX.__getitem__)) for genre, names in GENRE_DEFAULT_INSTRUMENTS.items()
}
"""The app's default instrumentation for each style, in ``INSTRUMENTS`` order."""

MOOD_PROMPTS = {
    "calm": ("something relaxing", "quiet music for the evening", "help me unwind"),
    "steady": ("music for focus", "steady background music", "something to work to"),
    "energetic": ("something upbeat", "music to work out to", "give me some energy"),
}
VAGUE_PROMPTS = ("surprise me", "make me a song", "something new", "music for right now")
GENRE_PROMPTS = ("some {genre}, please", "I feel like {genre}", "{genre} with {instrument}")
GENRE_WORDS = {"pop": "pop", "rock": "rock", "classical": "classical music", "electronic": "electronic music",
               "jazz": "jazz", "folk": "folk", "rnb": "R&B", "hiphop": "hip-hop"}
"""Which kind of prompt a user types, and the mood they name for each genre, are the world's
(``World.prompt_mix``, ``World.genre_moods``)."""

STYLE_PROB = 0.55
"""Chance of picking a style before the first try; on a retry the user always picks one."""
EXPLORE_PROB = 0.2
"""Chance of exploring, picking a style drawn from the whole taste instead of the wanted one, on the first try;
it halves with each retry as the user steers closer to what they want."""
BPM_PROB = 0.3
TOGGLE_PROB = 0.3
SETTLE_PROB = 0.1
"""Chance of keeping a segment of the wrong genre anyway."""
MAX_ATTEMPTS = 4
"""The last attempt is always kept: the user gives up steering."""


@dataclass(frozen=True)
class Segment:
    """A generated piece of music as the behaviour log records it."""

    genre: str
    bpm: float
    instruments: tuple[str, ...]


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the app knows when it generates one segment.

    Attributes:
        ts: UTC seconds of the generation.
        utc_offset_min: the user's local offset.
        prompt: the text of the request.
        style: the style the user chose last in this request, or ``None``.
        bpm: the tempo the user set last in this request, or ``None``.
        toggles: the user's instrument switches in this request, oldest first, as (instrument, enabled).
        attempt: 0 for the first segment of the request, then 1, 2, ... after each redo.
        history: the user's whole log so far, including this request's events.
    """

    ts: float
    utc_offset_min: int
    prompt: str
    style: str | None
    bpm: float | None
    toggles: tuple[tuple[str, bool], ...]
    attempt: int
    history: tuple[Event, ...]


SegmentGenerator = Callable[[GenerationRequest], Segment]


def default_generator(request: GenerationRequest) -> Segment:
    """The unpersonalised app: the chosen style (else pop) at its default tempo and instruments, user edits applied."""
    return _default_segment(request.style, request.bpm, request.toggles)


def _default_segment(style: str | None, bpm: float | None, toggles: tuple[tuple[str, bool], ...]) -> Segment:
    """``default_generator`` on the only fields it reads. ``play_request`` calls it directly for the default app,
    which spares building a ``GenerationRequest`` that copies the user's whole history for every segment."""
    genre = style or APP_DEFAULT_GENRE
    return Segment(genre, bpm or GENRE_BPM[genre], _apply_toggles(genre, toggles))


@functools.lru_cache(maxsize=4096)
def _apply_toggles(genre: str, toggles: tuple[tuple[str, bool], ...]) -> tuple[str, ...]:
    """The instruments playing in ``genre``'s default instrumentation after the user's switches, in ``INSTRUMENTS``
    order. Cached: the same few (style, switches) pairs come back in request after request."""
    playing = set(GENRE_INSTRUMENTS[genre])
    for instrument, enabled in toggles:
        if enabled:
            playing.add(instrument)
        else:
            playing.discard(instrument)
    return tuple(name for name in INSTRUMENTS if name in playing)


def _draw(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """Index drawn in proportion to ``weights``; a plain loop is far cheaper than ``rng.choice`` for one draw."""
    threshold = rng.random() * sum(weights)
    for index, weight in enumerate(weights):
        threshold -= weight
        if threshold < 0.0:
            return index
    return len(weights) - 1


def _uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """Integer in ``[low, high)``; cheaper than ``rng.integers`` for one draw."""
    return low + int((high - low) * rng.random())


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[_uniform_int(rng, 0, len(options))]


def _prompt(rng: np.random.Generator, want: str, world: World) -> str:
    """A request text; in today's world only a minority of prompts name the wanted genre, as real prompts are often
    vague."""
    kind = _draw(rng, world.prompt_mix.probs())
    if kind == 0:
        return _pick(rng, VAGUE_PROMPTS)
    if kind == 1:
        return _pick(rng, MOOD_PROMPTS[world.genre_moods.of(want)])
    instrument = _pick(rng, GENRE_INSTRUMENTS[want]).replace("_", " ")
    return _pick(rng, GENRE_PROMPTS).format(genre=GENRE_WORDS[want], instrument=instrument)


class _Request:
    """The state of one request while the user steers it; collects the events it produces.

    The taste's probabilities are read as plain floats once per request (instruments only when the user first
    toggles one), not once per draw.
    """

    __slots__ = ("rng", "taste", "ts", "offset", "genre_probs", "_instrument_probs", "events", "style", "bpm",
                 "toggles", "last_segment")

    def __init__(self, rng: np.random.Generator, taste: Taste, ts: int, utc_offset_min: int,
                 genre_probs: list[float]) -> None:
        self.rng, self.taste, self.ts, self.offset, self.genre_probs = rng, taste, ts, utc_offset_min, genre_probs
        self._instrument_probs: list[float] | None = None
        self.events: list[Event] = []
        self.style: str | None = None
        self.bpm: float | None = None
        self.toggles: list[tuple[str, bool]] = []
        self.last_segment: Segment | None = None

    def emit(self, kind: str, pause_s: tuple[int, int], **fields: object) -> None:
        """Record an event after a pause drawn from ``pause_s`` (whole seconds, low inclusive, high exclusive)."""
        low, high = pause_s
        self.ts += low + int((high - low) * self.rng.random())  # _uniform_int, inlined: it runs once per event
        self.events.append(Event(float(self.ts), self.offset, kind, **fields))

    def choose_style(self, want: str, attempt: int) -> None:
        """Pick the wanted style, or now and then explore another the user also likes."""
        genre = want
        if self.rng.random() < EXPLORE_PROB / 2**attempt:
            genre = GENRES[_draw(self.rng, self.genre_probs)]  # exploring within what they like
        self.style = genre
        self.emit("style_chosen", (2, 15), genre=genre)

    def current_bpm(self) -> float:
        """The tempo the app shows now: the user's own setting, else the last segment's, else the style default."""
        if self.bpm is not None:
            return self.bpm
        if self.last_segment is not None:
            return self.last_segment.bpm
        return GENRE_BPM[self.style or APP_DEFAULT_GENRE]

    def nudge_bpm(self) -> None:
        """Move the tempo towards one drawn from the user's preferred range, recording the direction."""
        target = float(round(min(max(self.rng.normal(self.taste.bpm_mean, self.taste.bpm_sd), BPM_MIN), BPM_MAX)))
        current = self.current_bpm()
        if abs(target - current) >= 3.0:  # too small a change to bother with
            self.bpm = target
            self.emit("bpm_set", (2, 12), bpm=target, direction="up" if target > current else "down")

    def toggle_instrument(self) -> None:
        """Switch one instrument, chosen in proportion to how much its state disagrees with the user's liking."""
        if self._instrument_probs is None:
            self._instrument_probs = self.taste.instrument_probs.tolist()
        playing = _apply_toggles(self.style or APP_DEFAULT_GENRE, tuple(self.toggles))
        disagreement = [1.0 - prob if name in playing else prob
                        for name, prob in zip(INSTRUMENTS, self._instrument_probs)]
        instrument = INSTRUMENTS[_draw(self.rng, disagreement)]
        enabled = instrument not in playing
        if not enabled and len(playing) == 1:
            return  # never silence the piece
        self.toggles.append((instrument, enabled))
        self.emit("instrument_toggled", (2, 10), instrument=instrument, enabled=enabled)


def play_request(rng: np.random.Generator, *, taste: Taste, ts: int, utc_offset_min: int,
                 generator: SegmentGenerator, history: Sequence[Event], world: World) -> list[Event]:
    """Simulate one request from prompt to kept segment.

    Args:
        rng: the user's session stream.
        taste: the user's taste at the request time.
        ts: UTC seconds at which the prompt is sent.
        utc_offset_min: the user's local offset.
        generator: the app's segment generation step.
        history: the user's log before this request (read only).
        world: how the user's prompt relates to what they want.

    Returns:
        The request's events in time order: ``generation_requested`` first and ``segment_kept`` last.
    """
    genre_probs = taste.genre_probs.tolist()
    want = GENRES[_draw(rng, genre_probs)]
    prompt = _prompt(rng, want, world)
    request = _Request(rng, taste, ts, utc_offset_min, genre_probs)
    request.emit("generation_requested", (0, 1), prompt=prompt)  # a pause in [0, 1): at ``ts`` itself
    for attempt in range(MAX_ATTEMPTS):  # the last attempt is always kept, so the loop ends with a kept segment
        if attempt > 0 or rng.random() < STYLE_PROB:
            request.choose_style(want, attempt)
        if rng.random() < BPM_PROB:
            request.nudge_bpm()
        for _ in range(int(rng.random() < TOGGLE_PROB) + int(rng.random() < TOGGLE_PROB / 3)):
            request.toggle_instrument()
        toggles = tuple(request.toggles)
        if generator is default_generator:
            segment = _default_segment(request.style, request.bpm, toggles)
        else:
            segment = generator(GenerationRequest(float(request.ts), utc_offset_min, prompt, request.style,
                                                  request.bpm, toggles, attempt, (*history, *request.events)))
        request.last_segment = segment
        kept = segment.genre == want or rng.random() < SETTLE_PROB or attempt == MAX_ATTEMPTS - 1
        request.emit("segment_kept" if kept else "segment_redone", (20, 120), genre=segment.genre,
                     bpm=float(segment.bpm), instruments=segment.instruments)
        if kept:
            break
    return request.events
