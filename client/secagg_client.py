"""The device's side of secure aggregation: a legacy NumPyClient behind Flower's ``secaggplus_mod``.

Flower 1.42 runs SecAgg+ only on its legacy path, so a round with ``secagg.enabled`` arrives as legacy "fit"
messages carrying a ``secaggplus_configs`` record; ``client.client_app`` hands those to ``secagg_app`` below (built
around the same data source as the ClientApp). The
mod runs the protocol (keys, secret shares, masking) and calls ``SecAggClient.fit`` once, in the stage where the
masked update is built. ``fit`` trains exactly as the non-secure path does (``client.local_update``: same data,
seeds, record-level DP and device ledger) and returns its contribution with weight 1: the update clipped to the
clipping norm C followed by its bounded statistics (``privacy.contribution``), all zero when it declines. The server
gets the sum of these, never one of them. It returns no metrics, since metrics travel next to the masked vector in
the clear.

Under ``privacy=distributed`` the device noises its own contribution before it leaves (``distributed_share``):
rotated, scaled, rounded, its share of discrete Gaussian noise added from its OS entropy, reduced mod m, handed to
the mod as one vector of integers that Flower's quantiser passes through unchanged. It first checks that the
parameters it was sent carry at least the noise the run announced, so a server cannot ask for a smaller share than
the one every device's ledger was told of.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod

from client.data_source import DataSource, device_data
from client.device_ledger import DeviceLedger
from client.local_update import local_update
from privacy.contribution import contribution_sensitivity
from privacy.distributed_dp import DistributedDiscreteGaussian, encode
from privacy.mechanisms import clip_update
from protocol.instructions import DistributedInstructions, TrainInstructions, from_config_items
from protocol.records import ARRAY_NAMES_KEY
from protocol.reply_layout import STATISTICS_ARRAY

class SecureUpdateError(ValueError):
    """A secure-aggregation round this device cannot take part in; the message says why."""


class NotCheckedIn(SecureUpdateError):
    """``privacy=distributed``: the server asks for a share of a round the device's own coin did not join."""

    code = "not-checked-in"


def _global_arrays(parameters: list[np.ndarray], config: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    names = str(config.get(ARRAY_NAMES_KEY, "")).split(",")
    if len(names) != len(parameters):
        raise SecureUpdateError(
            f"the server sent {len(parameters)} arrays but {len(names)} names in '{ARRAY_NAMES_KEY}'; they must match."
        )
    return names, {name: np.asarray(array, dtype=np.float32) for name, array in zip(names, parameters)}


def secure_contribution(instructions: TrainInstructions, global_arrays: dict[str, np.ndarray], context: Context,
                        source: DataSource = device_data) -> dict[str, np.ndarray]:
    """This device's contribution for the round (float64): its update clipped to ``instructions.clipping_norm``, and
    its bounded statistics under ``STATISTICS_ARRAY``; all zero if it declines.

    Raises:
        SecureUpdateError: if the server sent no clipping norm (SecAgg's range is derived from it).
    """
    if instructions.clipping_norm is None:
        raise SecureUpdateError(
            "secure aggregation needs user-level DP: the server sent no clipping norm, so nothing bounds this "
            "device's update within SecAgg's quantisation range."
        )
    data = source(instructions.data, context.node_config, instructions.device_dir)
    ledger = DeviceLedger(data.ledger_path)
    if instructions.distributed is not None and not ledger.checked_in(instructions.run_key, instructions.round):
        raise NotCheckedIn(f"round {instructions.round} asks for this device's share, but its own coin did not join it")
    update = local_update(global_arrays, instructions, data.train, ledger, data.device_id, simulated=data.synthetic,
                          policy=data.policy)
    # local_update clipped the update already; clipping again in float64 removes float32 rounding above C.
    clipped, _, _ = clip_update({k: v.astype(np.float64) for k, v in update.update.items()}, instructions.clipping_norm)
    return {**{k: v.astype(np.float64) for k, v in clipped.items()}, STATISTICS_ARRAY: update.statistics.astype(np.float64)}


def distributed_plan(instructions: TrainInstructions) -> tuple[DistributedDiscreteGaussian, int]:
    """The round's distributed-DP parameters and public rotation seed, checked against what the run announced.

    Raises:
        SecureUpdateError: if the share's sensitivity is not the contribution's bound S at the round's clipping norm,
            or its noise (the survivors' shares over Delta2) is below the announced noise multiplier.
    """
    sent: DistributedInstructions = instructions.distributed  # type: ignore[assignment]
    plan = sent.plan
    bound = contribution_sensitivity(instructions.clipping_norm)  # type: ignore[arg-type]
    if not math.isclose(plan.sensitivity, bound, rel_tol=1e-9):
        raise SecureUpdateError(f"the noise share is sized for sensitivity {plan.sensitivity}, but this round's "
                                f"contribution is bounded by {bound}; refusing to send it.")
    if instructions.user_level is None:
        raise SecureUpdateError("the round asks for a noise share but announces no noise multiplier to hold it to; "
                                "refusing to send it.")
    announced = instructions.user_level.noise_multiplier
    if plan.noise_multiplier < announced * (1.0 - 1e-9):
        raise SecureUpdateError(f"the noise share gives noise multiplier {plan.noise_multiplier:.4f}, below the "
                                f"{announced:.4f} the run announced; refusing to send it.")
    return plan, sent.rotation_seed


def distributed_share(contribution: dict[str, np.ndarray], names: list[str], instructions: TrainInstructions
                      ) -> np.ndarray:
    """This device's noised integer share (float64 values in [-m/2, m/2): value - m/2, which Flower's quantiser
    with range m/2 and m levels maps back to the integer exactly)."""
    plan, seed = distributed_plan(instructions)
    flat = np.concatenate([contribution[name].reshape(-1) for name in [*names, STATISTICS_ARRAY]])
    flat *= min(1.0, plan.sensitivity / max(float(np.linalg.norm(flat)), 1e-300))  # float32 rounding above S, if any
    return encode(flat, plan, seed).astype(np.float64) - plan.modulus // 2


class SecAggClient(NumPyClient):
    """Trains on the device's data (from ``source``) and hands the clipped update to ``secaggplus_mod`` for masking."""

    def __init__(self, context: Context, source: DataSource = device_data) -> None:
        self.context, self.source = context, source

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Returns (the contribution: the clipped update in the server's array order, then the statistics; weight 1;
        no metrics).

        The arrays are float64: Flower quantises in its input's precision, and float32 cannot hold the 2**22
        levels of the default quantisation range exactly (it would add up to half a step of error). They never
        leave the device as floats: the mod sends them quantised and masked.
        """
        names, global_arrays = _global_arrays(parameters, config)
        instructions = from_config_items({k: v for k, v in config.items() if k != ARRAY_NAMES_KEY})
        contribution = secure_contribution(instructions, global_arrays, self.context, self.source)
        if instructions.distributed is not None:
            return [distributed_share(contribution, names, instructions)], 1, {}
        return [contribution[name] for name in [*names, STATISTICS_ARRAY]], 1, {}


def secagg_app(source: DataSource) -> ClientApp:
    """The legacy ClientApp that ``client.client_app`` delegates SecAgg+ messages to, its nodes' data from ``source``."""
    return ClientApp(client_fn=lambda context: SecAggClient(context, source).to_client(), mods=[secaggplus_mod])
