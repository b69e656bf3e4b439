"""A noise-cohort simulation: the real cohort's noise on the simulated cohort's mean, the real q in the ledger."""

import numpy as np
import pytest

from privacy.accounting import PrivacyLedger, planned_epsilon
from privacy.contribution import STATISTICS, contribution_sensitivity
from privacy.randomness import SeededNoise
from simulations.federation.noise_cohort import NoiseCohort, NoiseCohortGaussian


def _mechanism(real: NoiseCohort, ledger: PrivacyLedger) -> NoiseCohortGaussian:
    return NoiseCohortGaussian(real=real, clipping_norm=0.5, noise_multiplier=1.3, sample_rate=0.1, population=10_000,
                               noise=SeededNoise([0]), ledger=ledger, delta=1e-8, accountant="rdp")


def test_the_simulated_mean_carries_the_real_cohorts_noise_and_the_ledger_its_sampling_rate():
    ledger = PrivacyLedger()
    mechanism = _mechanism(NoiseCohort(population=1_000_000, sample_rate=0.01), ledger)
    zeros = {"w": np.zeros(200_000)}
    mean, _ = mechanism.release_sum(zeros, np.zeros(len(STATISTICS)))
    real_std = 1.3 * contribution_sensitivity(0.5) / 10_000  # z·S / K, K = 10^4 real clients, not the 10^3 trained
    assert float(np.std(mean["w"])) == pytest.approx(real_std, rel=0.01)
    assert ledger.history == [(1.3, 0.01, 1)]
    assert mechanism.epsilon() == pytest.approx(planned_epsilon(1.3, sample_rate=0.01, steps=1, delta=1e-8))


def test_a_real_cohort_smaller_than_the_simulated_one_is_refused():
    with pytest.raises(ValueError, match="must be at least the simulated one"):
        _mechanism(NoiseCohort(population=5_000, sample_rate=0.1), PrivacyLedger())


@pytest.mark.parametrize("overrides", [["privacy=bandmf"], ["privacy=user", "privacy.clipping=adaptive"],
                                       ["privacy=both"]])
def test_a_noise_cohort_stands_only_for_dp_fedavg_with_fixed_clipping(compose_config, overrides):
    from model.network.networks import PreferenceLSTM
    from server.settings import settings_from_config
    from simulations.federation.inprocess import InProcessFederation

    settings = settings_from_config(compose_config("population=small", "privacy.delta=1e-8", *overrides))
    arrays = {k: v.detach().numpy() for k, v in PreferenceLSTM(settings.model).state_dict().items()}
    with pytest.raises(ValueError, match="a noise cohort simulates privacy=user with DP-FedAvg and fixed clipping"):
        InProcessFederation(settings, arrays, num_users=60, sample_rate=0.1, planned_rounds=settings.simulation.rounds,
                            stream=0, noise_cohort=NoiseCohort(population=1_000_000, sample_rate=0.01))
