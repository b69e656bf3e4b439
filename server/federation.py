"""The federated training run: rounds of Poisson-sampled clients, aggregation, privacy accounting, checkpoints.

Each round: check that the next release fits the user-level budget (stop before it if not); sample every node
independently with probability q; send the global prior and the round's instructions; collect replies within the
timeout (errors, time-outs and malformed replies are counted, never aggregated); aggregate; record the release in
the ledger; score on held-out users; checkpoint atomically. Outputs go to one directory.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client.instructions import (
    DataInstructions,
    RecordLevelInstructions,
    TrainInstructions,
    to_config_items,
)
from client.records import to_array_record
from model.encoding import Examples
from model.networks import PreferenceLSTM
from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier
from privacy.randomness import SEEDED_WARNING, sampling_generator
from privacy.user_level import NoUserLevelPrivacy, UserLevelMechanism
from server import evaluation
from server.addressing import Addressing
from server.aggregation import (
    RoundSum,
    load_strategy_state,
    make_strategy,
    strategy_state,
    user_level_mechanism,
)
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.grid_io import RoundChannel, wait_for_nodes, warm_up
from server.privacy_report import privacy_report
from server.replies import ClientUpdate
from server.report import plot_rounds, write_json
from server.run_state import RoundOutcome, RunState
from server.secagg import SecureAggregator, add_noise_and_step
from server.settings import ConfigError, RunSettings


class Progress:
    """Round progress on the terminal: a live line while clients reply (on a TTY), one line per round; each line is
    also appended to ``log_file`` (the run's run.log) when given."""

    def __init__(self, stream=sys.stdout, log_file: Path | None = None) -> None:
        self.stream, self.log_file = stream, log_file
        self.live = stream.isatty()

    def clients(self, server_round: int, done: int, total: int) -> None:
        if self.live:
            self.stream.write(f"\r  round {server_round}: {done}/{total} clients replied ")
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as log:
                log.write(text + "\n")


def data_instructions(settings: RunSettings) -> DataInstructions:
    p = settings.population
    return DataInstructions(
        population_seed=p.seed, population_size=p.num_users + p.eval_users, population_days=p.days,
        window=p.window, eval_fraction=p.client_eval_fraction, world=p.world,
    )


class FederatedRun:
    """One run of federated training over the nodes of a Flower grid."""

    def __init__(self, settings: RunSettings, output_dir: Path, progress: Progress | None = None) -> None:
        self.settings = settings
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.output_dir / "checkpoint.pt"
        self.progress = progress or Progress(log_file=self.output_dir / "run.log")
        self.data = data_instructions(settings)
        self.strategy = make_strategy(settings.strategy)
        self.addressing = Addressing(slots=bool(settings.simulation.nodes), users_per_message=settings.simulation.users_per_message)
        # Who is sampled: OS entropy in a deployment (amplification by subsampling assumes nobody knows who was
        # drawn); the seed in a simulation. Re-keyed by the round a resumed run starts at (never checkpointed).
        self.sampling_rng = sampling_generator(settings.deployment.engine == "real", [settings.seed, 0])
        self.mechanism: UserLevelMechanism = NoUserLevelPrivacy()  # the run's own, once N is known (``run``)
        self.model = PreferenceLSTM(settings.model)
        self.device_dir = str(self.output_dir / "devices")
        self.stop_reason: str | None = None
        self.secure: SecureAggregator | None = None
        if settings.secagg.enabled:
            self.secure = SecureAggregator(settings.secagg, clipping_norm=settings.privacy.clipping_norm,  # type: ignore[arg-type]
                                           timeout_s=settings.simulation.round_timeout_s)

    # ----------------------------------------------------------------------------------------------- set-up
    def _fresh_state(self) -> RunState:
        torch.manual_seed(self.settings.seed)
        arrays = {k: v.detach().numpy().copy() for k, v in PreferenceLSTM(self.settings.model).state_dict().items()}
        z = None
        privacy, sim = self.settings.privacy, self.settings.simulation
        if privacy.user_level:
            started = time.perf_counter()
            self.progress.line(f"user-level DP: calibrating the noise multiplier for ε={privacy.target_epsilon} over "
                               f"{sim.rounds} rounds (Opacus' search; up to a minute) ...")
            z = calibrate_noise_multiplier(
                target_epsilon=privacy.target_epsilon, delta=privacy.delta, sample_rate=sim.sample_rate,  # type: ignore[arg-type]
                steps=sim.rounds, accountant=privacy.accountant,
            )
            self.progress.line(
                f"user-level DP: noise multiplier z={z:.4f} calibrated for ε={privacy.target_epsilon} δ={privacy.delta:g} "
                f"over {sim.rounds} rounds at q={sim.sample_rate} ({privacy.accountant}, {time.perf_counter() - started:.1f} s)"
            )
        return RunState(round=0, arrays=arrays, ledger=PrivacyLedger(), noise_multiplier=z)

    def _resumed_state(self) -> RunState:
        checkpoint = load_checkpoint(self.settings.checkpoint)  # type: ignore[arg-type]
        before, now = checkpoint.settings.get("privacy", {}), dataclasses.asdict(self.settings.privacy)
        for key in ("mode", "delta", "clipping_norm", "accountant"):
            if before.get(key) != now.get(key):
                raise ConfigError(
                    f"resume: privacy.{key} was {before.get(key)!r} in the checkpoint but is {now.get(key)!r} now; "
                    "a run continues only under the privacy settings it was accounted with."
                )
        ledger = PrivacyLedger()
        ledger.load_state_dict(checkpoint.ledger)
        load_strategy_state(self.strategy, checkpoint.strategy_state)
        self.sampling_rng = sampling_generator(self.settings.deployment.engine == "real",
                                               [self.settings.seed, 0, checkpoint.round])
        self.device_dir = checkpoint.device_dir
        return RunState(
            round=checkpoint.round, arrays=checkpoint.arrays, ledger=ledger,
            noise_multiplier=checkpoint.noise_multiplier, rounds=list(checkpoint.rounds),
            record_epsilon=dict(checkpoint.record_epsilon),
        )

    def _instructions(self, server_round: int) -> TrainInstructions:
        p = self.settings.privacy
        record = None
        if p.record_level and p.record is not None:
            record = RecordLevelInstructions(p.record.noise_multiplier, p.record.max_grad_norm, p.record.target_epsilon, p.record.delta)
        return TrainInstructions(
            round=server_round, seed=self.settings.seed, model=self.settings.model, train=self.settings.train,
            data=self.data, clipping_norm=p.clipping_norm if p.user_level else None, record=record,
            device_dir=self.device_dir, attack=self.settings.simulation.attack.instructions(), noise=p.noise,
        )

    # ------------------------------------------------------------------------------------------------ rounds
    def run(self, grid: Grid) -> dict:
        """Train for the configured rounds (or until the budget stops it); returns the metrics written."""
        sim = self.settings.simulation
        state = self._resumed_state() if self.settings.resume else self._fresh_state()
        population, deployment = self.settings.population, self.settings.deployment
        held_out = None
        if deployment.server_eval:
            held_out = evaluation.held_out_examples(
                self.data, range(population.num_users, self.data.population_size), population.eval_points_per_user
            )
        node_ids = wait_for_nodes(grid, deployment.min_nodes or self.settings.simulated_nodes, timeout_s=sim.node_wait_s)
        # Seeded noise is keyed by the round the run starts at, so a resumed run never replays round 1's draws.
        noise_seed = [self.settings.seed, 1] + ([state.round] if state.round else [])
        self.mechanism = user_level_mechanism(
            self.settings, noise_multiplier=state.noise_multiplier, ledger=state.ledger, sample_rate=sim.sample_rate,
            population=self._population_size(node_ids), noise_seed=noise_seed,
        )
        if self.settings.resume:
            epsilon = self.mechanism.epsilon()
            self.progress.line(f"resumed from {self.settings.checkpoint}: round {state.round} done"
                               + (f", user-level ε so far {epsilon:.3f}" if epsilon is not None else ""))
        if self.settings.privacy.noise == "seeded":
            self.progress.line(f"privacy.noise=seeded: {SEEDED_WARNING}")
        if deployment.warm_up_nodes:
            warm_up(grid, node_ids, deployment.warm_up_nodes)
        channel = RoundChannel(grid, ttl_s=3 * sim.round_timeout_s)
        mode = "secure aggregation (SecAgg+)" if self.secure is not None else "plain aggregation"
        nodes = f"{len(node_ids)} nodes connected"
        if sim.nodes:
            nodes = f"{len(node_ids)} node slots connected, up to {sim.users_per_message} sampled user(s) per message"
        self.progress.line(f"{nodes}; {mode}; outputs in {self.output_dir}")
        self.initial_scores = self._score(state.arrays, held_out)
        if held_out is not None:
            self.progress.line(f"round {state.round}: held-out top-1 {self.initial_scores['top1']:.3f}, NLL {self.initial_scores['nll']:.3f}")
        started = time.perf_counter()
        while state.round < sim.rounds:
            if not self._budget_allows_next_round(state):
                break
            self._run_round(state, state.round + 1, node_ids, channel, held_out)
        metrics = self._finish(state, node_ids, channel, held_out, time.perf_counter() - started)
        return metrics

    def _budget_allows_next_round(self, state: RunState) -> bool:
        after = self.mechanism.epsilon_if_next_passes_budget()
        if after is None:
            return True
        self.stop_reason = (
            f"stopped before round {state.round + 1}: it would bring user-level ε to {after:.3f}, "
            f"past the budget privacy.target_epsilon={self.settings.privacy.target_epsilon}"
        )
        self.progress.line(self.stop_reason)
        return False

    def _run_round(self, state: RunState, server_round: int, node_ids: list[int], channel: RoundChannel, held_out: Examples | None) -> None:
        sim, p = self.settings.simulation, self.settings.privacy
        started = time.perf_counter()
        busy = channel.busy_nodes()
        if sim.nodes:
            # Simulation slots: sample *users* (Poisson over the whole population); the free slots play them in
            # turn, the user id in the message. Memory then follows the slots, not the population or the round.
            draws = self.sampling_rng.random(self.settings.population.num_users)
            chosen = [int(u) for u in np.nonzero(draws < sim.sample_rate)[0]]
            sampled: list[tuple[int | None, int]] = [(None, u) for u in chosen]
            slots = [n for n in node_ids if n not in busy]
        else:
            chosen = [n for n, u in zip(node_ids, self.sampling_rng.random(len(node_ids))) if u < sim.sample_rate]
            sampled = [(n, n) for n in chosen if n not in busy]
            slots = []
        if self.secure is not None:
            outcome = self._secure_round(state, server_round, [n for n, _ in sampled], channel)
        else:
            outcome = self._plain_round(state, server_round, sampled, slots, channel)
        state.arrays = outcome.arrays
        scores = self._score(state.arrays, held_out)
        record_eps = list(state.record_epsilon.values())
        row = {
            "round": server_round,
            "train_loss": outcome.train_loss,
            "eval_top1": scores["top1"],
            "eval_nll": scores["nll"],
            "epsilon": self.mechanism.epsilon(),
            "clients": outcome.clients,
            "sampled": len(chosen),
            "skipped_busy": len(chosen) - len(sampled),
            "failed": outcome.failed,
            "rejected": outcome.rejected,
            "declined": outcome.declined,
            "clipped_fraction": outcome.stats.clipped_fraction,
            "mean_update_norm": outcome.stats.mean_update_norm,
            "record_epsilon_max": max(record_eps) if p.record_level and record_eps else None,
            "record_epsilon_median": statistics.median(record_eps) if p.record_level and record_eps else None,
            "seconds": time.perf_counter() - started,
        }
        if self.secure is not None:
            row["secagg_halted"] = outcome.halted
        state.rounds.append(row)
        state.round = server_round
        for node, reason in outcome.problems[:3]:  # slot mode names the user the slot played
            self.progress.line(f"  {'user' if sim.nodes else 'node'} {node}: {reason.strip().splitlines()[-1] if reason.strip() else reason}")
        if outcome.halted:
            self.progress.line(f"  secure aggregation: {outcome.halted}; this round releases noise only")
        self._checkpoint(state)
        eps_text = f" · ε {row['epsilon']:.2f}/{p.target_epsilon:g}" if row["epsilon"] is not None else ""
        rec_text = f" · record ε max {row['record_epsilon_max']:.2f}" if row["record_epsilon_max"] is not None else ""
        loss_text = f"{outcome.train_loss:.3f}" if outcome.train_loss is not None else "-"
        eval_text = f" · held-out top-1 {scores['top1']:.3f}" if held_out is not None else ""
        self.progress.line(
            f"round {server_round}/{sim.rounds} · {outcome.clients}/{len(chosen)} clients"
            f" ({row['failed']} failed, {row['rejected']} rejected, {row['declined']} declined)"
            f" · loss {loss_text}{eval_text}{eps_text}{rec_text} · {row['seconds']:.1f} s"
        )

    def _population_size(self, node_ids: list[int]) -> int:
        """N of the sampling rate: the simulated users in slot mode, otherwise the connected nodes."""
        return self.settings.population.num_users if self.settings.simulation.nodes else len(node_ids)

    def _plain_round(self, state: RunState, server_round: int, sampled: list[tuple[int | None, int]], slots: list[int],
                     channel: RoundChannel) -> RoundOutcome:
        """Send, check each reply as it arrives and fold it into the round's sum; then noise and step on the server.

        ``sampled`` holds (node, user) pairs: a node of its own per user, or (slot mode) None and the users the
        free ``slots`` play in turn, several per message. Each user's update is checked and folded in on its own
        as replies arrive, so the server never holds a whole round of replies (see ``server.aggregation.RoundSum``).
        """
        sim = self.settings.simulation
        content = RecordDict({
            "arrays": to_array_record(state.arrays),
            "config": ConfigRecord(to_config_items(self._instructions(server_round))),
        })

        def message(node: int, users: tuple[int, ...]) -> Message:
            return Message(self.addressing.content(content, users), dst_node_id=node, message_type=MessageType.TRAIN,
                           group_id=str(server_round), ttl=3 * sim.round_timeout_s)

        max_examples = self.settings.train.max_examples or None
        round_sum, counts, problems = RoundSum(state.arrays, self.mechanism), Counter[str](), []
        loss_sum = examples = 0.0
        jobs = self.addressing.jobs(sampled, len(slots))
        for users, reply in channel.dispatch(jobs, slots, message, timeout_s=sim.round_timeout_s):
            verdicts = self.addressing.train_verdicts(users, reply, state.arrays, max_examples=max_examples)
            for owner, verdict in zip(users, verdicts):  # owner: the user (slot mode) or its node
                counts[verdict.kind] += 1
                if verdict.kind in ("failed", "rejected"):
                    problems.append((owner, verdict.reason))
                if verdict.kind != "update":
                    continue
                metrics = verdict.metrics  # type: ignore[assignment]
                round_sum.add(ClientUpdate(owner, verdict.arrays, metrics))  # type: ignore[arg-type]
                state.record_epsilon[owner] = float(metrics["record-epsilon"])
                loss_sum += metrics["train-loss"] * metrics["num-examples"]
                examples += metrics["num-examples"]
            self.progress.clients(server_round, sum(counts.values()), len(sampled))
        arrays, stats = round_sum.release(self.strategy, server_round)
        unanswered = len(sampled) - sum(counts.values())
        return RoundOutcome(
            arrays=arrays, stats=stats, clients=round_sum.count, failed=counts["failed"] + unanswered,
            rejected=counts["rejected"], declined=counts["declined"], train_loss=loss_sum / examples if examples else None,
            problems=problems,
        )

    def _secure_round(self, state: RunState, server_round: int, sampled: list[int], channel: RoundChannel) -> RoundOutcome:
        """SecAgg+ sums the clients' updates (clipped on the device); the server sees only the sum, adds noise."""
        config = to_config_items(self._instructions(server_round))
        secure = self.secure.sum_updates(channel.grid, sampled, state.arrays, config)  # type: ignore[union-attr]
        sensitivity = self.secure.sensitivity(self._num_coordinates(state))  # type: ignore[union-attr]
        arrays, stats = add_noise_and_step(self.strategy, server_round, state.arrays, secure,
                                           mechanism=self.mechanism, sensitivity=sensitivity)  # type: ignore[arg-type]
        return RoundOutcome(arrays=arrays, stats=stats, clients=secure.contributors, failed=secure.dropped,
                            halted=secure.halted)

    @staticmethod
    def _num_coordinates(state: RunState) -> int:
        return sum(int(np.asarray(a).size) for a in state.arrays.values())

    def _score(self, arrays: dict[str, np.ndarray], held_out: Examples | None) -> dict[str, float]:
        if held_out is None:  # deployment.server_eval=false: a real server holds no users' data to score on
            return {"top1": float("nan"), "nll": float("nan")}
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        return evaluation.score(self.model, held_out)

    def _checkpoint(self, state: RunState) -> None:
        save_checkpoint(self.checkpoint_path, Checkpoint(
            round=state.round, arrays=state.arrays, ledger=state.ledger.state_dict(),
            noise_multiplier=state.noise_multiplier, strategy_state=strategy_state(self.strategy),
            device_dir=self.device_dir, record_epsilon=state.record_epsilon,
            rounds=state.rounds, settings=dataclasses.asdict(self.settings),
        ))

    # ------------------------------------------------------------------------------------------------ report
    def _federated_evaluation(self, state: RunState, node_ids: list[int], channel: RoundChannel) -> dict:
        """Clients score the final model on their own held-out recent events; malformed replies are counted."""
        sim, users = self.settings.simulation, self.settings.population.num_users
        busy = channel.busy_nodes()
        if sim.nodes:  # the slots score sampled users in turn
            picked = self.sampling_rng.choice(users, size=min(sim.final_eval_clients, users), replace=False)
            sampled: list[tuple[int | None, int]] = [(None, int(u)) for u in picked]
            slots = [n for n in node_ids if n not in busy]
        else:  # node ids are unsigned 64-bit: sample positions, never the ids themselves, through numpy
            picked = self.sampling_rng.choice(len(node_ids), size=min(sim.final_eval_clients, len(node_ids)), replace=False)
            sampled, slots = [(node_ids[i], node_ids[i]) for i in picked if node_ids[i] not in busy], []
        jobs = self.addressing.jobs(sampled, len(slots))
        if not jobs:
            return {}
        content = RecordDict({
            "arrays": to_array_record(state.arrays),
            "config": ConfigRecord(to_config_items(self._instructions(state.round))),
        })

        def message(node: int, users: tuple[int, ...]) -> Message:
            return Message(self.addressing.content(content, users), dst_node_id=node, message_type=MessageType.EVALUATE)

        answered, checked = 0, []
        for users, reply in channel.dispatch(jobs, slots, message, timeout_s=sim.round_timeout_s):
            answered += 0 if reply.has_error() else len(users)
            checked += self.addressing.evaluation_metrics(users, reply)
        metrics = [m for m in checked if m is not None]
        n = sum(m["num-examples"] for m in metrics)
        summary: dict = {"clients": len(metrics), "rejected": answered - len(metrics)}
        if n:
            summary["eval_top1"] = sum(m["eval-top1"] * m["num-examples"] for m in metrics) / n
            summary["eval_nll"] = sum(m["eval-nll"] * m["num-examples"] for m in metrics) / n
            summary["personal_top1"] = sum(m["personal-top1"] * m["num-examples"] for m in metrics) / n
            summary["personal_nll"] = sum(m["personal-nll"] * m["num-examples"] for m in metrics) / n
        return summary

    def _finish(self, state: RunState, node_ids: list[int], channel: RoundChannel, held_out: Examples | None, seconds: float) -> dict:
        final_scores = self._score(state.arrays, held_out)
        federated = self._federated_evaluation(state, node_ids, channel)
        baselines = evaluation.baselines(self.settings, self.data, held_out, self.progress.line) if held_out is not None else {}
        metrics = {
            "rounds": state.rounds,
            "initial": {"round": state.rounds[0]["round"] - 1 if state.rounds else state.round,
                        "eval_top1": self.initial_scores["top1"], "eval_nll": self.initial_scores["nll"]},
            "final": {"eval_top1": final_scores["top1"], "eval_nll": final_scores["nll"], "federated_eval": federated,
                      "baselines": baselines,
                      "held_out_users": self.settings.population.eval_users if held_out is not None else 0,
                      "held_out_examples": len(held_out) if held_out is not None else 0},
            "privacy": privacy_report(self.settings, state, self.mechanism.epsilon(), self.secure,
                                      self._num_coordinates(state)),
            "stopped_early": self.stop_reason,
            "wall_time_s": seconds,
            "config": dataclasses.asdict(self.settings),
        }
        write_json(self.output_dir / "metrics.json", metrics)
        plot_rounds(state.rounds, self.output_dir, baselines={k: v for k, v in baselines.items() if v is not None},
                    target_epsilon=self.settings.privacy.target_epsilon if self.settings.privacy.user_level else None,
                    initial=metrics["initial"])
        return metrics
