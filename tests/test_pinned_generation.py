"""Pinned digests of generated users: a speed-up of the synthetic population or the encoder must leave every value
as it was, bit for bit (the same draws in the same order, the same float operations).

The digests cover a few users' events (their ``repr``: every field, floats exactly), the rows ``encode_events``
makes of them and their prediction windows, for the default app and for a generator that reads the history. They
depend on the pinned numpy (its random streams and ``exp``) and on the C library's ``sin``/``cos``/``log1p``. A
change that means to alter the simulation or the features updates them, and says so in its commit.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from model.features.encoding import encode_events
from model.features.examples import build_examples
from simulations.population.population import Population, PopulationConfig
from simulations.population.sessions import Segment, default_generator

SMALL = PopulationConfig(seed=0, num_users=60, days=21)
LARGE = PopulationConfig(seed=0, num_users=100_000, days=28)


def _history_reader(request):
    """A personalised app whose segment depends on the history, the attempt and the time it is given."""
    segment = default_generator(request)
    if (len(request.history) + request.attempt + int(request.ts)) % 3 == 0:
        kept = [event.genre for event in request.history if event.kind == "segment_kept"]
        return Segment(kept[-1] if kept else "jazz", segment.bpm, segment.instruments)
    return segment


def _digests(config: PopulationConfig, users: list[int], generator=default_generator) -> tuple[str, str]:
    """(sha256 of the users' events, sha256 of their encoded rows and windows), first 16 hex digits each."""
    events_hash, encoded_hash = hashlib.sha256(), hashlib.sha256()
    population = Population(config)
    for user_id in users:
        events = population.user(user_id).events(generator)
        events_hash.update(repr(events).encode())
        examples = build_examples(events, 32)
        for array in (encode_events(events), examples.x.numpy(), examples.lengths.numpy(), examples.targets.numpy(),
                      examples.times.numpy()):
            encoded_hash.update(np.ascontiguousarray(array).tobytes())
    return events_hash.hexdigest()[:16], encoded_hash.hexdigest()[:16]


@pytest.mark.parametrize("config, users, generator, expected", [
    (SMALL, [0, 7, 31, 59], default_generator, ("1e274ee2be58768f", "af424f5fed7a85ca")),
    (LARGE, [3, 41_999, 99_998], default_generator, ("ea651db4c9381318", "09ddfef54fe18124")),
    (SMALL, [2, 13], _history_reader, ("d01fcfd684a98534", "1a874b6800500766")),
], ids=["small", "large", "history-reader"])
def test_generated_users_are_bit_identical_to_the_pinned_ones(config, users, generator, expected):
    assert _digests(config, users, generator) == expected
