"""One DP-FedAvg round, whatever carries the messages: the Flower grid or a call in this process.

A round samples every candidate independently with probability q (Poisson sampling), sends the round's
instructions and the global arrays through a ``Transport``, folds each user's judged contribution into the run's
user-level mechanism as it arrives (``server.aggregation.RoundSum``: bound, sum, noise, divide by qN, record; or no
privacy), and lets the Flower strategy take its step. The round's statistics (participants, unclipped share, loss)
are read from the release, never from one reply. ``server.federation.FederatedRun`` plays it over the grid
(``server.grid_transport``); ``simulations.federation.inprocess`` plays it by calling the client's ``local_update``.
Under SecAgg+ the nodes' updates are summed before the server sees them, so the round releases that sum instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
from flwr.serverapp.strategy import FedAvg

from privacy.contribution import STATISTICS
from privacy.distributed_dp import decode
from privacy.banded_release import BandedMatrixGaussian
from privacy.distributed_release import DistributedRelease
from privacy.user_level import UserLevelMechanism
from protocol.instructions import (
    AttackInstructions,
    DataInstructions,
    DistributedInstructions,
    TrainInstructions,
    UserLevelInstructions,
    flat_items,
)
from server.aggregation import RoundSum, strategy_step
from server.grid_transport import GridTransport
from server.replies import Verdict
from server.run_state import RoundOutcome
from server.secagg import SecureAggregator, SecureSum, release_secure_sum
from server.settings import RunSettings, bands_of

Arrays = dict[str, np.ndarray]


class Transport(Protocol):
    """How a round reaches its users and brings their replies back."""

    def candidates(self) -> Sequence[int]:
        """Who is sampled from: the users, or (a device per user) the connected nodes."""
        ...

    def reachable(self, chosen: list[int]) -> list[int]:
        """Those of the sampled ``chosen`` the round can send to now (a node still busy with an earlier message
        is skipped)."""
        ...

    def train(self, server_round: int, arrays: Arrays, instructions: TrainInstructions,
              users: list[int]) -> Iterator[tuple[int, Verdict]]:
        """Each user's judged train reply, as it arrives; a user that never answers is not yielded."""
        ...


def poisson_sample(rng: np.random.Generator, candidates: Sequence[int], sample_rate: float) -> list[int]:
    """Every candidate independently with probability ``sample_rate`` (one uniform draw per candidate, in order)."""
    return [int(c) for c, u in zip(candidates, rng.random(len(candidates))) if u < sample_rate]


def band_ranking(key: bytes, candidates: Sequence[int]) -> list[int]:
    """The candidates ranked by a hash keyed with ``key`` (drawn once a run): the order ``band_sample`` deals from."""
    return sorted((int(c) for c in candidates),
                  key=lambda c: hashlib.blake2b(c.to_bytes(8, "little", signed=True), key=key, digest_size=8).digest())


def band_sample(ranked: list[int], server_round: int, bands: int) -> list[int]:
    """Round ``server_round``'s group under ``privacy.mechanism=bandmf``: every ``bands``-th of ``ranked``
    (``band_ranking``) from position (round - 1) mod ``bands``. While the candidates stay the same, each joins every
    ``bands``-th round, as the banded factor assumes; a device whose group shifts (nodes come and go) is held to the
    separation by its own ledger, not by this."""
    return ranked[(server_round - 1) % bands::bands]


def train_instructions(run: RunSettings, server_round: int, *, seed: int, data: DataInstructions,
                       device_dir: str | None = None, attack: AttackInstructions | None = None,
                       clipping_norm: float | None = None, run_key: str = "", noise_multiplier: float | None = None,
                       evaluation_rate: float | None = None) -> TrainInstructions:
    """What every sampled client is told to do this round: the model, the local training, and its privacy part
    (the user-level clipping norm: ``clipping_norm``, the mechanism's current one, else ``privacy.clipping_norm``;
    record-level DP-SGD's parameters; the noise source), and what the run is, for the devices' own ledgers and
    policies: its key, its planned rounds and the user-level mechanism it announces (``noise_multiplier``, the
    sampling rate, delta, ``evaluation_rate``)."""
    p = run.privacy
    record = p.record if p.record_level else None
    user_level = None
    if p.user_level and noise_multiplier is not None:
        if p.banded:  # no amplification, and the separation each device holds itself to
            user_level = UserLevelInstructions(noise_multiplier, 1.0, p.delta, evaluation_rate or 0.0, bands_of(run))
        else:
            user_level = UserLevelInstructions(noise_multiplier, run.simulation.sample_rate, p.delta, evaluation_rate or 0.0)
    return TrainInstructions(
        round=server_round, seed=seed, model=run.model, train=run.train, data=data,
        clipping_norm=(clipping_norm or p.clipping_norm) if p.user_level else None, record=record, device_dir=device_dir,
        attack=attack, noise=p.noise, run_key=run_key, planned_rounds=run.simulation.rounds, user_level=user_level,
    )


class FederatedRound:
    """The round both drivers play: sample, send, judge, aggregate through the run's mechanism, count.

    Args:
        strategy: the Flower strategy taking the server step.
        mechanism: the run's one user-level mechanism (``privacy.user_level``), or its no-privacy stand-in.
        sampling_rng: who is sampled; the caller keys it (OS entropy in a deployment, the seed in a simulation).
        sample_rate: q.
        on_reply: told (round, replies so far, users sent to) as replies arrive (a progress line).
    """

    def __init__(self, strategy: FedAvg, mechanism: UserLevelMechanism, *, sampling_rng: np.random.Generator,
                 sample_rate: float, on_reply: Callable[[int, int, int], None] | None = None) -> None:
        self.strategy, self.mechanism = strategy, mechanism
        self.sampling_rng, self.sample_rate = sampling_rng, sample_rate
        self.on_reply = on_reply
        self._group_key: bytes | None = None
        self._ranking: tuple[tuple[int, ...], list[int]] = ((), [])  # (the candidates, their ranking): hashed once

    def sample(self, server_round: int, candidates: Sequence[int]) -> list[int]:
        """Who is sent the round: Poisson at q, or under the banded mechanism the round's group (``band_sample``,
        keyed once from the sampling stream)."""
        if not isinstance(self.mechanism, BandedMatrixGaussian):
            return poisson_sample(self.sampling_rng, candidates, self.sample_rate)
        if self._group_key is None:
            self._group_key = self.sampling_rng.bytes(16)
        if tuple(candidates) != self._ranking[0]:  # the same nodes round after round: rank them once
            self._ranking = (tuple(candidates), band_ranking(self._group_key, candidates))
        return band_sample(self._ranking[1], server_round, self.mechanism.bands)

    def play(self, server_round: int, arrays: Arrays, instructions: TrainInstructions,
             transport: Transport) -> RoundOutcome:
        """One round from the global ``arrays``; each contribution is folded into the round's sum as it arrives."""
        chosen = self.sample(server_round, transport.candidates())
        users = transport.reachable(chosen)
        if isinstance(self.mechanism, DistributedRelease):  # in one process: the transport adds the shares itself
            share = self._share()
            return self._distributed_outcome(server_round, arrays, chosen, users, share, lambda: transport.sum_shares(  # type: ignore[attr-defined]
                arrays, dataclasses.replace(instructions, distributed=share), users, share.plan.modulus))
        round_sum, counts, problems = RoundSum(arrays, self.mechanism), Counter[str](), []
        for owner, verdict in transport.train(server_round, arrays, instructions, users):
            if verdict.kind == "contribution" and not round_sum.add(verdict.update, verdict.statistics):  # type: ignore[arg-type]
                verdict = Verdict("rejected", "the bounded contribution is not finite")
            counts[verdict.kind] += 1
            if verdict.kind in ("failed", "rejected"):
                problems.append((owner, verdict.reason))
            if self.on_reply is not None:
                self.on_reply(server_round, sum(counts.values()), len(users))
        released, statistics, refused = round_sum.release(self.strategy, server_round)
        return RoundOutcome(
            arrays=released, statistics=statistics, replies=round_sum.count, sampled=len(chosen),
            skipped_busy=len(chosen) - len(users), failed=counts["failed"] + len(users) - sum(counts.values()),
            rejected=counts["rejected"], problems=problems, halted=refused, clipping_norm=instructions.clipping_norm,
        )

    def play_secure(self, server_round: int, arrays: Arrays, config: dict, transport: GridTransport,
                    secure: SecureAggregator) -> RoundOutcome:
        """The round under SecAgg+: the nodes' bounded contributions are summed before the server sees them; the
        mechanism noises that sum (``server.secagg.release_secure_sum``), or under ``privacy=distributed`` the
        devices noised their shares and the server decodes the noisy sum (``play_distributed``). ``config`` is the
        round's instructions as config items."""
        if isinstance(self.mechanism, DistributedRelease):
            return self.play_distributed(server_round, arrays, config, transport, secure)
        chosen = self.sample(server_round, transport.candidates())
        nodes = transport.reachable(chosen)
        clipping_norm = self.mechanism.clipping_norm
        total = secure.sum_updates(transport.grid, nodes, arrays, config, clipping_norm=clipping_norm)  # type: ignore[arg-type]
        sensitivity = secure.sensitivity(clipping_norm, sum(int(np.asarray(a).size) for a in arrays.values()) + len(STATISTICS))  # type: ignore[arg-type]
        released, statistics, refused = release_secure_sum(self.strategy, server_round, arrays, total,
                                                           mechanism=self.mechanism, sensitivity=sensitivity)  # type: ignore[arg-type]
        return RoundOutcome(arrays=released, statistics=statistics, replies=total.contributors, sampled=len(chosen),
                            skipped_busy=len(chosen) - len(nodes), failed=total.dropped, halted=total.halted or refused,
                            clipping_norm=clipping_norm)

    def play_distributed(self, server_round: int, arrays: Arrays, config: dict, transport: GridTransport,
                         secure: SecureAggregator) -> RoundOutcome:
        """``privacy=distributed`` over the grid. The server samples nobody: every reachable node is asked to check
        in and joins by its own OS-entropy coin at the announced rate (random check-ins, Balle et al. 2020), so the
        amplification by sampling no longer rests on the server's honesty and the server cannot single a device out;
        a device refuses to send a share for a round its coin did not join. SecAgg+ then sums the joined nodes'
        noised integer shares mod m."""
        share = self._share()
        items = {**config, **{f"distributed.{k}": v for k, v in flat_items(share).items()}}
        nodes = transport.reachable(list(transport.candidates()))
        joined = transport.check_in(server_round, items, nodes)
        return self._distributed_outcome(server_round, arrays, joined, joined, share, lambda: secure.sum_shares(
            transport.grid, joined, arrays, items, modulus=share.plan.modulus))

    def _share(self) -> DistributedInstructions:
        """The round's public share parameters, with a fresh public rotation seed."""
        plan = self.mechanism.plan  # type: ignore[union-attr]
        return DistributedInstructions(plan, secrets.randbits(62))

    def _distributed_outcome(self, server_round: int, arrays: Arrays, chosen: list[int], nodes: list[int],
                             share: DistributedInstructions,
                             sum_shares: Callable[[], tuple[np.ndarray | None, SecureSum]]) -> RoundOutcome:
        """``share`` (the round's public parameters, ``_share()``) went to ``nodes``; ``sum_shares`` returns the sum
        mod m of their noised shares; the server decodes it and releases it if at least the planned minimum of
        survivors' shares is in it (``privacy.distributed_release``)."""
        mechanism: DistributedRelease = self.mechanism  # type: ignore[assignment]
        plan = mechanism.plan
        total, statistics = None, None
        if len(nodes) > plan.max_contributors:
            counts = SecureSum(None, None, 0, len(nodes), halted=f"{len(nodes)} nodes sampled, more than the "
                               f"{plan.max_contributors} the modulus is sized for; the round releases nothing")
        else:
            noisy, counts = sum_shares()
            if noisy is not None and counts.contributors < plan.min_survivors:
                counts.halted = (f"{counts.contributors} surviving shares, fewer than the {plan.min_survivors} the "
                                 "noise is sized for; the round releases nothing")
            elif noisy is not None:
                flat = decode(noisy, plan, share.rotation_seed)
                total, offset = {}, 0
                for name, array in arrays.items():
                    total[name] = flat[offset: offset + array.size].reshape(array.shape)
                    offset += array.size
                statistics = flat[offset:]
        mean, released = mechanism.release(total, statistics, arrays)
        next_arrays, refused = strategy_step(self.strategy, server_round, arrays, [(mean, 1.0)])
        return RoundOutcome(arrays=next_arrays, statistics=released, replies=counts.contributors, sampled=len(chosen),
                            skipped_busy=len(chosen) - len(nodes), failed=counts.dropped,
                            halted=counts.halted or refused, clipping_norm=mechanism.clipping_norm)
