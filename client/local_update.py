"""One client's round: load the global prior, train on the private log, return only weights and scalar metrics.

Framework-free (numpy in, numpy out) so the Message-API ClientApp and the secure-aggregation client share it.
Nothing derived from single events leaves: the reply is the model and the declared scalar metrics below.

Randomness: the seed the server sends (with the round and the user id) drives dropout, augmentation and plain
shuffling only, which protect nothing. Record-level DP-SGD's noise and Poisson batches come from this device's own
OS entropy (``privacy.randomness.device_generator``), so the server can predict neither; only a synthetic user in a
``privacy.noise=seeded`` simulation derives them from the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from client.device_ledger import DeviceLedger
from model.features.encoding import Examples
from model.network.batched_training import batchable, train_local_batched
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.personalise import fit_personal_bias, personalised
from model.network.training import LocalTrainResult, RecordLevelDP, evaluate, train_local
from privacy.mechanisms import clip_update, dp_sgd_schedule, global_norm
from privacy.randomness import device_generator
from protocol.instructions import TrainInstructions
from protocol.metrics import DECLINED_NO, DECLINED_NO_DATA, DECLINED_RECORD_BUDGET


@dataclass(frozen=True)
class LocalUpdate:
    arrays: dict[str, np.ndarray]
    metrics: dict[str, int | float]

    @property
    def declined(self) -> int:
        return int(self.metrics["declined"])


@lru_cache(maxsize=2)
def _worker_model(config: ModelConfig) -> PreferenceLSTM:
    """One model per worker and architecture, reused across clients (weights are loaded by name each time)."""
    return PreferenceLSTM(config)


def load_model(arrays: dict[str, np.ndarray], config: ModelConfig) -> PreferenceLSTM:
    """The worker's model with ``arrays`` loaded; a mismatch names the offending parameters."""
    model = _worker_model(config)
    expected = model.state_dict()
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ValueError(f"global arrays do not fit the model: missing {missing}, unexpected {extra}.")
    for name, value in arrays.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(f"global array {name!r} has shape {tuple(value.shape)}; the model needs {tuple(expected[name].shape)}.")
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})
    return model


def client_seed(*words: int) -> int:
    """A 32-bit seed from the run seed, the round, the user id (and a stream number)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


@dataclass(frozen=True)
class _Plan:
    """What one user's round will do, decided before training: how many examples, declined or not, DP-SGD or not."""

    num_examples: int
    declined: int
    dp: RecordLevelDP | None
    record_epsilon: float


def _plan(instructions: TrainInstructions, examples: Examples, ledger: DeviceLedger) -> _Plan:
    """Decline without data, or when record-level DP-SGD would take the device's ledger past its budget."""
    record = instructions.record
    n = min(len(examples), instructions.train.max_examples or len(examples))
    declined = DECLINED_NO_DATA if n == 0 else DECLINED_NO
    dp = None
    if record is not None and n > 0:
        sample_rate, steps = dp_sgd_schedule(num_examples=n, batch_size=instructions.train.batch_size,
                                             epochs=instructions.train.epochs)
        after = ledger.rdp_epsilon_after(noise_multiplier=record.noise_multiplier, sample_rate=sample_rate, steps=steps, delta=record.delta)
        if after > record.target_epsilon:
            declined = DECLINED_RECORD_BUDGET
        dp = RecordLevelDP(record.noise_multiplier, record.max_grad_norm)
    record_eps = ledger.rdp_epsilon(delta=record.delta) if record is not None else 0.0
    return _Plan(n, declined, dp, record_eps)


def _declined(global_arrays: dict[str, np.ndarray], plan: _Plan) -> LocalUpdate:
    return LocalUpdate(
        arrays={k: np.asarray(v) for k, v in global_arrays.items()},
        metrics={"num-examples": 0, "train-loss": 0.0, "update-norm": 0.0, "clipped": 0, "declined": plan.declined,
                 "record-epsilon": plan.record_epsilon},
    )


def _generators(instructions: TrainInstructions, user_id: int, plan: _Plan,
                simulated: bool) -> tuple[torch.Generator, torch.Generator | None]:
    """The user's augmentation/shuffling generator (from the server's seed) and, under DP-SGD, the generator of its
    noise and Poisson batches: the device's own entropy, unless a synthetic user is told to reproduce a seeded run."""
    generator = torch.Generator().manual_seed(client_seed(instructions.seed, instructions.round, user_id))
    if plan.dp is None:
        return generator, None
    seeded = simulated and instructions.noise == "seeded"
    return generator, device_generator(client_seed(instructions.seed, instructions.round, user_id, 1) if seeded else None)


def _finish(global_arrays: dict[str, np.ndarray], instructions: TrainInstructions, trained: dict[str, np.ndarray],
            result: LocalTrainResult, ledger: DeviceLedger, plan: _Plan) -> LocalUpdate:
    """Record the DP-SGD run in the device's ledger, clip the update (new - global) under user-level DP, reply."""
    record, record_eps = instructions.record, plan.record_epsilon
    if record is not None and result.sample_rate is not None:
        ledger.record(noise_multiplier=record.noise_multiplier, sample_rate=result.sample_rate, steps=result.steps)
        ledger.save()
        record_eps = ledger.rdp_epsilon(delta=record.delta)
    delta = {k: trained[k] - np.asarray(global_arrays[k], dtype=np.float32) for k in trained}
    clipped, norm, was_clipped = delta, global_norm(delta), False
    if instructions.clipping_norm is not None:
        clipped, norm, was_clipped = clip_update(delta, instructions.clipping_norm)
    arrays = {k: (np.asarray(global_arrays[k], dtype=np.float32) + clipped[k]).astype(np.float32) for k in trained}
    return LocalUpdate(
        arrays=arrays,
        metrics={"num-examples": plan.num_examples, "train-loss": float(result.loss), "update-norm": norm,
                 "clipped": int(was_clipped), "declined": DECLINED_NO, "record-epsilon": record_eps},
    )


def local_update(
    global_arrays: dict[str, np.ndarray],
    instructions: TrainInstructions,
    examples: Examples,
    ledger: DeviceLedger,
    user_id: int,
    *,
    simulated: bool = False,
) -> LocalUpdate:
    """Train on ``examples`` from ``global_arrays`` as instructed; returns the new weights and scalar metrics.

    ``simulated``: this is a synthetic user, which obeys ``instructions.noise == "seeded"``; a real device never does.

    Under user-level DP the update (new - global) is clipped here to ``instructions.clipping_norm``, so the
    reply can be summed by secure aggregation; the server clips again, which changes nothing for an honest client.
    """
    plan = _plan(instructions, examples, ledger)
    if plan.declined:
        return _declined(global_arrays, plan)
    model = load_model(global_arrays, instructions.model)
    torch.manual_seed(client_seed(instructions.seed, instructions.round, user_id))  # dropout draws from torch's global generator
    generator, dp_generator = _generators(instructions, user_id, plan, simulated)
    result = train_local(model, examples, instructions.train, dp=plan.dp, generator=generator, dp_generator=dp_generator)
    trained = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return _finish(global_arrays, instructions, trained, result, ledger, plan)


def local_updates(
    global_arrays: dict[str, np.ndarray],
    instructions: TrainInstructions,
    examples: Sequence[Examples],
    ledgers: Sequence[DeviceLedger],
    user_ids: Sequence[int],
    *,
    simulated: bool = False,
) -> list[LocalUpdate]:
    """``local_update`` for several users (a simulation slot's message), each from ``global_arrays``, trained as one
    batched computation (``model.network.batched_training``) when the model and training allow it, else one by one.

    Each user's update, metrics and ledger are what ``local_update`` gives that user alone (up to float rounding).
    """
    if not len(examples) == len(ledgers) == len(user_ids):
        raise ValueError(f"examples, ledgers and user_ids must be one per user; found {len(examples)}, {len(ledgers)}, "
                         f"{len(user_ids)}.")
    if len(user_ids) < 2 or not batchable(instructions.model):
        return [local_update(global_arrays, instructions, e, ledger, user, simulated=simulated)
                for e, ledger, user in zip(examples, ledgers, user_ids)]
    plans = [_plan(instructions, e, ledger) for e, ledger in zip(examples, ledgers)]
    training = [k for k, plan in enumerate(plans) if not plan.declined]
    updates: list[LocalUpdate | None] = [_declined(global_arrays, plan) if plan.declined else None for plan in plans]
    if training:
        dp = plans[training[0]].dp
        generators = [_generators(instructions, user_ids[k], plans[k], simulated) for k in training]
        trained, results = train_local_batched(
            load_model(global_arrays, instructions.model), [examples[k] for k in training], instructions.train, dp=dp,
            generators=[g for g, _ in generators], dp_generators=None if dp is None else [g for _, g in generators])
        for k, params, result in zip(training, trained, results):
            arrays = {name: value.numpy().copy() for name, value in params.items()}
            updates[k] = _finish(global_arrays, instructions, arrays, result, ledgers[k], plans[k])
    return updates  # type: ignore[return-value]


def local_evaluation(global_arrays: dict[str, np.ndarray], model_config: ModelConfig, examples: Examples,
                     own_earlier: Examples) -> dict[str, int | float]:
    """Score the global prior on this device's own held-out recent events, and the prior personalised on the device
    (``model.network.personalise``: a logit offset fit to ``own_earlier``, the device's training points); the offset itself
    never leaves the device, only the two scores do."""
    if len(examples) == 0:
        return {"num-examples": 0, "eval-top1": 0.0, "eval-nll": 0.0, "personal-top1": 0.0, "personal-nll": 0.0}
    model = load_model(global_arrays, model_config)
    result = evaluate(model, examples)
    personal = evaluate(personalised(model, fit_personal_bias(model, own_earlier)), examples)
    return {"num-examples": result.num_examples, "eval-top1": result.top1, "eval-nll": result.nll,
            "personal-top1": personal.top1, "personal-nll": personal.nll}
