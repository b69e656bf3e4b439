"""Hostile clients in a real Flower simulation (Ray): the server rejects and counts their malformed replies."""

import math

import numpy as np
import pytest

from server.checkpoint import load_checkpoint
from simulations.federation.attacks import is_malicious
from tests.helpers import tiny_simulation


@pytest.mark.slow
def test_the_server_rejects_and_counts_nan_replies_and_keeps_training(compose_config, tmp_path):
    metrics = tiny_simulation(compose_config, tmp_path, "privacy=none", "simulation.rounds=2",
                              "simulation.sample_rate=1.0", "simulation.attack.kind=nan_arrays",
                              "simulation.attack.fraction=0.4", "simulation.nodes=4",
                              "simulation.users_per_message=3")  # malicious and honest users share messages
    users = metrics["config"]["population"]["num_users"]
    malicious = sum(is_malicious(metrics["config"]["seed"], u, 0.4) for u in range(users))
    assert 0 < malicious < users
    for row in metrics["rounds"]:  # every user takes part in every round
        assert row["rejected"] == malicious and row["replies"] == users - malicious and row["failed"] == 0
        assert math.isfinite(row["eval_nll"])
    assert all(np.isfinite(a).all() for a in load_checkpoint(tmp_path / "checkpoint.pt").arrays.values())
