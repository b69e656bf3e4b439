"""One round of secure aggregation: the server learns only the sum of the sampled clients' bounded contributions.

Flower 1.42 has SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead") only
on its legacy path: ``SecAggPlusWorkflow`` as the ``fit_workflow`` of a ``DefaultWorkflow``, driven through a
``LegacyContext`` by a legacy ``flwr.server.strategy.Strategy``. ``DefaultWorkflow`` owns a loop of rounds; here it
runs one round per call (``num_rounds=1``) so that sampling (``server.round``), the privacy ledger, checkpoints, resume
and the budget stop stay in the run (``server.federation.FederatedRun``), shared with the non-secure path. This module
is the one place that touches the workflow's stages and state.

DP-FedAvg with SecAgg (McMahan et al. 2018, Alg. 1, with clipping moved to the device): every client sends its
contribution (``privacy.contribution``: its update clipped to L2 norm C, then its bounded statistics) with weight 1;
SecAgg sums them; the server adds Gaussian noise to the sum and divides the update by the expected number of
clients qN (``release_secure_sum``): the mechanism the accountant describes.

The unmasked weight factor is checked. Each client's masked vector starts with its quantised weight, and Flower
divides the unmasked sum by their total: a client that forges its weight so that the total is 1 (mod 2**32) makes
the "mean" the honest sum times n·T while the noise stays z·S, which unmasks the others. Here the server unmasks the
sum itself (``_SecAggPlus.unmask_stage``, Flower's stage with the division replaced by checks): the total weight must
be exactly contributors × T and every coordinate of the integer sum must lie in [0, contributors × T], or the round
releases nothing (its noise is still spent and counted).

Quantisation. SecAgg works on integers: each coordinate x is clipped to [-r, r] and stochastically rounded to one of
``quantization_range`` (T) levels, step 2r/T. A coordinate of a contribution of L2 norm <= S is at most C in
absolute value (the update's coordinates are at most its norm C, the statistics at most 0.1·C), so r = C (plus a
float32 rounding margin) clips nothing a second time. The stochastic rounding is unbiased; its error is below 2r/T
per coordinate and client, so the secure sum differs from the exact sum by less than n·2r/T per coordinate
(``quantisation_error_bound`` per client), provided clients quantise in float64 (``client.secagg_client`` does).

Privacy of the rounding. Rounding moves one client's contribution by less than 2r/T per coordinate, so its L2 norm
is at most S + sqrt(d)·2r/T for d coordinates (``SecureAggregator.sensitivity``), a little above S (2e-4 relative
for this model at T = 2**22). The server therefore adds noise of std z·that bound, and the released sum is exactly
the Gaussian mechanism with the accountant's (q, z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from privacy.contribution import STATISTICS, ReleasedStatistics, contribution_sensitivity
from privacy.user_level import UserLevelGaussian
from protocol.records import ARRAY_NAMES_KEY
from protocol.reply_layout import STATISTICS_ARRAY
from server.aggregation import strategy_step
from server.settings import SECAGG_MODULUS_RANGE, SecAggSettings
from validation.config import ConfigError

Arrays = dict[str, np.ndarray]

FLOAT32_MARGIN = 1e-6
"""Relative margin on the quantisation range: a float32 update clipped to C may exceed C by a rounding error."""


def quantisation_clipping_range(clipping_norm: float) -> float:
    """SecAgg's per-coordinate range for contributions whose update is clipped to ``clipping_norm`` (see above)."""
    if not clipping_norm > 0.0:
        raise ValueError(f"The clipping norm should be a positive value; found {clipping_norm}.")
    return clipping_norm * (1.0 + FLOAT32_MARGIN)


def quantisation_error_bound(clipping_range: float, quantization_range: int) -> float:
    """Largest difference, per coordinate and client, between a quantised contribution and the exact one."""
    return 2.0 * clipping_range / quantization_range


@dataclass
class SecureSum:
    """What one SecAgg+ round revealed to the server.

    Attributes:
        total: the sum of the contributors' clipped updates (None if the round released nothing).
        statistics: the sum of their statistics' coordinates (None with ``total``).
        contributors: clients whose masked contribution is in the sum.
        sampled: clients the round was sent to.
        halted: why the round released no sum (the protocol halted, or a check on the unmasked sum failed), or None.
    """

    total: Arrays | None
    statistics: np.ndarray | None
    contributors: int
    sampled: int
    halted: str | None = None

    @property
    def dropped(self) -> int:
        return self.sampled - self.contributors


@dataclass
class _RoundStrategy(Strategy):
    """A legacy strategy for one round: sends the global model to pre-sampled nodes (the sum is unmasked by
    ``_SecAggPlus``, never averaged by the strategy)."""

    grid: Grid
    nodes: list[int]
    parameters: Parameters
    config: dict
    failures: list = field(default_factory=list)

    def initialize_parameters(self, client_manager):  # noqa: D102 - legacy interface
        return self.parameters

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: D102
        run_id = self.grid.run.run_id
        return [(GridClientProxy(node_id=n, grid=self.grid, run_id=run_id), FitIns(self.parameters, dict(self.config)))
                for n in self.nodes]

    def aggregate_fit(self, server_round, results, failures):  # noqa: D102
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):  # noqa: D102
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # noqa: D102
        return None, {}

    def evaluate(self, server_round, parameters):  # noqa: D102
        return None


@dataclass
class Unmasked:
    """The unmask stage's outcome: the integer sum of the contributors' quantised values, or why none is released."""

    values: list[np.ndarray] | None
    contributors: int
    halted: str | None = None


def check_unmasked(factor: int, values: list[np.ndarray], contributors: int, quantization_range: int) -> str | None:
    """Why the unmasked integer sum cannot be released, or None: the weight factor must be exactly
    ``contributors`` × T (each honest client's weight is 1, quantised to T) and every coordinate a sum of
    ``contributors`` values in [0, T]."""
    expected = contributors * quantization_range
    if int(factor) != expected:
        return (f"the unmasked weight factor is {int(factor)}, not contributors × T = {expected}: a client forged its "
                "weight; the round releases nothing")
    if any(np.any(v < 0) or np.any(v > expected) for v in values):
        return (f"a coordinate of the unmasked sum lies outside [0, contributors × T = {expected}]: a client sent "
                "values out of range; the round releases nothing")
    return None


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's workflow with two changes.

    - A sampled node that never answers the setup stage no longer halts the round: such a node never received or
      sent any key, so no mask involves it; Flower would still try to reconstruct its secret in the unmask stage,
      find no shares and give up. Forgetting it after setup lets the round go on with the nodes that did answer.
    - The unmask stage is Flower's, up to the unmasked integer sum; then, instead of dividing the sum by the clients'
      total weight, it checks that weight (``check_unmasked``) and keeps the integer sum in ``self.unmasked``.
    """

    unmasked: Unmasked | None = None

    def setup_stage(self, grid, context, state) -> bool:  # noqa: D102
        super().setup_stage(grid, context, state)
        if not state.nid_to_neighbours:  # fewer than two sampled: nothing was set up
            return False
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {n: nbrs & alive for n, nbrs in state.nid_to_neighbours.items() if n in alive}
        return len(alive) >= 2 and self._check_threshold(state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # noqa: D102
        current_round = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        active, dead = state.active_node_ids, state.sampled_node_ids - state.active_node_ids

        def request(nid: int) -> Message:
            neighbours = state.nid_to_neighbours[nid]
            config = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: list(neighbours & active),
                      Key.DEAD_NODE_ID_LIST: list(neighbours & dead)}
            return Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(config)}), dst_node_id=nid,  # type: ignore[arg-type]
                           message_type=MessageType.TRAIN, group_id=str(current_round))

        replies = grid.send_and_receive([request(nid) for nid in active], timeout=self.timeout)
        shares: dict[int, list[bytes]] = {nid: [] for nid in state.sampled_node_ids}
        for reply in replies:
            if reply.has_error():
                continue
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(cast(list[int], record[Key.NODE_ID_LIST]), cast(list[bytes], record[Key.SHARE_LIST]),
                                    strict=True):
                if owner in shares:  # shares of a node that was never sampled are ignored
                    shares[owner].append(share)
        masked = state.aggregate_ndarrays
        for nid, owner_shares in shares.items():
            if len(owner_shares) < state.threshold:
                self.unmasked = Unmasked(None, len(active), "not enough shares to remove a client's masks")
                return False
            secret = combine_shares(owner_shares)
            shape = get_parameters_shape(masked)
            if nid in active:  # the active client's private mask
                masked = parameters_subtraction(masked, pseudo_rand_gen(secret, state.mod_range, shape))
                continue
            for neighbour in state.nid_to_neighbours[nid] - {nid}:  # a dropped client's pairwise masks
                key = generate_shared_key(bytes_to_private_key(secret),
                                          bytes_to_public_key(state.nid_to_publickeys[neighbour][0]))
                mask = pseudo_rand_gen(key, state.mod_range, shape)
                masked = parameters_addition(masked, mask) if nid > neighbour else parameters_subtraction(masked, mask)
        factor, values = factor_extract(parameters_mod(masked, state.mod_range))
        contributors = len(active)
        halted = check_unmasked(factor, values, contributors, state.quantization_range)
        if halted is not None:
            self.unmasked = Unmasked(None, contributors, halted)
            return True
        self.unmasked = Unmasked([np.asarray(v, dtype=np.int64) for v in values], contributors)
        return True


class SecureAggregator:
    """Runs the secure sum of one round with Flower's SecAgg+."""

    def __init__(self, settings: SecAggSettings, *, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    def error_bound(self, clipping_norm: float) -> float:
        """Per-coordinate bound on one client's quantisation error at this clipping norm."""
        return quantisation_error_bound(quantisation_clipping_range(clipping_norm), self.settings.quantization_range)

    def sensitivity(self, clipping_norm: float, num_coordinates: int) -> float:
        """L2 bound on one client's quantised contribution: its bound S plus at most one step per coordinate."""
        return contribution_sensitivity(clipping_norm) + math.sqrt(num_coordinates) * self.error_bound(clipping_norm)

    def sum_updates(self, grid: Grid, nodes: list[int], global_arrays: Arrays, config: dict, *,
                    clipping_norm: float) -> SecureSum:
        """Send the global arrays and ``config`` (the round's instructions) to ``nodes``; return the secure sum of
        their contributions, quantised over ±``clipping_norm``.

        Raises:
            ConfigError: if this many quantised contributions could overflow SecAgg's modulus.
        """
        clipping_range, levels = quantisation_clipping_range(clipping_norm), self.settings.quantization_range
        unmasked = self._unmask(grid, nodes, global_arrays, config, clipping_range=clipping_range, levels=levels)
        if isinstance(unmasked, SecureSum):
            return unmasked
        names = list(global_arrays)
        if len(unmasked.values) != len(names) + 1:  # type: ignore[arg-type]
            return SecureSum(None, None, unmasked.contributors, len(nodes),
                             halted=f"the unmasked sum holds {len(unmasked.values)} arrays, not {len(names) + 1}")  # type: ignore[arg-type]
        step = 2.0 * clipping_range / levels  # each client's value q stands for q*step - r
        values = [v.astype(np.float64) * step - unmasked.contributors * clipping_range for v in unmasked.values]  # type: ignore[union-attr]
        total = dict(zip([*names, STATISTICS_ARRAY], values))
        statistics = total.pop(STATISTICS_ARRAY)
        return SecureSum(total, statistics, unmasked.contributors, len(nodes))

    def sum_shares(self, grid: Grid, nodes: list[int], global_arrays: Arrays, config: dict, *,
                   modulus: int) -> tuple[np.ndarray | None, SecureSum]:
        """``privacy=distributed``: the sum mod ``modulus`` of the nodes' noised integer shares (each device's one
        vector of values in [0, modulus), ``privacy.distributed_dp.encode``), and the round's counts.

        Flower's quantiser passes the integers through unchanged: with clipping range m/2 and m levels its step is
        exactly 1, and a device hands it value - m/2 (``client.secagg_client``); since m divides SecAgg's 2**32, the
        sum mod 2**32 reduced mod m is the sum mod m.
        """
        unmasked = self._unmask(grid, nodes, global_arrays, config, clipping_range=modulus / 2, levels=modulus)
        if isinstance(unmasked, SecureSum):
            return None, unmasked
        counts = SecureSum(None, None, unmasked.contributors, len(nodes))
        if len(unmasked.values) != 1:  # type: ignore[arg-type]
            counts.halted = f"the unmasked sum holds {len(unmasked.values)} arrays, not the 1 of a noised share"  # type: ignore[arg-type]
            return None, counts
        return np.mod(unmasked.values[0].reshape(-1), modulus), counts  # type: ignore[index]

    def _unmask(self, grid: Grid, nodes: list[int], global_arrays: Arrays, config: dict, *, clipping_range: float,
                levels: int) -> Unmasked | SecureSum:
        """Run SecAgg+ on ``nodes`` with Flower's quantiser set to ``levels`` over ±``clipping_range``: the unmasked
        integer sum, or (a ``SecureSum`` saying why) nothing."""
        if len(nodes) < 2:
            return SecureSum(None, None, 0, len(nodes), halted=f"{len(nodes)} client(s) sampled: secure aggregation "
                                                                "needs at least 2 (a sum of one update is that update)")
        if len(nodes) * levels >= SECAGG_MODULUS_RANGE:
            raise ConfigError(
                f"{len(nodes)} sampled clients * {levels} quantisation levels must be < 2**32 (SecAgg's modulus); "
                "lower secagg.quantization_range."
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
            max_weight=1.0, clipping_range=clipping_range, quantization_range=levels,
            modulus_range=SECAGG_MODULUS_RANGE, timeout=self.timeout_s,
        )
        DefaultWorkflow(fit_workflow=workflow)(grid, context)
        unmasked = getattr(workflow, "unmasked", None)  # None: Flower's own workflow (a test swaps it in) or a halt
        if unmasked is None:
            return SecureSum(None, None, 0, len(nodes), halted="the SecAgg+ protocol halted (too many dropouts for "
                                                                 "the reconstruction threshold); see the log")
        if unmasked.values is None:
            return SecureSum(None, None, unmasked.contributors, len(nodes), halted=unmasked.halted)
        return unmasked


def release_secure_sum(strategy, server_round: int, current: Arrays, secure: SecureSum, *,
                       mechanism: UserLevelGaussian, sensitivity: float) -> tuple[Arrays, ReleasedStatistics, str | None]:
    """DP-FedAvg's release from a secure sum: the run's mechanism adds N(0, (z·sensitivity)^2) to the sum of the
    contributions, divides the update by qN and records the release (``UserLevelGaussian.release_sum``, as on the
    plain path), then the Flower strategy steps (``server.aggregation.strategy_step``).

    ``sensitivity`` is one client's largest quantised contribution (``SecureAggregator.sensitivity``). A round
    without a sum (halted, refused, or nobody sampled) still releases noise: the accountant counts every round.

    Raises:
        ValueError: if ``sensitivity`` is below the contribution's bound (the noise would not cover it).
    """
    total = secure.total if secure.total is not None else {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}
    statistics = secure.statistics if secure.statistics is not None else np.zeros(len(STATISTICS), dtype=np.float64)
    mean, released = mechanism.release_sum(total, statistics, sensitivity=sensitivity)
    arrays, refused = strategy_step(strategy, server_round, current, [(mean, 1.0)])
    return arrays, released, refused
