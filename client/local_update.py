"""One client's round: load the global prior, train on the private log, return only its bounded contribution.

Framework-free (numpy in, numpy out) so the Message-API ClientApp and the secure-aggregation client share it.
What leaves is ``privacy.contribution``'s vector: the update (new weights minus the global prior; clipped to the
user-level norm C when user-level DP is on) and three bounded statistics (participated, unclipped, loss), which the
server only ever reports from the noisy sum. A device that declines (no data, its record-level budget, its owner's
caps: ``client.privacy_policy``) sends the all-zero contribution; why it declined stays on the device. Instructions
its owner's policy refuses raise ``PolicyRefusal``, which the ClientApp answers with the rule's reason code. No
example count, loss, norm or epsilon is sent alone.

Randomness: the seed the server sends (with the round and the user id) drives dropout, augmentation and plain
shuffling only, which protect nothing. Record-level DP-SGD's noise and Poisson batches come from this device's own
OS entropy (``privacy.randomness.device_generator``), so the server can predict neither; only a synthetic user in a
``privacy.noise=seeded`` simulation derives them from the seed.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from client.device_ledger import DeviceLedger
from client.privacy_policy import DevicePrivacyPolicy, mechanism_of, run_history
from model.features.examples import Examples
from model.network.batched_training import batchable, train_local_batched
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.personalise import fit_personal_bias, personalised
from model.network.training import LocalTrainResult, evaluate, local_schedule, train_local
from privacy.record_level import RecordLevelDP
from privacy.contribution import LOSS_BOUND, DeviceStatistics, encode_statistics, zero_statistics
from privacy.mechanisms import clip_update
from privacy.randomness import device_generator
from protocol.instructions import TrainInstructions
from protocol.reply_layout import EVAL_SCORES

logger = logging.getLogger(__name__)


class Decline(enum.IntEnum):
    """Why a device sends the all-zero contribution this round. Kept on the device (its log), never sent."""

    NO = 0
    NO_DATA = 1
    RECORD_BUDGET = 2
    OWNER_CAP = 3


@dataclass(frozen=True)
class LocalUpdate:
    """A device's contribution: ``update`` (float32, per model array) and ``statistics`` (``privacy.contribution``),
    and, for the device alone, why it declined."""

    update: dict[str, np.ndarray]
    statistics: np.ndarray
    declined: Decline = Decline.NO


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
    declined: Decline
    dp: RecordLevelDP | None


def _plan(instructions: TrainInstructions, examples: Examples, ledger: DeviceLedger,
          policy: DevicePrivacyPolicy | None) -> _Plan:
    """Refuse instructions the owner's policy forbids (raises ``PolicyRefusal``); decline without data, when the
    owner's caps keep the device out (its rounds today, its user-level budget), or when record-level DP-SGD would
    take the device's ledger past its budget (the server's, or its owner's if lower, over its life and per run)."""
    if policy is not None:
        refusal = policy.refusal(instructions, ledger)
        if refusal is not None:
            raise refusal
        why = policy.sits_out(instructions, ledger, time.time())
        if why is not None:
            logger.info("sitting this round out: %s", why)
            return _Plan(0, Decline.OWNER_CAP, None)
    record = instructions.record
    schedule = local_schedule(examples, instructions.train, dp=record is not None)  # what the trainer will run
    n = len(schedule.examples)
    declined = Decline.NO_DATA if n == 0 else Decline.NO
    dp = None
    if record is not None and n > 0:
        mechanism = dict(noise_multiplier=record.noise_multiplier, sample_rate=schedule.sample_rate,
                         steps=schedule.steps, delta=record.delta)
        budget = record.target_epsilon if policy is None else policy.record_budget(instructions)
        per_run = None if policy is None else policy.max_record_epsilon_per_run
        if ledger.rdp_epsilon_after(**mechanism) > budget or (
                per_run is not None and ledger.run_rdp_epsilon_after(instructions.run_key, **mechanism) > per_run):
            declined = Decline.RECORD_BUDGET
        dp = record
    return _Plan(n, declined, dp)


def declined_update(global_arrays: dict[str, np.ndarray], why: Decline) -> LocalUpdate:
    """The all-zero contribution of a device that does not train this round (``why`` stays on the device)."""
    logger.info("declining this round: %s", why.name.lower().replace("_", " "))
    return LocalUpdate({k: np.zeros(np.shape(v), dtype=np.float32) for k, v in global_arrays.items()},
                       zero_statistics(), why)


def _generators(instructions: TrainInstructions, user_id: int, plan: _Plan,
                simulated: bool) -> tuple[torch.Generator, torch.Generator | None]:
    """The user's augmentation/shuffling generator (from the server's seed) and, under DP-SGD, the generator of its
    noise and Poisson batches: the device's own entropy, unless a synthetic user is told to reproduce a seeded run."""
    generator = torch.Generator().manual_seed(client_seed(instructions.seed, instructions.round, user_id))
    if plan.dp is None:
        return generator, None
    seeded = simulated and instructions.noise == "seeded"
    return generator, device_generator(client_seed(instructions.seed, instructions.round, user_id, 1) if seeded else None)


def _remember(instructions: TrainInstructions, result: LocalTrainResult, ledger: DeviceLedger,
              policy: DevicePrivacyPolicy | None) -> None:
    """Write what this round costs into the device's ledger before anything leaves: the DP-SGD run, and (when the
    owner's caps need it) that the device joined this round of this run."""
    record, changed = instructions.record, False
    if record is not None and result.sample_rate is not None:
        ledger.record_training(instructions.run_key, noise_multiplier=record.noise_multiplier,
                               sample_rate=result.sample_rate, steps=result.steps)
        changed = True
    user = instructions.user_level
    if policy is not None and user is not None and (policy.tracks_participation or user.min_separation):
        ledger.join(instructions.run_key, round_number=instructions.round, mechanism=mechanism_of(instructions),
                    announced=run_history(instructions), now=time.time())
        changed = True
    if changed:
        ledger.save()


def _finish(global_arrays: dict[str, np.ndarray], instructions: TrainInstructions, trained: dict[str, np.ndarray],
            result: LocalTrainResult, ledger: DeviceLedger, policy: DevicePrivacyPolicy | None) -> LocalUpdate:
    """Record the round in the device's ledger, clip the update (new - global) under user-level DP, and bound the
    statistics. The loss is put in only where a mechanism will noise it (user-level DP), or where the run claims no
    privacy at all: under record-level DP alone it would travel uncovered."""
    record, clipping_norm = instructions.record, instructions.clipping_norm
    _remember(instructions, result, ledger, policy)
    update = {k: (trained[k] - np.asarray(global_arrays[k], dtype=np.float32)).astype(np.float32) for k in trained}
    was_clipped = False
    if clipping_norm is not None:
        update, _, was_clipped = clip_update(update, clipping_norm)
    covered = clipping_norm is not None or record is None
    statistics = DeviceStatistics(participated=True, unclipped=not was_clipped, loss=float(result.loss) if covered else None)
    return LocalUpdate(update, encode_statistics(statistics, clipping_norm))


def local_update(
    global_arrays: dict[str, np.ndarray],
    instructions: TrainInstructions,
    examples: Examples,
    ledger: DeviceLedger,
    user_id: int,
    *,
    simulated: bool = False,
    policy: DevicePrivacyPolicy | None = None,
) -> LocalUpdate:
    """Train on ``examples`` from ``global_arrays`` as instructed; returns the device's contribution.

    ``simulated``: this is a synthetic user, which obeys ``instructions.noise == "seeded"``; a real device never does.
    ``policy``: the device owner's (``client.privacy_policy``); None: no owner (a synthetic user).

    Raises:
        PolicyRefusal: if the owner's policy refuses the instructions.

    Under user-level DP the update (new - global) is clipped here to ``instructions.clipping_norm``, so the
    reply can be summed by secure aggregation; the server bounds it again, which changes nothing for an honest
    client.
    """
    plan = _plan(instructions, examples, ledger, policy)
    if plan.declined:
        return declined_update(global_arrays, plan.declined)
    model = load_model(global_arrays, instructions.model)
    torch.manual_seed(client_seed(instructions.seed, instructions.round, user_id))  # dropout draws from torch's global generator
    generator, dp_generator = _generators(instructions, user_id, plan, simulated)
    result = train_local(model, examples, instructions.train, dp=plan.dp, generator=generator, dp_generator=dp_generator)
    trained = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return _finish(global_arrays, instructions, trained, result, ledger, policy)


def local_updates(
    global_arrays: dict[str, np.ndarray],
    instructions: TrainInstructions,
    examples: Sequence[Examples],
    ledgers: Sequence[DeviceLedger],
    user_ids: Sequence[int],
    *,
    simulated: bool = False,
    policies: Sequence[DevicePrivacyPolicy | None] | None = None,
) -> list[LocalUpdate]:
    """``local_update`` for several users (a simulation slot's message), each from ``global_arrays``, trained as one
    batched computation (``model.network.batched_training``) when the model and training allow it, else one by one.

    Each user's contribution and ledger are what ``local_update`` gives that user alone (up to float rounding).
    """
    policies = list(policies) if policies is not None else [None] * len(user_ids)
    if not len(examples) == len(ledgers) == len(user_ids) == len(policies):
        raise ValueError(f"examples, ledgers, user_ids and policies must be one per user; found {len(examples)}, "
                         f"{len(ledgers)}, {len(user_ids)}, {len(policies)}.")
    if len(user_ids) < 2 or not batchable(instructions.model):
        return [local_update(global_arrays, instructions, e, ledger, user, simulated=simulated, policy=policy)
                for e, ledger, user, policy in zip(examples, ledgers, user_ids, policies)]
    plans = [_plan(instructions, e, ledger, policy) for e, ledger, policy in zip(examples, ledgers, policies)]
    training = [k for k, plan in enumerate(plans) if not plan.declined]
    updates: list[LocalUpdate | None] = [declined_update(global_arrays, plan.declined) if plan.declined else None
                                         for plan in plans]
    if training:
        dp = plans[training[0]].dp
        generators = [_generators(instructions, user_ids[k], plans[k], simulated) for k in training]
        trained, results = train_local_batched(
            load_model(global_arrays, instructions.model), [examples[k] for k in training], instructions.train, dp=dp,
            generators=[g for g, _ in generators], dp_generators=None if dp is None else [g for _, g in generators])
        for k, params, result in zip(training, trained, results):
            arrays = {name: value.numpy().copy() for name, value in params.items()}
            updates[k] = _finish(global_arrays, instructions, arrays, result, ledgers[k], policies[k])
    return updates  # type: ignore[return-value]


def local_evaluation(global_arrays: dict[str, np.ndarray], model_config: ModelConfig, examples: Examples,
                     own_earlier: Examples) -> np.ndarray:
    """This device's scores (``protocol.reply_layout.EVAL_SCORES``, each in [0, 1], float32) of the global prior on
    its own held-out recent events, and of the prior personalised on the device (``model.network.personalise``: a
    logit offset fit to ``own_earlier``, the device's training points; the offset itself never leaves the device).
    All zero when the device has nothing to score. The server only ever reports their noisy sum."""
    if len(examples) == 0:
        return np.zeros(len(EVAL_SCORES), dtype=np.float32)
    model = load_model(global_arrays, model_config)
    result = evaluate(model, examples)
    personal = evaluate(personalised(model, fit_personal_bias(model, own_earlier)), examples)
    scores = [1.0, result.top1, min(result.nll, LOSS_BOUND) / LOSS_BOUND,
              personal.top1, min(personal.nll, LOSS_BOUND) / LOSS_BOUND]
    return np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0).astype(np.float32)
