"""The empirical privacy audit: its canary, its two worlds, and (slow) the audit. Its statistics are tested in
``tests/test_audit_bounds.py``.

The slow test plays the membership game of ``simulations.audit`` with a few trials per world: without DP the
loss-threshold attack must tell the canary's worlds apart, with user-level DP at epsilon 1 it must be near chance,
and the epsilon it proves must never exceed the accounted one.
"""

from __future__ import annotations

import numpy as np
import pytest

from model.log.event_log import load_events, write_events
from model.log.vocab import GENRES
from simulations.federation.device_data import population
from simulations.audit import (
    CANARY_BPM,
    CANARY_INSTRUMENT,
    AuditConfig,
    audit,
    build_setup,
    canary_events,
    train_federated,
)

# ------------------------------------------------------------------------------------------------- the canary

def test_the_canary_is_a_valid_log_whose_pattern_no_synthetic_user_shows(tmp_path):
    config = AuditConfig()
    setup = build_setup(config)
    events = canary_events(start_ts=1_788_739_200, days=config.days, rare_genre=setup.rare_genre,
                           decoy_genre=setup.decoy_genre)
    assert write_events(tmp_path / "canary.jsonl", events) == len(events)
    assert load_events(tmp_path / "canary.jsonl").events == events
    assert len(setup.canary) == config.days and set(setup.canary.targets.tolist()) == {GENRES.index(setup.rare_genre)}
    people = population(config.seed, config.num_users + config.eval_users, config.days)
    for uid in range(config.num_users + config.eval_users):
        for e in people.user(uid).events():
            assert not (e.kind == "segment_kept" and e.bpm == CANARY_BPM and e.instruments == (CANARY_INSTRUMENT,))
    assert setup.rare_genre != setup.decoy_genre


def test_the_two_worlds_differ_only_by_the_canary():
    """Trial k of both worlds draws the same sampling and seeds: when the canary's slot is not drawn, the released
    models are identical; when it is, they differ."""
    config = AuditConfig(num_users=3, eval_users=2, days=7, rounds=1, sample_rate=0.5, trials=2, noise="seeded")
    setup = build_setup(config)
    drawn = {t: np.random.default_rng([config.seed, t, 0]).random(config.num_users + 1)[-1] < 0.5 for t in range(40)}
    for trial in (next(t for t, d in drawn.items() if not d), next(t for t, d in drawn.items() if d)):
        with_canary = train_federated(setup, with_canary=True, trial=trial, noise_multiplier=None)
        without = train_federated(setup, with_canary=False, trial=trial, noise_multiplier=None)
        same = all(np.array_equal(with_canary[k], without[k]) for k in with_canary)
        assert same == (not drawn[trial])


def test_an_audit_config_that_breaks_the_delta_rule_is_refused():
    with pytest.raises(ValueError, match="delta must be in"):
        AuditConfig(num_users=10, delta=0.1)


# ---------------------------------------------------------------------------------------------------- the audit

@pytest.fixture(scope="module")
def audits():
    """No DP and user-level DP at epsilon 1, 10 trained models per world each (about a minute on 2 cores).

    Seeded noise: trial k of both worlds draws the same noise (the attacker's best case), and the test's verdict is
    the same on every run instead of failing by chance a few times in a hundred."""
    import torch

    torch.set_num_threads(1)
    setup = build_setup(AuditConfig(trials=10, noise="seeded"))
    return audit(setup, target_epsilon=None), audit(setup, target_epsilon=1.0)


@pytest.mark.slow
def test_without_dp_the_canary_is_detected_and_with_dp_at_epsilon_1_the_attack_is_near_chance(audits):
    no_dp, dp = audits
    assert no_dp.auc >= 0.9 and no_dp.auc > dp.auc
    assert abs(dp.auc - 0.5) <= 0.25  # 10 v 10 trials: the AUC's standard error under chance is about 0.13


@pytest.mark.slow
def test_the_epsilon_the_attack_proves_never_exceeds_the_accounted_epsilon(audits):
    _, dp = audits
    assert 0.9 <= dp.accounted_epsilon <= 1.0 and dp.noise_multiplier > 0
    assert dp.bound.epsilon <= dp.accounted_epsilon
