"""Where privacy noise comes from: unpredictable under ``secure``, regenerable (and labelled so) under ``seeded``.

Statistical tests here use fixed false-alarm rates (1e-6 per check), so a correct implementation fails them about
once in a million runs, while the deliberate mistakes below are rejected.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from client.device_ledger import DeviceLedger
from client.local_update import local_update
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from privacy.accounting import PrivacyLedger
from privacy.contribution import contribution_sensitivity
from privacy.mechanisms import clip_update
from privacy.randomness import SEEDED_WARNING, SecureNoise, SeededNoise, secure_gaussian
from privacy.user_level import UserLevelGaussian
from protocol.instructions import DataInstructions
from server.settings import PopulationSettings, PrivacySettings, RunSettings
from simulations.federation.device_data import device_examples, simulated_data
from simulations.federation.inprocess import InProcessFederation
from simulations.population.population import PopulationConfig

FALSE_ALARM = 1e-6
MODEL = ModelConfig(bidirectional=False, hidden_size=8, num_layers=1, dropout=0.0, head_dropout=0.0)
USERS, WINDOW = 4, 16


def _std_is(values: np.ndarray, std: float) -> bool:
    """Chi-square test of N(0, std^2) variance: sum(x^2)/std^2 ~ chi2(n), two-sided at ``FALSE_ALARM``."""
    n = values.size
    statistic = float(np.sum(np.square(values, dtype=np.float64))) / std**2
    return stats.chi2.ppf(FALSE_ALARM / 2, n) <= statistic <= stats.chi2.ppf(1 - FALSE_ALARM / 2, n)


def _released_noise(noise, std_c=0.5, z=1.2, population=10, coordinates=300_000) -> np.ndarray:
    """What one release of an all-zero sum adds to a zero model, times qN: the mechanism's noise on the sum."""
    mechanism = UserLevelGaussian(clipping_norm=std_c, noise_multiplier=z, sample_rate=0.5, population=population,
                                  noise=noise, ledger=PrivacyLedger(), delta=1e-5, accountant="rdp")
    released, _ = mechanism.release_sum({"w": np.zeros(coordinates)}, np.zeros(3))
    assert mechanism.ledger.steps == 1  # the release was recorded
    return released["w"].astype(np.float64) * mechanism.expected_clients


def test_the_servers_secure_noise_has_the_configured_standard_deviation_and_no_bias():
    noise = _released_noise(SecureNoise())
    std = 1.2 * contribution_sensitivity(0.5)  # z·S: the contribution's bound, statistics included
    assert _std_is(noise, std)
    assert not _std_is(noise, std * 1.03)  # the test sees a 3 % error in the std
    z_mean = noise.mean() / (std / np.sqrt(noise.size))
    assert abs(z_mean) < stats.norm.ppf(1 - FALSE_ALARM / 2)
    assert stats.kstest(noise / std, "norm").pvalue > FALSE_ALARM  # Gaussian in shape, not only in variance


def test_secure_noise_is_distributed_as_opacus_secure_mode_noise():
    """The same 2n-sum construction as Opacus' ``secure_mode`` (4 draws halved): same distribution, other bits."""
    from opacus.optimizers.optimizer import _generate_noise

    ours = secure_gaussian((200_000,), 0.7)
    reference = _generate_noise(0.7, torch.zeros(200_000, dtype=torch.float64), torch.Generator().manual_seed(5),
                                secure_mode=True).numpy()
    assert stats.ks_2samp(ours, reference).pvalue > FALSE_ALARM
    assert stats.ks_2samp(ours, reference * 1.1).pvalue < FALSE_ALARM  # ...and the test sees a 10 % scale error


def test_secure_noise_differs_at_every_draw_and_seeded_noise_repeats():
    assert not np.array_equal(SecureNoise().sample((1000,), 1.0), SecureNoise().sample((1000,), 1.0))
    assert np.array_equal(SeededNoise([0, 1]).sample((1000,), 1.0), SeededNoise([0, 1]).sample((1000,), 1.0))
    with pytest.raises(ValueError, match="non-negative"):
        secure_gaussian((3,), -1.0)


# ------------------------------------------------------------------------------------- runs and the attacker
def _run(noise: str) -> RunSettings:
    return RunSettings(seed=5, train=LocalTrainConfig(epochs=1, batch_size=8, max_examples=8), model=MODEL,
                       population=PopulationSettings(num_users=USERS, eval_users=0, days=7, window=WINDOW),
                       privacy=PrivacySettings(mode="user", delta=1e-3, clipping_norm=0.5, noise=noise))


def _initial() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in PreferenceLSTM(MODEL).state_dict().items()}


@pytest.fixture(scope="module")
def users():
    data = simulated_data(PopulationConfig(seed=5, num_users=USERS, days=7), window=WINDOW)
    return [device_examples(data, uid)[0] for uid in range(USERS)]


def _one_release(noise: str, users) -> tuple[dict[str, np.ndarray], InProcessFederation]:
    """One DP-FedAvg round over every user (q = 1), z = 1: the released model."""
    federation = InProcessFederation(_run(noise), _initial(), num_users=USERS, sample_rate=1.0, planned_rounds=1,
                                     stream=0, noise_multiplier=1.0)
    federation.round(users.__getitem__)
    return federation.arrays, federation


def _true_sum(federation: InProcessFederation, users) -> dict[str, np.ndarray]:
    """The pre-noise sum of clipped updates, recomputed as the server would (the clients' training is seeded)."""
    initial = _initial()
    instructions = dataclasses.replace(federation._instructions(), round=1)
    total = {k: np.zeros_like(v, dtype=np.float64) for k, v in initial.items()}
    for user in range(USERS):
        update = local_update(initial, instructions, users[user], DeviceLedger(None), user, simulated=True)
        clipped, _, _ = clip_update(update.update, 0.5)
        for k in total:
            total[k] += clipped[k]
    return total


def _subtraction_attack(released: dict[str, np.ndarray], run: RunSettings) -> dict[str, np.ndarray]:
    """The attacker has the released model, the run's config and this code: it regenerates the server's noise from
    the config seed (the stream ``InProcessFederation`` keys it with) and subtracts it from qN * (release - initial)."""
    initial, regenerated = _initial(), SeededNoise([run.seed, 0, 1])
    z, s, expected = 1.0, contribution_sensitivity(run.privacy.clipping_norm), float(USERS)
    return {k: (released[k].astype(np.float64) - initial[k]) * expected - regenerated.sample(initial[k].shape, z * s)
            for k in initial}


def test_the_subtraction_attack_recovers_the_sum_under_seeded_noise_and_fails_under_secure(users):
    seeded_release, federation = _one_release("seeded", users)
    truth = _true_sum(federation, users)
    recovered = _subtraction_attack(seeded_release, _run("seeded"))
    error = max(float(np.max(np.abs(recovered[k] - truth[k]))) for k in truth)
    assert error < 1e-4  # seeded: the un-noised sum of clipped updates, to float32 rounding: no privacy at all

    secure_release, _ = _one_release("secure", users)
    recovered = _subtraction_attack(secure_release, _run("secure"))
    residual = np.concatenate([(recovered[k] - truth[k]).ravel() for k in truth])
    assert _std_is(residual, np.sqrt(2.0) * 1.0 * contribution_sensitivity(0.5))  # its guess only adds its own noise


def test_two_secure_runs_of_the_same_config_release_different_noise_and_seeded_runs_the_same(users):
    first, federation = _one_release("secure", users)
    second, _ = _one_release("secure", users)
    assert all(not np.array_equal(first[k], second[k]) for k in first)
    assert federation.privacy_report()["noise"] == "secure" and "warning" not in federation.privacy_report()
    again, seeded = _one_release("seeded", users)
    same, _ = _one_release("seeded", users)
    assert all(np.array_equal(again[k], same[k]) for k in again)
    assert seeded.privacy_report()["warning"] == SEEDED_WARNING


# -------------------------------------------------------------------------------------------------- the config
def test_seeded_noise_is_refused_on_a_real_deployment_and_in_the_deploy_config(compose_config):
    from server.server_app import compose_settings
    from server.settings import settings_from_config

    assert compose_settings("deploy", []).privacy.noise == "secure"
    assert settings_from_config(compose_config()).privacy.noise == "secure"  # the default
    with pytest.raises(ValueError, match="privacy.noise=seeded is refused with deployment.engine='real'"):
        compose_settings("deploy", ["privacy.noise=seeded"])
    with pytest.raises(ValueError, match="privacy.noise=seeded is refused"):
        settings_from_config(compose_config("deployment=real", "simulation.nodes=0", "privacy.noise=seeded"))
    with pytest.raises(ValueError, match=r"privacy.noise must be one of \['secure', 'seeded'\]; found 'os'"):
        settings_from_config(compose_config("privacy.noise=os"))
    assert settings_from_config(compose_config("privacy.noise=seeded")).privacy.noise == "seeded"  # simulation


def test_the_end_of_run_summary_says_a_seeded_run_is_no_guarantee():
    from server.round_report import final_lines

    metrics = {"final": {"eval_top1": 0.2, "eval_nll": 2.0, "baselines": {}},
               "privacy": {"user_level": None, "record_level": None, "noise": "seeded", "warning": SEEDED_WARNING}}
    assert f"privacy.noise=seeded: {SEEDED_WARNING}" in final_lines(metrics)
    assert SEEDED_WARNING == "noise reproducible from the seed: not a privacy guarantee against anyone who knows it"
