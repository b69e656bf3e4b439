"""Closed-loop experiment entry point: ``python -m simulations.experiment [hydra overrides]``.

Composes ``conf/experiment.yaml``, pre-trains the global models on the historic federation
(``simulations.loop.pretraining``), then serves the same new users with every policy (``simulations.loop.policies``) for the
configured days (``simulations.loop.closed_loop``), retraining the personalised policies' models from the loop's logs.
Writes ``experiment.json``, ``experiment.png`` (the seed's table with intervals) and ``cold_start.png`` into
Hydra's output directory and prints the table. By default generation is simulated: the generator describes what
ACE-Step would play (``simulations.loop.simulated_generator``) and no audio is produced. ``generation=acestep_tiny`` (or
``generation=acestep generation.pipeline_dir=PATH``) also runs ACE-Step 1.5's pipeline for every request and writes
the audio on the device (``simulations.loop.generation``); reactions still come from the descriptors, so no
figure here is about ACE-Step's output. Examples::

    python -m simulations.experiment experiment.users=5000 experiment.days=14
    python -m simulations.experiment experiment.pretrain.engine=flower population.num_users=1000
    python -m simulations.experiment experiment.policies=[baseline,oracle] experiment.noise.genre_drift_prob=0.3
    python -m simulations.experiment generation=acestep_tiny experiment.users=4 experiment.conditioning.duration_s=10
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from privacy.randomness import SEEDED_WARNING  # noqa: E402
from server.report_files import write_json  # noqa: E402
from validation.config import ConfigError  # noqa: E402
from simulations.loop.closed_loop import ClosedLoop, build_cohort  # noqa: E402
from simulations.loop.generation import LoopGeneration  # noqa: E402
from simulations.loop.experiment_report import (  # noqa: E402
    cold_start_curve,
    format_table,
    plot_cold_start,
    plot_table,
    policy_table,
)
from simulations.loop.experiment_settings import ExperimentSettings, experiment_settings_from_config  # noqa: E402
from simulations.loop.judging import __doc__ as JUDGING_DOC  # noqa: E402
from simulations.loop.policies import (  # noqa: E402
    BaselinePolicy, DeviceRoomPolicy, ModelPolicy, OraclePolicy, Policy, RecentChoicesPolicy,
)
from simulations.loop.pretraining import HistoricExamples, pretrain_central, pretrain_federated  # noqa: E402
from simulations.loop.retraining import CentralRetrainer, FederatedRetrainer  # noqa: E402
from simulations.federation.simulation_settings import world_of  # noqa: E402

DEFINITIONS = {
    "first_satisfaction": "share of requests whose first generated piece reached the user's keep threshold",
    "edits": "mean edits per request before a keep: redos plus style, tempo and instrument changes",
    "retention_7d": "share of users who opened the app on day 7 after signing up on day 0",
    "mood_match": "mean over first pieces of 1 - min(1, |energy(piece) - energy(user's taste now)| / tolerance)",
    "satisfaction": "weighted mean of genre share wanted, Gaussian tempo closeness, mean wanted-ness of instruments",
    "intervals": "percentile bootstrap over users; vs_baseline uses paired resamples",
}


def planned_retrainings(settings: ExperimentSettings) -> int:
    """Retrainings the loop will run: after every ``every_days`` days except the last day."""
    every = settings.loop.retrain.every_days
    return (settings.loop.days - 1) // every if every else 0


def _model_policies(settings: ExperimentSettings, output_dir: Path, progress) -> tuple[dict, dict]:
    """Pre-train the models the personalised policies start from; returns (arrays by policy, privacy report)."""
    run, loop = settings.run, settings.loop
    wanted = [p for p in loop.policies if p in ("federated_dp", "federated_dp_personal", "central")]
    if not wanted:
        return {}, {}
    historic = HistoricExamples(run)
    arrays, report = {}, {}
    if any(p.startswith("federated_dp") for p in wanted):  # one pre-trained global prior, personalised or not
        arrays["federated_dp"], report = pretrain_federated(settings, output_dir, historic, progress)
        arrays["federated_dp_personal"] = arrays["federated_dp"]
    if "central" in wanted:
        arrays["central"] = pretrain_central(settings, historic, progress)
    return arrays, report


def _make_policy(name: str, settings: ExperimentSettings, arrays: dict, cohort, output_dir: Path) -> Policy:
    run, loop = settings.run, settings.loop
    if name == "baseline":
        return BaselinePolicy()
    if name == "oracle":
        return OraclePolicy(cohort.users)
    if name == "recent_choices":
        return RecentChoicesPolicy()
    if name.startswith("federated_dp"):
        retrainer = FederatedRetrainer(run, arrays[name], num_users=loop.users, retrain=loop.retrain,
                                       planned_retrainings=planned_retrainings(settings))
        return DeviceRoomPolicy(name, run.model, arrays[name], retrainer, root=output_dir / "devices" / name / "rooms",
                                window=run.population.window, exploration=loop.exploration,
                                questionnaire_weight=loop.questionnaire_weight,
                                personal=name == "federated_dp_personal")
    retrainer = CentralRetrainer(run, arrays[name], retrain=loop.retrain)
    return ModelPolicy(name, run.model, arrays[name], retrainer, window=run.population.window,
                       exploration=loop.exploration, questionnaire_weight=loop.questionnaire_weight)


def audio_line(audio: dict) -> str:
    """One line on the pipeline's audio: how many pieces, seconds per generation, what the devices kept."""
    seconds = audio["seconds_per_generation"]
    timing = (f"{seconds['mean']:.2f} s per generation (median {seconds['p50']:.2f}, max {seconds['max']:.2f})"
              if audio["generations"] else "no generation ran")
    return (f"audio: {audio['generations']} pieces by ACE-Step 1.5's pipeline ({audio['backend']}), {timing}; "
            f"devices kept {audio['files_kept']} WAV files ({audio['bytes_kept'] / 1e6:.1f} MB); reactions: "
            f"{audio['reactions']}")


def run_experiment(settings: ExperimentSettings, output_dir: Path, *, stream: TextIO = sys.stdout) -> dict:
    """Run every configured policy on the same new users; write and return ``experiment.json``'s content."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loop = settings.loop
    logging.getLogger("flwr").setLevel(logging.WARNING)  # the strategy's per-round INFO lines; ours say more
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a small shared machine a second thread mostly adds contention
    started = time.perf_counter()

    def progress(line: str) -> None:
        print(line, file=stream, flush=True)

    try:
        generation = LoopGeneration(settings.generation, loop.noise, loop.seed, output_dir)
        progress(f"closed-loop experiment: {loop.users} new users x {loop.days} days, policies {loop.policies}; "
                 f"generation {generation.footnote}; outputs in {output_dir}")
        cohort = build_cohort(settings.run.population.seed, settings.first_user_id, loop.users, loop.days, loop.seed,
                              world_of(settings.run))
        arrays, pretraining = _model_policies(settings, output_dir, progress)
        results, reports = {}, {}
        for name in loop.policies:
            policy = _make_policy(name, settings, arrays, cohort, output_dir)
            devices = (lambda user_id, name=name: generation.for_device(name, user_id)) if generation.pipeline else None
            results[name] = ClosedLoop(cohort, loop, stream=stream).run(policy, devices)
            reports[name] = policy.report()
            if isinstance(policy, DeviceRoomPolicy):
                policy.close()
        table = policy_table(results, loop.report, loop.seed)
        curves = {name: cold_start_curve(records, loop.report) for name, records in results.items()}
        payload = {
            "users": loop.users,
            "days": loop.days,
            "generation": generation.note,
            "audio": generation.report() or None,
            "policies": table,
            "cold_start_curve": curves,
            "privacy": {"pretraining": pretraining, "retraining": reports.get("federated_dp") or reports.get("federated_dp_personal") or None},
            "retraining": {name: report for name, report in reports.items() if report},
            "definitions": {**DEFINITIONS, "judging": " ".join((JUDGING_DOC or "").split())},
            "config": dataclasses.asdict(settings),
            "wall_time_s": time.perf_counter() - started,
        }
        write_json(output_dir / "experiment.json", payload)
        plot_table(table, output_dir / "experiment.png", loop.report.confidence, generation.footnote)
        plot_cold_start(curves, output_dir / "cold_start.png", loop.exploration.interactions, generation.footnote)
        progress(format_table(table, loop.report.confidence, generation.footnote))
        if payload["audio"]:
            progress(audio_line(payload["audio"]))
        if settings.run.privacy.noise == "seeded":
            progress(f"privacy.noise=seeded: {SEEDED_WARNING}")
        progress(f"outputs: {output_dir} (experiment.json, experiment.png, cold_start.png) · "
                 f"{payload['wall_time_s']:.0f} s")
        return payload
    finally:
        torch.set_num_threads(threads)


@hydra.main(config_path="../conf", config_name="experiment", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        settings = experiment_settings_from_config(cfg)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    run_experiment(settings, Path(HydraConfig.get().runtime.output_dir).resolve())


if __name__ == "__main__":
    main()
