"""Bugs planted in the user-level mechanism, to show that the privacy audit catches them.

Each plant is a context manager that patches the mechanism's code while it is open and restores it on exit; the
ledger keeps recording the z and C the run was configured with, as it would with a real bug of this kind. Used by
``tests/test_privacy_audit.py`` and ``benchmarks/privacy_audit.py --plant``; never by a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from unittest import mock

import numpy as np

from privacy.mechanisms import global_norm
from privacy.randomness import SecureNoise, SeededNoise
from privacy.user_level import UserLevelGaussian


@contextmanager
def noise_halved() -> Iterator[None]:
    """Every server noise draw has half the standard deviation the mechanism asked for (both noise sources)."""
    with ExitStack() as stack:
        for source in (SecureNoise, SeededNoise):
            original = source.sample

            def halved(self: object, shape: Sequence[int], std: float,
                       _original: Callable[..., np.ndarray] = original) -> np.ndarray:
                return _original(self, shape, std / 2.0)

            stack.enter_context(mock.patch.object(source, "sample", halved))
        yield


@contextmanager
def clipping_skipped() -> Iterator[None]:
    """``UserLevelGaussian.clip`` hands every update on as it came, whatever its norm."""

    def unclipped(self: UserLevelGaussian, update: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, bool]:
        arrays = {k: np.asarray(v, dtype=np.float32).copy() for k, v in update.items()}
        return arrays, global_norm(arrays), False

    with mock.patch.object(UserLevelGaussian, "clip", unclipped):
        yield


PLANTS: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "noise-halved": noise_halved,
    "clipping-skipped": clipping_skipped,
}
