"""Music generators behind one protocol, and what they return.

``Generator.generate(request) -> GenerationResult``. ``generation.acestep_pipeline.AceStepPipelineGenerator`` runs
ACE-Step 1.5's pipeline (diffusers) from a local folder and returns the WAV it wrote;
``simulations.loop.simulated_generator.SimulatedGenerator`` describes what ACE-Step would play, for experiments without audio.
(ACE-Step v1's ``acestep`` package is not supported: it does not install from the package index.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from generation.conditioning import MusicRequest
from model.log.vocab import GENRES


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
        source: "simulated" for a descriptor from the simulation; "ace-step-1.5" for audio from ACE-Step 1.5's
            weights, "ace-step-1.5-tiny" for audio from the tiny random-weight pipeline (noise).
        audio_path: the audio file written (pipeline generation).
        descriptor: what the piece sounds like to the simulated listener (simulation; in the closed-loop
            experiment also beside pipeline audio, since reactions are simulated).
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
