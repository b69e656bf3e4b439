import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier, fast_rdp_epsilon
from privacy.errors import PrivacyConfigError
from privacy.mechanisms import add_gaussian_noise, clip_update, global_norm
from privacy.randomness import SeededNoise


def test_ledger_epsilon_matches_known_rdp_and_prv_figures():
    # q = 0.01, z = 1.0, 1000 releases, delta = 1e-5 (measured with Opacus on this machine: 2.10 / 1.84).
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
    assert ledger.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(2.10, abs=0.01)
    assert ledger.epsilon(delta=1e-5, accountant="prv") == pytest.approx(1.84, abs=0.02)


def test_ledger_matches_opacus_accountants_stepped_one_release_at_a_time():
    ledger, rdp, prv = PrivacyLedger(), RDPAccountant(), PRVAccountant()
    for z, q, n in [(1.1, 0.1, 7), (0.8, 0.05, 3), (1.1, 0.1, 2)]:
        for _ in range(n):
            ledger.record(noise_multiplier=z, sample_rate=q)
            rdp.step(noise_multiplier=z, sample_rate=q)
            prv.step(noise_multiplier=z, sample_rate=q)
    assert ledger.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-12)
    assert ledger.epsilon(delta=1e-5, accountant="prv") == pytest.approx(prv.get_epsilon(1e-5), rel=1e-6)
    assert ledger.steps == 12


def test_fast_rdp_equals_opacus_rdp_accountant():
    history = [(1.3, 0.4, 5), (0.9, 1.0, 2), (2.0, 0.02, 300)]
    acc = RDPAccountant()
    acc.history = list(history)
    assert fast_rdp_epsilon(history, delta=1e-3) == pytest.approx(acc.get_epsilon(1e-3), rel=1e-12)
    assert fast_rdp_epsilon([], delta=1e-3) == 0.0


def test_calibration_inverts_the_accountant():
    z = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=30)
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=z, sample_rate=0.1, steps=30)
    assert 1.95 <= ledger.epsilon(delta=1e-5) <= 2.0
    looser = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.1, steps=30)
    assert looser < z


def test_epsilon_after_predicts_the_next_release_without_recording_it():
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=1.0, sample_rate=0.1, steps=4)
    ahead = ledger.epsilon_after(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5, accountant="rdp")
    assert ledger.steps == 4
    ledger.record(noise_multiplier=1.0, sample_rate=0.1)
    assert ledger.epsilon(delta=1e-5) == pytest.approx(ahead)


def test_ledger_state_round_trips():
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=1.0, sample_rate=0.1, steps=4)
    restored = PrivacyLedger()
    restored.load_state_dict(ledger.state_dict())
    assert restored.history == ledger.history


def test_no_noise_means_infinite_epsilon():
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=0.0, sample_rate=0.1)
    assert math.isinf(ledger.epsilon(delta=1e-5))


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(target_epsilon=0.0, delta=1e-5, sample_rate=0.1, steps=10), "target_epsilon"),
        (dict(target_epsilon=1.0, delta=1.0, sample_rate=0.1, steps=10), "delta"),
        (dict(target_epsilon=1.0, delta=1e-5, sample_rate=0.0, steps=10), "sample_rate"),
        (dict(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=10, accountant="gdp"), "accountant"),
    ],
)
def test_calibration_rejects_impossible_budgets(kwargs, key):
    with pytest.raises(PrivacyConfigError, match=key):
        calibrate_noise_multiplier(**kwargs)


def test_clip_update_bounds_the_norm_and_leaves_small_updates_alone():
    big = {"a": np.full(4, 3.0), "b": np.full((2, 2), 4.0)}
    clipped, norm, was_clipped = clip_update(big, 1.0)
    assert was_clipped and norm == pytest.approx(10.0) and global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    small, _, was_clipped = clip_update({"a": np.array([0.1])}, 1.0)
    assert not was_clipped and small["a"][0] == pytest.approx(0.1)
    zero, norm, was_clipped = clip_update({"a": np.zeros(3)}, 1.0)
    assert norm == 0.0 and not was_clipped and np.all(zero["a"] == 0)


def test_gaussian_noise_has_the_requested_std():
    noisy = add_gaussian_noise({"a": np.zeros(200_000)}, 0.7, SeededNoise([0]))
    assert noisy["a"].std() == pytest.approx(0.7, rel=0.01)


@pytest.mark.parametrize("target,q,steps", [(2.0, 0.1, 20), (8.0, 0.1, 30), (1.0, 0.01, 200)])
def test_calibration_matches_opacus_for_one_mechanism(target, q, steps):
    from opacus.accountants.utils import get_noise_multiplier

    ours = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps)
    theirs = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps,
                                  accountant="rdp", epsilon_tolerance=0.01 * target)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_calibration_for_the_rounds_and_the_evaluation_spends_the_budget_on_both():
    """z for 30 rounds at q = 0.1 plus one release at 0.2 (the devices' evaluation): the composed epsilon is within 1 %
    of the target, below it, and above it for a slightly smaller z; the rounds alone would have needed less noise."""
    z = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.1, steps=30, also=[(0.2, 1)])
    ledger = PrivacyLedger()
    ledger.history = [(z, 0.1, 30), (z, 0.2, 1)]
    assert 0.99 * 8.0 <= ledger.epsilon(delta=1e-5) <= 8.0
    ledger.history = [(0.98 * z, 0.1, 30), (0.98 * z, 0.2, 1)]
    assert ledger.epsilon(delta=1e-5) > 8.0 * 0.99
    assert z > calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.1, steps=30)
