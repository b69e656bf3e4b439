"""What a user's typed prompt says explicitly: genres, tempo, key, mood, instruments, and what it rules out.

Explicit words win over the learned prior (``generation.conditioning``), so they must be found reliably: each genre has
its synonyms ("hip hop", "rap" -> hiphop; "r&b", "soul" -> rnb; "edm", "techno" -> electronic; "orchestral" ->
classical ...), matched as whole words in lower case. A word right after a negation ("no jazz", "without drums",
"anything but rock") rules that genre or instrument out instead.

The prompt stays on the device: nothing here logs it, and ``PromptIntent`` does not show its text in ``repr``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_PROMPT_CHARS = 2000

GENRE_PATTERNS: dict[str, tuple[str, ...]] = {
    "pop": (r"pop", r"[kj][\s-]?pop", r"synth[\s-]?pop", r"dance[\s-]?pop"),
    "rock": (r"rock", r"rock[\s'’]*n[\s'’]*roll", r"metal", r"punk", r"grunge"),
    "classical": (r"classical", r"orchestral", r"orchestra", r"symphon(?:y|ic)", r"baroque", r"chamber music",
                  r"opera"),
    "electronic": (r"electronic", r"electronica", r"edm", r"techno", r"trance", r"dubstep", r"drum[\s-]?(?:and|&|n)[\s-]?bass",
                   r"dnb", r"synthwave", r"electro", r"house music", r"deep house", r"tech house"),
    "jazz": (r"jazz", r"jazzy", r"bebop", r"bossa[\s-]?nova", r"big[\s-]?band"),
    "folk": (r"folk", r"folky", r"bluegrass", r"singer[\s-]?songwriter", r"americana"),
    "rnb": (r"r\s?&\s?b", r"rnb", r"r[\s'’]*n[\s'’]*b", r"r and b", r"rhythm and blues", r"soul", r"neo[\s-]?soul"),
    "hiphop": (r"hip[\s-]?hop", r"rap", r"trap", r"boom[\s-]?bap"),
}
"""Whole-word regular expressions (lower case) that name each genre of ``model.log.vocab.GENRES``."""

INSTRUMENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "piano": (r"piano", r"keys"),
    "acoustic_guitar": (r"acoustic(?:[\s-]?guitar)?", r"(?<!electric )(?<!electric-)guitar"),
    "electric_guitar": (r"electric[\s-]?guitar",),
    "bass": (r"bass(?:line)?",),
    "drums": (r"drums?", r"beats?"),
    "synth": (r"synths?", r"synthesi[sz]er"),
    "strings": (r"strings",),
    "violin": (r"violins?", r"fiddle"),
    "cello": (r"cellos?",),
    "saxophone": (r"sax(?:ophone)?",),
    "trumpet": (r"trumpets?", r"horns?"),
    "flute": (r"flutes?",),
    "organ": (r"organ",),
    "vocals": (r"vocals?", r"voice", r"singing", r"singer"),
    "percussion": (r"percussion",),
    "ambient_pad": (r"pads?", r"ambient pad"),
}

TEMPO_PATTERNS: dict[str, tuple[str, ...]] = {
    "slow": (r"slow(?:er|ly)?", r"down[\s-]?tempo", r"adagio", r"largo"),
    "medium": (r"mid[\s-]?tempo", r"medium tempo", r"moderate tempo", r"moderato"),
    "fast": (r"fast(?:er)?", r"up[\s-]?tempo", r"quick", r"allegro", r"presto"),
}

MOOD_PATTERNS: dict[str, tuple[str, ...]] = {
    "relaxing": (r"relax(?:ing|ed)?", r"unwind", r"chill(?:ed)?", r"calm(?:ing)?", r"sooth(?:e|ing)", r"peaceful",
                 r"mellow"),
    "focused": (r"focus(?:ed)?", r"study(?:ing)?", r"concentrat(?:e|ion)", r"work to", r"background"),
    "energetic": (r"energ(?:y|etic)", r"upbeat", r"work[\s-]?out", r"gym", r"party", r"pump(?:ed)?"),
    "happy": (r"happy", r"cheerful", r"joyful", r"sunny"),
    "melancholic": (r"sad", r"melanchol(?:y|ic)", r"heartbroken"),
    "romantic": (r"romantic", r"love"),
    "dark": (r"dark", r"moody"),
    "atmospheric": (r"atmospheric", r"ambient", r"ethereal", r"dreamy", r"spacey"),
    "quiet": (r"quiet", r"soft", r"sleep(?:y|ing)?", r"bedtime", r"lullaby"),
}
"""Canonical mood tag -> words that ask for it."""

CALM_MOODS = frozenset({"relaxing", "focused", "melancholic", "romantic", "atmospheric", "quiet"})
ENERGETIC_MOODS = frozenset({"energetic", "happy"})

_NEGATIONS = frozenset({"no", "not", "without", "except", "but", "than", "instead", "avoid", "skip", "less"})
_BPM = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b", re.IGNORECASE)
_KEY = re.compile(r"(?:\b(?i:in\s+(?:the\s+key\s+of\s+)?|key\s+of\s+))?\b([A-G])(#|♯|b|♭)?\s?(?i:(major|minor|maj|min))\b")
"""A key with a capital note letter ("A minor", "in F# major"), so "a major change" is not read as a key."""
_TAG_UNSAFE = re.compile(r"[,\n\r\t]+")


def _compile(patterns: dict[str, tuple[str, ...]]) -> dict[str, re.Pattern[str]]:
    return {name: re.compile(r"(?<![\w&])(?:" + "|".join(alts) + r")(?![\w&])") for name, alts in patterns.items()}


_GENRES = _compile(GENRE_PATTERNS)
_INSTRUMENTS = _compile(INSTRUMENT_PATTERNS)
_TEMPOS = _compile(TEMPO_PATTERNS)
_MOODS = _compile(MOOD_PATTERNS)


@dataclass(frozen=True)
class PromptIntent:
    """The explicit requests of one prompt.

    Attributes:
        genres: genres named (not negated), in order of first mention.
        excluded_genres: genres ruled out ("no rock").
        bpm: an explicit tempo ("90 bpm"), else ``None``.
        tempo: "slow", "medium" or "fast" when a tempo word is used, else ``None``.
        keyscale: an explicit key such as "A minor", else "".
        moods: canonical mood tags asked for, in order of first mention.
        instruments: instruments named (not negated).
        excluded_instruments: instruments ruled out ("without drums").
        text: the prompt with tempo and key mentions removed, commas and line breaks turned into spaces; kept for
            the generator only and hidden from ``repr``.
    """

    genres: tuple[str, ...] = ()
    excluded_genres: tuple[str, ...] = ()
    bpm: float | None = None
    tempo: str | None = None
    keyscale: str = ""
    moods: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    excluded_instruments: tuple[str, ...] = ()
    text: str = field(default="", repr=False)


def _negated(text: str, start: int) -> bool:
    """Whether one of the two words before ``start`` is a negation ("no jazz", "not too fast", "anything but")."""
    words = re.findall(r"[\w']+", text[:start])[-2:]
    return any(word in _NEGATIONS for word in words)


def _mentions(patterns: dict[str, re.Pattern[str]], text: str) -> tuple[list[str], list[str]]:
    """Names mentioned, split into (wanted, ruled out), each ordered by first mention."""
    found: list[tuple[int, str, bool]] = []
    for name, pattern in patterns.items():
        for match in pattern.finditer(text):
            found.append((match.start(), name, _negated(text, match.start())))
    wanted, excluded = [], []
    for _, name, negated in sorted(found):
        target = excluded if negated else wanted
        if name not in wanted and name not in excluded:
            target.append(name)
    return wanted, excluded


def _format_key(match: re.Match[str]) -> str:
    note, accidental, mode = match.group(1), match.group(2) or "", match.group(3).lower()
    accidental = {"♯": "#", "♭": "b"}.get(accidental, accidental)
    return f"{note}{accidental} {'major' if mode.startswith('maj') else 'minor'}"


def parse_prompt(prompt: str) -> PromptIntent:
    """Read the explicit requests of ``prompt`` (rules in the module docstring).

    Raises:
        ValueError: the prompt is longer than ``MAX_PROMPT_CHARS`` (the message gives its length, not its text).
    """
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt must be at most {MAX_PROMPT_CHARS} characters. Found {len(prompt)} characters.")
    text = prompt.lower()
    genres, excluded_genres = _mentions(_GENRES, text)
    instruments, excluded_instruments = _mentions(_INSTRUMENTS, text)
    tempos, _ = _mentions(_TEMPOS, text)
    moods, _ = _mentions(_MOODS, text)
    bpm_match = _BPM.search(prompt)
    key_match = _KEY.search(prompt)
    stripped = _KEY.sub(" ", _BPM.sub(" ", prompt))
    return PromptIntent(
        genres=tuple(genres),
        excluded_genres=tuple(excluded_genres),
        bpm=float(bpm_match.group(1)) if bpm_match else None,
        tempo=tempos[0] if tempos else None,
        keyscale=_format_key(key_match) if key_match else "",
        moods=tuple(moods),
        instruments=tuple(i for i in instruments if not (i == "acoustic_guitar" and "electric_guitar" in instruments)),
        excluded_instruments=tuple(excluded_instruments),
        text=" ".join(_TAG_UNSAFE.sub(" ", stripped).split()),
    )

