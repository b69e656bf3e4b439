"""The device's side of secure aggregation: a legacy NumPyClient behind Flower's ``secaggplus_mod``.

Flower 1.42 runs SecAgg+ only on its legacy path, so a round with ``secagg.enabled`` arrives as legacy "fit"
messages carrying a ``secaggplus_configs`` record; ``client.client_app`` hands those to ``secagg_app`` below (built
around the same data source as the ClientApp). The
mod runs the protocol (keys, secret shares, masking) and calls ``SecAggClient.fit`` once, in the stage where the
masked update is built. ``fit`` trains exactly as the non-secure path does (``client.local_update``: same data,
seeds, record-level DP and device ledger) and returns its update clipped to the clipping norm C with weight 1:
the server gets the sum of these, never one of them. It returns no per-client metrics, since metrics travel next
to the masked vector in the clear.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod

from client.device_data import DataSource, device_data
from client.device_ledger import DeviceLedger
from client.local_update import local_update
from privacy.mechanisms import clip_update
from protocol.instructions import TrainInstructions, from_config_items
from protocol.records import ARRAY_NAMES_KEY

class SecureUpdateError(ValueError):
    """A secure-aggregation round this device cannot take part in; the message says why."""


def _global_arrays(parameters: list[np.ndarray], config: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    names = str(config.get(ARRAY_NAMES_KEY, "")).split(",")
    if len(names) != len(parameters):
        raise SecureUpdateError(
            f"the server sent {len(parameters)} arrays but {len(names)} names in '{ARRAY_NAMES_KEY}'; they must match."
        )
    return names, {name: np.asarray(array, dtype=np.float32) for name, array in zip(names, parameters)}


def clipped_delta(instructions: TrainInstructions, global_arrays: dict[str, np.ndarray], context: Context,
                  source: DataSource = device_data) -> dict[str, np.ndarray]:
    """This device's update for the round, clipped to ``instructions.clipping_norm`` (zero if it declines).

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
    update = local_update(global_arrays, instructions, data.train, ledger, data.device_id, simulated=data.synthetic)
    delta = {k: update.arrays[k].astype(np.float64) - global_arrays[k] for k in global_arrays}
    # local_update clipped the update already; clipping again in float64 removes float32 rounding above C.
    clipped, _, _ = clip_update(delta, instructions.clipping_norm)
    if update.declined:  # a declining device still takes part in the protocol, with nothing to add
        return {k: np.zeros_like(v) for k, v in clipped.items()}
    return clipped


class SecAggClient(NumPyClient):
    """Trains on the device's data (from ``source``) and hands the clipped update to ``secaggplus_mod`` for masking."""

    def __init__(self, context: Context, source: DataSource = device_data) -> None:
        self.context, self.source = context, source

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Returns (clipped update in the server's array order, weight 1, no metrics).

        The arrays are float64: Flower quantises in its input's precision, and float32 cannot hold the 2**22
        levels of the default quantisation range exactly (it would add up to half a step of error). They never
        leave the device as floats: the mod sends them quantised and masked.
        """
        names, global_arrays = _global_arrays(parameters, config)
        instructions = from_config_items({k: v for k, v in config.items() if k != ARRAY_NAMES_KEY})
        delta = clipped_delta(instructions, global_arrays, self.context, self.source)
        return [delta[name].astype(np.float64) for name in names], 1, {}


def secagg_app(source: DataSource) -> ClientApp:
    """The legacy ClientApp that ``client.client_app`` delegates SecAgg+ messages to, its nodes' data from ``source``."""
    return ClientApp(client_fn=lambda context: SecAggClient(context, source).to_client(), mods=[secaggplus_mod])
