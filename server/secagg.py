"""One round of secure aggregation: the server learns only the sum of the sampled clients' clipped updates.

Flower 1.42 has SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead") only
on its legacy path: ``SecAggPlusWorkflow`` as the ``fit_workflow`` of a ``DefaultWorkflow``, driven through a
``LegacyContext`` by a legacy ``flwr.server.strategy.Strategy``. ``DefaultWorkflow`` owns a loop of rounds; here it
runs one round per call (``num_rounds=1``) so that sampling (``server.round``), the privacy ledger, checkpoints, resume
and the budget stop stay in the run (``server.federation.FederatedRun``), shared with the non-secure path.

DP-FedAvg with SecAgg (McMahan et al. 2018, Alg. 1, with clipping moved to the device): every client sends its
update clipped to L2 norm C (``client.local_update``) with weight 1 (``max_weight=1`` keeps the weight exact, so
the secure weighted mean times the count is the sum); SecAgg sums them; the server adds Gaussian noise to the sum
and divides by the expected number of clients qN (``add_noise_and_step``): the mechanism the accountant describes.

Quantisation. SecAgg works on integers: each coordinate x is clipped to [-r, r] and stochastically rounded to one of
``quantization_range`` (T) levels, step 2r/T. A coordinate of a vector of L2 norm <= C is at most C in absolute
value (|x_j| <= ||x||_2), so r = C (plus a float32 rounding margin) clips nothing a second time, and a larger r
only coarsens the step. The stochastic rounding is unbiased; its error is below 2r/T per coordinate and client,
so the secure mean differs from the plain mean by less than 2r/T per coordinate (``quantisation_error_bound``),
provided clients quantise in float64 (``client.secagg_client`` does: in float32 the 2**22 levels are not exact).

Privacy of the rounding. Rounding moves one client's contribution by less than 2r/T per coordinate, so its L2 norm
is at most S = r + sqrt(d)·2r/T for d coordinates (``SecureAggregator.sensitivity``), a little above C (2e-4
relative for this model at T = 2**22). The server therefore adds noise of std z·S rather than z·C, and the released
sum is exactly the Gaussian mechanism with the accountant's (q, z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.serverapp import Grid
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from privacy.user_level import ClippingStats, NoUserLevelPrivacy, UserLevelGaussian
from protocol.records import ARRAY_NAMES_KEY
from server.aggregation import aggregate
from server.replies import ClientUpdate
from server.settings import SECAGG_MODULUS_RANGE, SecAggSettings
from validation.config import ConfigError

Arrays = dict[str, np.ndarray]

FLOAT32_MARGIN = 1e-6
"""Relative margin on the quantisation range: a float32 update clipped to C may exceed C by a rounding error."""


def quantisation_clipping_range(clipping_norm: float) -> float:
    """SecAgg's per-coordinate range for updates clipped to L2 norm ``clipping_norm`` (see the module docstring)."""
    if not clipping_norm > 0.0:
        raise ValueError(f"The clipping norm should be a positive value; found {clipping_norm}.")
    return clipping_norm * (1.0 + FLOAT32_MARGIN)


def quantisation_error_bound(clipping_range: float, quantization_range: int) -> float:
    """Largest difference, per coordinate, between the securely aggregated mean and the exact mean."""
    return 2.0 * clipping_range / quantization_range


@dataclass
class SecureSum:
    """What one SecAgg+ round revealed to the server.

    Attributes:
        total: the sum of the contributors' clipped updates (None if the protocol halted or nobody contributed).
        contributors: clients whose masked update is in the sum.
        sampled: clients the round was sent to.
        halted: why the protocol stopped without a sum, or None.
    """

    total: Arrays | None
    contributors: int
    sampled: int
    halted: str | None = None

    @property
    def dropped(self) -> int:
        return self.sampled - self.contributors


@dataclass
class _RoundStrategy(Strategy):
    """A legacy strategy for one round: sends the global model to pre-sampled nodes and keeps the secure mean."""

    grid: Grid
    nodes: list[int]
    parameters: Parameters
    config: dict
    mean: list[np.ndarray] | None = None
    contributors: int = 0
    failures: list = field(default_factory=list)

    def initialize_parameters(self, client_manager):  # noqa: D102 - legacy interface
        return self.parameters

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: D102
        run_id = self.grid.run.run_id
        return [(GridClientProxy(node_id=n, grid=self.grid, run_id=run_id), FitIns(self.parameters, dict(self.config)))
                for n in self.nodes]

    def aggregate_fit(self, server_round, results, failures):  # noqa: D102
        # SecAggPlusWorkflow puts the one securely aggregated (weighted) mean into every result.
        self.contributors, self.failures = len(results), list(failures)
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):  # noqa: D102
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # noqa: D102
        return None, {}

    def evaluate(self, server_round, parameters):  # noqa: D102
        return None


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's workflow, minus one failure: a sampled node that never answers the setup stage halts the round.

    Such a node never received or sent any key, so no mask involves it; Flower still tries to reconstruct its
    secret in the unmask stage, finds no shares and gives up. Forgetting it after setup lets the round go on
    with the nodes that did answer (a device that is offline when sampled is the commonest failure in practice).
    """

    def setup_stage(self, grid, context, state) -> bool:  # noqa: D102
        super().setup_stage(grid, context, state)
        if not state.nid_to_neighbours:  # fewer than two sampled: nothing was set up
            return False
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {n: nbrs & alive for n, nbrs in state.nid_to_neighbours.items() if n in alive}
        return len(alive) >= 2 and self._check_threshold(state)


class SecureAggregator:
    """Runs the secure sum of one round with Flower's SecAgg+."""

    def __init__(self, settings: SecAggSettings, *, clipping_norm: float, timeout_s: float) -> None:
        self.settings = settings
        self.clipping_range = quantisation_clipping_range(clipping_norm)
        self.timeout_s = timeout_s

    @property
    def error_bound(self) -> float:
        """Per-coordinate bound on |secure mean - exact mean| (quantisation)."""
        return quantisation_error_bound(self.clipping_range, self.settings.quantization_range)

    def sensitivity(self, num_coordinates: int) -> float:
        """L2 bound on one client's quantised contribution: its clipped update plus at most one step per coordinate."""
        return self.clipping_range + math.sqrt(num_coordinates) * self.error_bound

    def sum_updates(self, grid: Grid, nodes: list[int], global_arrays: Arrays, config: dict) -> SecureSum:
        """Send the global arrays and ``config`` (the round's instructions) to ``nodes``; return the secure sum.

        Raises:
            ConfigError: if this many quantised updates could overflow SecAgg's modulus.
        """
        if len(nodes) < 2:
            return SecureSum(None, 0, len(nodes), halted=f"{len(nodes)} client(s) sampled: secure aggregation needs "
                                                         "at least 2 (a sum of one update is that update)")
        if len(nodes) * self.settings.quantization_range >= SECAGG_MODULUS_RANGE:
            raise ConfigError(
                f"{len(nodes)} sampled clients * secagg.quantization_range={self.settings.quantization_range} must be "
                "< 2**32 (SecAgg's modulus); lower secagg.quantization_range."
            )
        names = list(global_arrays)
        parameters = ndarrays_to_parameters([np.asarray(global_arrays[k], dtype=np.float32) for k in names])
        strategy = _RoundStrategy(grid, list(nodes), parameters, {**config, ARRAY_NAMES_KEY: ",".join(names)})
        context = LegacyContext(
            Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=SimpleClientManager(),
        )
        workflow = _SecAggPlus(
            num_shares=self.settings.num_shares, reconstruction_threshold=self.settings.reconstruction_threshold,
            max_weight=1.0, clipping_range=self.clipping_range, quantization_range=self.settings.quantization_range,
            modulus_range=SECAGG_MODULUS_RANGE, timeout=self.timeout_s,
        )
        DefaultWorkflow(fit_workflow=workflow)(grid, context)
        if strategy.mean is None:
            return SecureSum(None, 0, len(nodes), halted="the SecAgg+ protocol halted (too many dropouts for the "
                                                           "reconstruction threshold); see the log")
        total = {k: np.asarray(m, dtype=np.float64) * strategy.contributors for k, m in zip(names, strategy.mean)}
        return SecureSum(total, strategy.contributors, len(nodes))


def add_noise_and_step(
    strategy, server_round: int, current: Arrays, secure: SecureSum, *, mechanism: UserLevelGaussian, sensitivity: float,
) -> tuple[Arrays, ClippingStats]:
    """DP-FedAvg's release from a secure sum: the run's mechanism adds N(0, (z·sensitivity)^2) to the sum, divides
    by qN and records the release (``UserLevelGaussian.release_sum``, as on the plain path), then the Flower
    strategy's server step (``server.aggregation.aggregate`` on one pseudo-update).

    ``sensitivity`` is one client's largest contribution to the sum: ``SecureAggregator.sensitivity`` (the
    clipping norm plus quantisation rounding). A round without a sum (halted, or nobody sampled) still releases
    noise: the accountant counts every round.

    Raises:
        ValueError: if ``sensitivity`` is below the clipping norm (the noise would not cover a clipped update).
    """
    total = secure.total if secure.total is not None else {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}
    noisy_mean = {k: v.astype(np.float32) for k, v in mechanism.release_sum(current, total, sensitivity=sensitivity).items()}
    pseudo = ClientUpdate(node_id=0, arrays=noisy_mean, metrics={"num-examples": 1})
    arrays, _ = aggregate(strategy, server_round, current, [pseudo], mechanism=NoUserLevelPrivacy())
    # Individual norms and clipping never reach the server under SecAgg: those diagnostics are unknown.
    return arrays, ClippingStats(clipped_fraction=float("nan"), mean_update_norm=float("nan"))
