"""What the closed loop records: one row per request, and which users opened the app on which day.

Kept as columns (numpy arrays at the end) so the report can resample users for confidence intervals cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

PROMPT_KIND_CODES = {"vague": 0, "mood": 1, "genre": 2}


@dataclass(frozen=True)
class RequestRecord:
    """One request, from prompt to kept piece.

    Attributes:
        user: the user's index in the cohort.
        day: the user's day since sign-up.
        interaction: how many requests the user had completed before this one (0 = their very first).
        prompt_kind: "vague", "mood" or "genre" (the prompt names the genre the user has in mind).
        first_satisfaction: satisfaction with the first generated piece (0-1).
        first_satisfied: whether it reached the keep threshold.
        first_genre_match: share of the first piece in the wanted genre.
        mood_match: mood match of the first piece (0-1).
        edits: redos plus style/tempo/instrument changes before the keep.
        redos: regenerations before the keep.
        kept_satisfaction: satisfaction with the piece finally kept.
        explored: whether the first request was built in cold-start exploration mode.
        typed_genre_honoured: for a prompt naming a genre, whether the request's main genre is that genre
            (before the generator's adherence noise); ``None`` for prompts naming none.
    """

    user: int
    day: int
    interaction: int
    prompt_kind: str
    first_satisfaction: float
    first_satisfied: bool
    first_genre_match: float
    mood_match: float
    edits: int
    redos: int
    kept_satisfaction: float
    explored: bool
    typed_genre_honoured: bool | None


class LoopRecords:
    """All requests of one policy's run, and each user's visits (``visited[user, day]``)."""

    def __init__(self, users: int, days: int) -> None:
        self.users, self.days = users, days
        self.visited = np.zeros((users, days), dtype=bool)
        self._rows: dict[str, list] = {f.name: [] for f in fields(RequestRecord)}

    def add(self, record: RequestRecord) -> None:
        for name, column in self._rows.items():
            value = getattr(record, name)
            if name == "prompt_kind":
                value = PROMPT_KIND_CODES[value]
            elif name == "typed_genre_honoured":
                value = -1 if value is None else int(value)
            column.append(value)

    def __len__(self) -> int:
        return len(self._rows["user"])

    def column(self, name: str) -> np.ndarray:
        """One field over all requests, in the order they were played (prompt kinds as ``PROMPT_KIND_CODES``,
        ``typed_genre_honoured`` as -1 / 0 / 1)."""
        return np.asarray(self._rows[name])

    def running_summary(self) -> dict:
        """Requests so far, share of satisfying first pieces, mean edits (for progress lines)."""
        n = len(self)
        if n == 0:
            return {"requests": 0, "first_satisfaction": float("nan"), "edits": float("nan")}
        return {"requests": n, "first_satisfaction": float(np.mean(self._rows["first_satisfied"])),
                "edits": float(np.mean(self._rows["edits"]))}
