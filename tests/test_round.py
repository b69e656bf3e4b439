"""The one round (``server.round.FederatedRound``): the same model whichever transport carries it."""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from privacy.accounting import PrivacyLedger
from server.addressing import Addressing
from server.aggregation import make_strategy, user_level_mechanism
from server.grid_io import RoundChannel
from server.grid_transport import GridTransport
from server.round import FederatedRound, poisson_sample, train_instructions
from server.run_start import data_instructions, fresh_state
from server.server_app import compose_settings
from simulations.federation.simulation_client_app import app as client_app
from simulations.federation.device_data import device_examples, population_items
from simulations.federation.inprocess import InProcessTransport, server_task_identity
from simulations.federation.inprocess_grid import InProcessGrid
from simulations.federation.simulation_settings import population_config

USERS = 8
OVERRIDES = ["population=small", f"population.num_users={USERS}", "population.eval_users=0", "population.days=7",
             "model=causal", "model.hidden_size=8", "model.num_layers=1", "simulation.rounds=1",
             "simulation.sample_rate=0.5", "privacy.target_epsilon=20", "privacy.noise=seeded", "train.max_examples=8",
             "deployment.warm_up_nodes=0", "simulation.nodes=2"]


def _data(settings):
    """The round's data instructions, naming the synthetic population the simulation's nodes play."""
    return data_instructions(settings, population_items(population_config(settings)))


def test_poisson_sampling_draws_one_uniform_per_candidate_in_order():
    candidates = [5, 9, 11, 40, 41, 77, 78, 90]
    picked = poisson_sample(np.random.default_rng(3), candidates, 0.5)
    reference = [candidates[i] for i in np.flatnonzero(np.random.default_rng(3).random(len(candidates)) < 0.5)]
    assert picked == reference and 0 < len(picked) < len(candidates)


def test_the_round_releases_the_same_model_over_the_grid_as_by_calling_local_update():
    """Flower Messages to node slots (two users per message, replies judged) and direct calls of ``local_update``:
    the same sampled users, the same noisy DP-FedAvg release, bit for bit."""
    settings = compose_settings("config", OVERRIDES)
    state = fresh_state(settings, lambda _: None, population=USERS)
    instructions = train_instructions(settings, 1, seed=settings.seed, data=_data(settings))

    def play(transport):
        mechanism = user_level_mechanism(settings, noise_multiplier=state.noise_multiplier, ledger=PrivacyLedger(),
                                         sample_rate=0.5, population=USERS, noise_seed=[settings.seed, 1])
        federated_round = FederatedRound(make_strategy(settings.strategy), mechanism, sample_rate=0.5,
                                         sampling_rng=np.random.default_rng([settings.seed, 0]))
        with server_task_identity():
            return federated_round.play(1, state.arrays, instructions, transport)

    grid = GridTransport(RoundChannel(InProcessGrid(client_app, 2), ttl_s=60.0),
                         Addressing(slots=True, users_per_message=2), [1, 2], num_users=USERS, timeout_s=60.0)
    calls = InProcessTransport(USERS, lambda user: device_examples(instructions.data, user)[0], range(USERS), {})
    over_grid, by_calls = play(grid), play(calls)
    assert (over_grid.sampled, over_grid.replies, over_grid.failed, over_grid.rejected) == \
        (by_calls.sampled, by_calls.replies, 0, 0)
    assert over_grid.replies > 2  # several messages, more users than slots
    for name, value in by_calls.arrays.items():
        np.testing.assert_array_equal(over_grid.arrays[name], value, err_msg=name)
    assert any(not np.array_equal(by_calls.arrays[k], state.arrays[k]) for k in state.arrays)


def test_a_reply_that_fails_is_counted_and_never_aggregated():
    """A slot whose ClientApp raises: its users count as failed, and the round releases from the others only."""
    settings = compose_settings("config", OVERRIDES + ["privacy=none"])
    state = fresh_state(settings, lambda _: None, population=USERS)
    instructions = train_instructions(settings, 1, seed=settings.seed, data=_data(settings))

    def broken_on_node_2(message: Message, context):
        if context.node_id == 2:
            raise RuntimeError("device crashed")
        return client_app(message, context)

    grid = GridTransport(RoundChannel(InProcessGrid(broken_on_node_2, 2), ttl_s=60.0),
                         Addressing(slots=False), [1, 2], num_users=USERS, timeout_s=60.0)
    federated_round = FederatedRound(make_strategy(settings.strategy), user_level_mechanism(
        settings, noise_multiplier=None, ledger=PrivacyLedger(), sample_rate=1.0, population=2, noise_seed=[0]),
        sample_rate=1.0, sampling_rng=np.random.default_rng(0))
    with server_task_identity():
        outcome = federated_round.play(1, state.arrays, instructions, grid)
    assert (outcome.sampled, outcome.replies, outcome.failed) == (2, 1, 1)
    assert outcome.problems[0][0] == 2 and outcome.problems[0][1].startswith("unrecognised error")
