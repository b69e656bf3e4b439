"""The federated training run over a Flower grid: rounds, privacy budget, checkpoints, evaluation, report.

Each round: check that the next release fits the user-level budget (stop before it if not); play the round
(``server.round.FederatedRound``: Poisson sampling, the round's instructions, replies judged and aggregated through
the run's user-level mechanism) over the grid (``server.grid_transport``); score on held-out users; checkpoint
atomically. Outputs go to one directory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.serverapp import Grid

from model.features.examples import Examples
from model.network.networks import PreferenceLSTM
from privacy.randomness import SEEDED_WARNING, sampling_generator
from protocol.instructions import Scalar, TrainInstructions, to_config_items
from protocol.reply_layout import EVAL_SCORES
from server import evaluation
from server.addressing import Addressing
from server.aggregation import make_strategy, strategy_state, user_level_mechanism
from server.checkpoint import Checkpoint, save_checkpoint
from server.evaluation import HeldOutData, PendingBaselines
from server.grid_io import RoundChannel, wait_for_nodes, warm_up
from server.grid_transport import GridTransport
from server.privacy_report import privacy_report
from server.progress import Progress
from server.report_files import plot_rounds, write_json
from server.round import FederatedRound, poisson_sample, train_instructions
from server.round_report import federated_evaluation_summary, final_lines, round_line, round_row
from server.run_start import data_instructions, evaluation_rate, fresh_state, resumed_state
from server.run_state import RunState
from server.secagg import SecureAggregator
from server.settings import RunSettings
from validation.config import ConfigError

__all__ = ["FederatedRun", "Progress"]


class FederatedRun:
    """One run of federated training over the nodes of a Flower grid.

    Args:
        settings: the run's settings.
        output_dir: where everything the run writes goes.
        progress: where round lines go (default: the terminal and ``output_dir/run.log``).
        held_out: the examples the server scores on each round and their baselines (needed when
            ``deployment.server_eval``); the simulation passes held-out synthetic users, a real server none.
        population: the synthetic population the simulation's nodes play, sent in every message
            (``DataInstructions.population``); None on a deployment.

    Raises:
        ConfigError: if ``deployment.server_eval`` is set but no ``held_out`` data is given.
    """

    def __init__(self, settings: RunSettings, output_dir: Path, progress: Progress | None = None, *,
                 held_out: HeldOutData | None = None, population: Mapping[str, Scalar] | None = None) -> None:
        if settings.deployment.server_eval and held_out is None:
            raise ConfigError("deployment.server_eval=true needs held-out examples to score, and this server has none: "
                              "a real server holds no users' data (set deployment.server_eval=false); the simulation's "
                              "ServerApp (simulations.federation.simulation_server_app) scores on held-out synthetic "
                              "users.")
        self.held_out_data = held_out if settings.deployment.server_eval else None
        self.settings = settings
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.output_dir / "checkpoint.pt"
        self.progress = progress or Progress(log_file=self.output_dir / "run.log")
        self.data = data_instructions(settings, population)
        self.strategy = make_strategy(settings.strategy)
        self.model = PreferenceLSTM(settings.model)
        self.device_dir = str(self.output_dir / "devices")
        self.stop_reason: str | None = None
        self.secure: SecureAggregator | None = None
        if settings.secagg.enabled:
            self.secure = SecureAggregator(settings.secagg, timeout_s=settings.simulation.round_timeout_s)
        self.evaluation_rate: float | None = None
        self.evaluation_releases = 0  # releases of the devices' scores recorded in the ledger

    def _instructions(self, state: RunState, server_round: int) -> TrainInstructions:
        return train_instructions(self.settings, server_round, seed=self.settings.seed, data=self.data,
                                  device_dir=self.device_dir, attack=self.settings.simulation.attack.instructions(),
                                  clipping_norm=self.federated_round.mechanism.clipping_norm, run_key=state.run_key,
                                  noise_multiplier=state.noise_multiplier, evaluation_rate=self.evaluation_rate)

    def _round(self, state: RunState, population: int) -> FederatedRound:
        """The run's round: its mechanism (N = ``population``) and its sampling stream. Who is sampled: OS entropy in
        a deployment (amplification by subsampling assumes nobody knows who was drawn), the seed in a simulation;
        seeded noise and sampling are re-keyed by the round a resumed run starts at, so it never replays round 1."""
        s, sim = self.settings, self.settings.simulation
        restart = [state.round] if s.resume else []
        mechanism = user_level_mechanism(
            s, noise_multiplier=state.noise_multiplier, ledger=state.ledger, sample_rate=sim.sample_rate,
            population=population, noise_seed=[s.seed, 1] + ([state.round] if state.round else []),
            clipping_norm=state.clipping_norm,
        )
        return FederatedRound(self.strategy, mechanism, sampling_rng=sampling_generator(
            s.deployment.engine == "real", [s.seed, 0] + restart), sample_rate=sim.sample_rate,
            on_reply=self.progress.clients)

    def run(self, grid: Grid) -> dict:
        """Train for the configured rounds (or until the budget stops it); returns the metrics written. The baselines
        are started first, so they are computed while the rounds run."""
        held_out, baselines = None, None
        if self.held_out_data is not None:
            held_out = self.held_out_data.examples()
            baselines = self.held_out_data.baselines(held_out)
        try:
            return self._run_rounds(grid, held_out, baselines)
        finally:
            if baselines is not None:
                baselines.cancel()

    def _start(self, population: int) -> RunState:
        """Round 0, or the checkpoint's round; ``population`` is N, which the devices' evaluation rate needs."""
        self.evaluation_rate = evaluation_rate(self.settings, population)
        if self.settings.resume:
            state, self.device_dir = resumed_state(self.settings, self.strategy)
            return state
        return fresh_state(self.settings, self.progress.line, population=population)

    def _run_rounds(self, grid: Grid, held_out: Examples | None, baselines: PendingBaselines | None) -> dict:
        s, sim, deployment = self.settings, self.settings.simulation, self.settings.deployment
        node_ids = wait_for_nodes(grid, deployment.min_nodes or s.simulated_nodes, timeout_s=sim.node_wait_s)
        # N of the sampling rate: the simulated users in slot mode, otherwise the connected nodes.
        population = s.population.num_users if sim.nodes else len(node_ids)
        state = self._start(population)
        self.federated_round = self._round(state, population)
        if s.resume:
            epsilon = self.federated_round.mechanism.epsilon()
            self.progress.line(f"resumed from {s.checkpoint}: round {state.round} done"
                               + (f", user-level ε so far {epsilon:.3f}" if epsilon is not None else ""))
        if s.privacy.noise == "seeded":
            self.progress.line(f"privacy.noise=seeded: {SEEDED_WARNING}")
        if deployment.warm_up_nodes:
            warm_up(grid, node_ids, deployment.warm_up_nodes)
        addressing = Addressing(slots=bool(sim.nodes), users_per_message=sim.users_per_message)
        transport = GridTransport(RoundChannel(grid, ttl_s=3 * sim.round_timeout_s), addressing, node_ids,
                                  num_users=s.population.num_users, timeout_s=sim.round_timeout_s)
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
            self._run_round(state, state.round + 1, transport, held_out)
        return self._finish(state, transport, held_out, baselines, time.perf_counter() - started)

    def _budget_allows_next_round(self, state: RunState) -> bool:
        after = self.federated_round.mechanism.epsilon_if_next_passes_budget()
        if after is None:
            return True
        self.stop_reason = (
            f"stopped before round {state.round + 1}: it would bring user-level ε to {after:.3f}, "
            f"past the budget privacy.target_epsilon={self.settings.privacy.target_epsilon}"
        )
        self.progress.line(self.stop_reason)
        return False

    def _run_round(self, state: RunState, server_round: int, transport: GridTransport, held_out: Examples | None) -> None:
        started = time.perf_counter()
        instructions = self._instructions(state, server_round)
        if self.secure is not None:
            outcome = self.federated_round.play_secure(server_round, state.arrays, to_config_items(instructions), transport,
                                             self.secure)
        else:
            outcome = self.federated_round.play(server_round, state.arrays, instructions, transport)
        state.arrays = outcome.arrays
        state.clipping_norm = self.federated_round.mechanism.clipping_norm
        scores = self._score(state.arrays, held_out)
        row = round_row(server_round, outcome, scores, self.federated_round.mechanism.epsilon(),
                        secure=self.secure is not None, seconds=time.perf_counter() - started)
        state.rounds.append(row)
        state.round = server_round
        for owner, reason in outcome.problems[:3]:  # slot mode names the user the slot played
            self.progress.line(f"  {'user' if self.settings.simulation.nodes else 'node'} {owner}: "
                               f"{reason.strip().splitlines()[-1] if reason.strip() else reason}")
        if outcome.halted:
            self.progress.line(f"  round {server_round}: {outcome.halted}; this round releases noise only")
        self._checkpoint(state)
        self.progress.line(round_line(row, self.settings, held_out is not None))

    def _score(self, arrays: dict[str, np.ndarray], held_out: Examples | None) -> dict[str, float]:
        if held_out is None:  # deployment.server_eval=false: a real server holds no users' data to score on
            return {"top1": float("nan"), "nll": float("nan")}
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        return evaluation.score(self.model, held_out)

    def _checkpoint(self, state: RunState) -> None:
        save_checkpoint(self.checkpoint_path, Checkpoint(
            round=state.round, arrays=state.arrays, ledger=state.ledger.state_dict(),
            noise_multiplier=state.noise_multiplier, strategy_state=strategy_state(self.strategy),
            device_dir=self.device_dir, clipping_norm=state.clipping_norm, run_key=state.run_key,
            rounds=state.rounds, settings=dataclasses.asdict(self.settings),
        ))

    def _federated_evaluation(self, state: RunState, transport: GridTransport) -> dict:
        """Devices score the final model on their own held-out recent events: each sampled with probability
        ``evaluation_rate`` (Poisson, like a round), their score vectors summed and released through the run's
        mechanism (noised and recorded in the ledger under user-level DP); malformed replies are counted."""
        rate, rng = self.evaluation_rate, self.federated_round.sampling_rng
        if rate is None:
            return {}
        after = self.federated_round.mechanism.epsilon_if_next_passes_budget(sample_rate=rate)
        if after is not None:  # a resumed run's rounds may have used the share calibrated for it
            self.progress.line(f"devices' evaluation skipped: it would bring user-level ε to {after:.3f}, past the "
                               f"budget privacy.target_epsilon={self.settings.privacy.target_epsilon}")
            return {"skipped": "budget"}
        picked = poisson_sample(rng, transport.candidates(), rate)
        replies = transport.evaluate(state.arrays, self._instructions(state, state.round), picked)
        answered, scores = replies if replies is not None else (0, [])
        total = np.sum(scores, axis=0) if scores else np.zeros(len(EVAL_SCORES))
        mechanism = self.federated_round.mechanism
        released = mechanism.release_scores(total, sample_rate=rate)
        self.evaluation_releases += int(mechanism.user_level)
        return federated_evaluation_summary(answered, released, noisy=mechanism.user_level, sample_rate=rate)

    def _finish(self, state: RunState, transport: GridTransport, held_out: Examples | None,
                pending: PendingBaselines | None, seconds: float) -> dict:
        final_scores = self._score(state.arrays, held_out)
        federated = self._federated_evaluation(state, transport)
        self._checkpoint(state)  # the evaluation's release is in the ledger: a resumed run must count it
        baselines: dict[str, float | None] = {}
        if pending is not None:
            result = pending.result()
            baselines = result.top1
            for note in result.notes:
                self.progress.line(note)
        coordinates = sum(int(np.asarray(a).size) for a in state.arrays.values())
        metrics = {
            "rounds": state.rounds,
            "initial": {"round": state.rounds[0]["round"] - 1 if state.rounds else state.round,
                        "eval_top1": self.initial_scores["top1"], "eval_nll": self.initial_scores["nll"]},
            "final": {"eval_top1": final_scores["top1"], "eval_nll": final_scores["nll"], "federated_eval": federated,
                      "baselines": baselines,
                      "held_out_users": self.settings.population.eval_users if held_out is not None else 0,
                      "held_out_examples": len(held_out) if held_out is not None else 0},
            "privacy": privacy_report(self.settings, state, self.federated_round.mechanism.epsilon(), self.secure,
                                      coordinates, evaluation_releases=self.evaluation_releases,
                                      plan=getattr(self.federated_round.mechanism, "plan", None)),
            "stopped_early": self.stop_reason,
            "wall_time_s": seconds,
            "config": dataclasses.asdict(self.settings),
        }
        write_json(self.output_dir / "metrics.json", metrics)
        for line in final_lines(metrics):
            self.progress.line(line)
        plot_rounds(state.rounds, self.output_dir, baselines={k: v for k, v in baselines.items() if v is not None},
                    target_epsilon=self.settings.privacy.target_epsilon if self.settings.privacy.user_level else None,
                    initial=metrics["initial"])
        return metrics
