"""The optimised round (node slots taking users in turn, several per message, each user's update folded into a running
sum as its reply arrives) computes exactly what the plain algorithm computes: every sampled user's local update,
collected, then DP-FedAvg.

A real run in Flower's simulation engine (Ray) is replayed in this process with the same seeds, without Flower
(``privacy.noise=seeded``: the replay must regenerate the server's noise):
the same Poisson samples, each user's ``local_update`` from the same global model, ``aggregate`` over the whole
round's updates with the same noise draws. The released models must agree to float32 rounding, so the held-out
accuracy after a fixed number of rounds is unchanged by the engine's optimisations.
"""

import numpy as np
import pytest

from client.device_ledger import DeviceLedger
from client.local_update import local_update
from privacy.accounting import PrivacyLedger
from server.aggregation import aggregate, user_level_mechanism
from server.checkpoint import load_checkpoint
from server.federation import Progress
from server.replies import Contribution
from server.round import train_instructions
from server.run_start import fresh_state
from server.settings import settings_from_config
from simulations.federation.device_data import device_examples
from simulations.federation.held_out import held_out_examples
from simulations.federation.inprocess import server_task_identity
from simulations.federation.simulation_server_app import simulated_run
from simulations.run import run_federated_simulation

OVERRIDES = ["population=small", "population.num_users=24", "population.eval_users=6", "population.days=10",
             "simulation.sample_rate=0.5", "simulation.rounds=3", "simulation.nodes=3", "simulation.users_per_message=5",
             "simulation.final_eval_clients=0",
             "simulation.central_baseline_epochs=0", "privacy.target_epsilon=20", "train.epochs=2",
             "privacy.noise=seeded"]


def _replay(settings, output_dir):
    """The rounds of ``settings`` without Flower: sample, train every sampled user, then aggregate the round.
    Returns the final arrays, the initial ones and the run (for its data and scoring)."""
    run = simulated_run(settings, output_dir, progress=Progress(open("/dev/null", "w")))
    sim, users = settings.simulation, settings.population.num_users
    state = fresh_state(settings, lambda _: None, population=users)
    sampling = np.random.default_rng([settings.seed, 0])
    mechanism = user_level_mechanism(settings, noise_multiplier=state.noise_multiplier, ledger=PrivacyLedger(),
                                     sample_rate=sim.sample_rate, population=users, noise_seed=[settings.seed, 1])
    arrays = initial = state.arrays
    for server_round in range(1, sim.rounds + 1):
        instructions = train_instructions(settings, server_round, seed=settings.seed, data=run.data,
                                          device_dir=run.device_dir)
        chosen = np.nonzero(sampling.random(users) < sim.sample_rate)[0]
        updates = []
        for user in map(int, chosen):  # a user with no examples yet sends the all-zero contribution
            examples, _ = device_examples(instructions.data, user)
            update = local_update(arrays, instructions, examples, DeviceLedger(None), user, simulated=True)
            updates.append(Contribution(user, update.update, update.statistics))
        with server_task_identity():
            arrays, _ = aggregate(run.strategy, server_round, arrays, updates, mechanism=mechanism)
    return arrays, initial, run


@pytest.mark.slow
def test_slots_and_streaming_aggregation_release_the_model_plain_dp_fedavg_would(compose_config, tmp_path):
    settings = settings_from_config(compose_config(*OVERRIDES))
    metrics = run_federated_simulation(OVERRIDES, settings, tmp_path / "flower")
    assert [r["failed"] + r["rejected"] for r in metrics["rounds"]] == [0, 0, 0]
    assert all(r["replies"] == r["sampled"] > 3 for r in metrics["rounds"])  # more users than slots

    replayed, initial, run = _replay(settings, tmp_path / "replay")
    released = load_checkpoint(tmp_path / "flower" / "checkpoint.pt").arrays
    for name in replayed:
        np.testing.assert_allclose(released[name], replayed[name], rtol=0, atol=2e-6, err_msg=name)
    held_out = held_out_examples(run.data, range(24, 30), settings.population.eval_points_per_user)
    assert run._score(replayed, held_out)["top1"] == pytest.approx(metrics["final"]["eval_top1"], abs=1e-9)
    moved = max(float(np.max(np.abs(released[k] - initial[k]))) for k in initial)
    assert moved > 1000 * 2e-6  # the agreement above is between trained models, not two copies of the initial one
