"""A stand-in for ACE-Step that says what it *would* generate, with ACE-Step's known imperfections.

Users of ACE-Step report that tags are followed only loosely (a genre drifts to a neighbour, an instrument tag is
ignored) and that the felt tempo misses the BPM, sometimes by half or double in half-time genres. The simulated
generator turns a ``MusicRequest`` into a ``SegmentDescriptor`` with exactly those errors, at configurable rates:

* each genre tag, with probability ``genre_drift_prob``, lends its weight to a neighbouring genre instead;
* each instrument tag, with probability ``instrument_drop_prob``, is not heard (a silent result plays the main
  genre's first default instrument instead);
* the tempo is halved or doubled with probability ``half_time_prob`` (whichever stays in range), then jittered by
  a normal error of standard deviation ``bpm_jitter_sd``.

Results are labelled ``source="simulated"`` and hold no audio. Given the generator's seed, results are
deterministic: a request with a seed always gives the same result; requests without one follow the generator's
own random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from generation.conditioning import GENRE_DEFAULT_INSTRUMENTS, MusicRequest
from generation.generators import GenerationResult, SegmentDescriptor
from model.log.vocab import BPM_MAX, BPM_MIN, GENRE_INDEX, GENRES, INSTRUMENTS

GENRE_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "pop": ("rnb", "electronic", "rock"),
    "rock": ("pop", "folk"),
    "classical": ("jazz", "folk"),
    "electronic": ("pop", "hiphop"),
    "jazz": ("rnb", "classical"),
    "folk": ("pop", "classical"),
    "rnb": ("hiphop", "pop", "jazz"),
    "hiphop": ("rnb", "electronic"),
}
"""Where a genre tag drifts when the model does not follow it: the genres it is most often confused with."""


@dataclass(frozen=True)
class AdherenceNoise:
    """How loosely the simulated model follows a request (all zero: exactly).

    Attributes:
        genre_drift_prob: chance that one genre tag drifts to a neighbour.
        instrument_drop_prob: chance that one instrument tag is ignored.
        half_time_prob: chance that the felt tempo is half or double the requested one.
        bpm_jitter_sd: standard deviation of the tempo error, in BPM.
    """

    genre_drift_prob: float = 0.0
    instrument_drop_prob: float = 0.0
    half_time_prob: float = 0.0
    bpm_jitter_sd: float = 0.0

    def __post_init__(self) -> None:
        for name in ("genre_drift_prob", "instrument_drop_prob", "half_time_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Found {value}.")
        if self.bpm_jitter_sd < 0.0:
            raise ValueError(f"bpm_jitter_sd must be >= 0. Found {self.bpm_jitter_sd}.")


class SimulatedGenerator:
    """Requests -> descriptors of what ACE-Step would play, with ``AdherenceNoise`` (rules in the module docstring).

    Args:
        noise: the adherence errors.
        seed: root of every random draw.
    """

    def __init__(self, noise: AdherenceNoise = AdherenceNoise(), *, seed: int = 0) -> None:
        self.noise = noise
        self.seed = seed
        self._stream = np.random.default_rng([seed, 0])

    def generate(self, request: MusicRequest) -> GenerationResult:
        rng = self._stream if request.seed is None else np.random.default_rng([self.seed, 1, request.seed])
        return GenerationResult(source="simulated", descriptor=SegmentDescriptor(
            genre_mix=self._genre_mix(request, rng),
            bpm=self._bpm(request, rng),
            instruments=self._instruments(request, rng),
        ))

    def _genre_mix(self, request: MusicRequest, rng: np.random.Generator) -> tuple[float, ...]:
        mix = np.zeros(len(GENRES))
        for genre, weight in zip(request.genres, request.genre_weights):
            if rng.random() < self.noise.genre_drift_prob:
                neighbours = GENRE_NEIGHBOURS[genre]
                genre = neighbours[int(rng.integers(len(neighbours)))]
            mix[GENRE_INDEX[genre]] += weight
        return tuple(float(v) for v in mix / mix.sum())

    def _bpm(self, request: MusicRequest, rng: np.random.Generator) -> float:
        bpm = float(request.bpm)
        if rng.random() < self.noise.half_time_prob:
            bpm = bpm / 2.0 if bpm / 2.0 >= BPM_MIN and (rng.random() < 0.5 or bpm * 2.0 > BPM_MAX) else bpm * 2.0
        if self.noise.bpm_jitter_sd > 0.0:
            bpm += float(rng.normal(0.0, self.noise.bpm_jitter_sd))
        return min(max(bpm, BPM_MIN), BPM_MAX)

    def _instruments(self, request: MusicRequest, rng: np.random.Generator) -> tuple[str, ...]:
        heard = {name for name in request.instruments if rng.random() >= self.noise.instrument_drop_prob}
        if not heard:
            heard = {GENRE_DEFAULT_INSTRUMENTS[request.main_genre][0]}
        return tuple(name for name in INSTRUMENTS if name in heard)
