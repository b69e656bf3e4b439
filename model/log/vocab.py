"""Fixed vocabularies shared by the event format, the encoder and the models.

Changing the order of any tuple changes the meaning of trained weights: append only.
"""

from __future__ import annotations

GENRES: tuple[str, ...] = (
    "pop",
    "rock",
    "classical",
    "electronic",
    "jazz",
    "folk",
    "rnb",
    "hiphop",
)
"""The seed's 8 genres: pop, rock, classical, electronic, jazz, folk, R&B, hip-hop."""

INSTRUMENTS: tuple[str, ...] = (
    "piano",
    "acoustic_guitar",
    "electric_guitar",
    "bass",
    "drums",
    "synth",
    "strings",
    "violin",
    "cello",
    "saxophone",
    "trumpet",
    "flute",
    "organ",
    "vocals",
    "percussion",
    "ambient_pad",
)

EVENT_KINDS: tuple[str, ...] = (
    "style_chosen",
    "bpm_set",
    "instrument_toggled",
    "segment_kept",
    "segment_redone",
    "generation_requested",
)

BPM_DIRECTIONS: tuple[str, ...] = ("up", "down")

BPM_MIN = 20.0
BPM_MAX = 300.0

GENRE_INDEX = {g: i for i, g in enumerate(GENRES)}
INSTRUMENT_INDEX = {n: i for i, n in enumerate(INSTRUMENTS)}
KIND_INDEX = {k: i for i, k in enumerate(EVENT_KINDS)}
