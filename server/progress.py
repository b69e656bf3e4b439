"""A run's progress on the terminal and in its run.log."""

from __future__ import annotations

import sys
from pathlib import Path


class Progress:
    """Round progress on the terminal: a live line while clients reply (on a TTY), one line per round; each line is
    also appended to ``log_file`` (the run's run.log) when given."""

    def __init__(self, stream=sys.stdout, log_file: Path | None = None) -> None:
        self.stream, self.log_file = stream, log_file
        self.live = stream.isatty()

    def clients(self, server_round: int, done: int, total: int) -> None:
        if self.live:
            self.stream.write(f"\r  round {server_round}: {done}/{total} clients replied ")
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as log:
                log.write(text + "\n")
