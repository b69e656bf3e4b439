"""Typed settings of the closed-loop experiment, validated once from the composed ``conf/experiment.yaml``.

The composed config has two parts. Everything the federated training run understands (``seed``, ``train``,
``population``, ``model``, ``privacy``, ``strategy``, ``simulation`` ...) is checked by the project's own schema
(``simulations.federation.simulation_settings.simulated_settings``): it describes the *historic* federation the global
model is pre-trained on. The ``experiment`` key describes the loop: the new users, the policies, periodic retraining,
the simulated generator's adherence noise, how users judge and come back. The ``generation`` group says whether ACE-Step
1.5's pipeline makes audio too (``generation.generation_settings``). Unknown keys and wrong types are rejected with the
key named (``protocol.instructions.dataclass_from_dict``); each dataclass checks its own ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from generation.cold_start import ExplorationConfig
from generation.conditioning import ConditioningConfig
from generation.generation_settings import GenerationSettings
from protocol.instructions import InstructionError, dataclass_from_dict
from server.preflight import check_no_plan
from simulations.loop.simulated_generator import AdherenceNoise
from server.settings import (
    SEED_MAX,
    ConfigError,
    RunSettings,
    check_range,
)
from simulations.federation.simulation_settings import simulated_settings

POLICIES = ("baseline", "recent_choices", "federated_dp", "federated_dp_personal", "central", "oracle")
PRETRAIN_ENGINES = ("flower", "inprocess", "checkpoint")
RETENTION_DAY = 7


@dataclass(frozen=True)
class PretrainSettings:
    """How the global model is trained before the new users arrive.

    Attributes:
        engine: "flower" runs the real Flower simulation (``simulations.run.run_federated_simulation``) over the
            historic population; "inprocess" runs the same DP-FedAvg code path (client ``local_update``, server
            ``aggregate``, Opacus accounting) without Ray, for small runs and tests; "checkpoint" loads the
            ``checkpoint.pt`` of an earlier ``python -m simulations.run``.
        checkpoint: the checkpoint for engine "checkpoint".
        central_epochs: epochs of the non-private central model over the pooled historic logs.
    """

    engine: str = "inprocess"
    checkpoint: Optional[str] = None
    central_epochs: int = 1

    def __post_init__(self) -> None:
        if self.engine not in PRETRAIN_ENGINES:
            raise ConfigError(f"experiment.pretrain.engine must be one of {list(PRETRAIN_ENGINES)}. Found {self.engine!r}.")
        if self.engine == "checkpoint" and not self.checkpoint:
            raise ConfigError("experiment.pretrain.engine=checkpoint needs experiment.pretrain.checkpoint=PATH. Found none.")
        check_range("experiment.pretrain.central_epochs", self.central_epochs, 1)


@dataclass(frozen=True)
class RetrainSettings:
    """Periodic fine-tuning from the logs the loop produced (the seed's loop fine-tunes the LSTM periodically).

    Attributes:
        every_days: retrain after every this many simulated days (0: never).
        rounds: DP-FedAvg rounds per retraining of the federated model.
        sample_rate: Poisson sampling rate of the new users in each of those rounds.
        central_epochs: passes of the central model over the examples logged since its last retraining.
    """

    every_days: int = 2
    rounds: int = 2
    sample_rate: float = 0.1
    central_epochs: int = 1

    def __post_init__(self) -> None:
        check_range("experiment.retrain.every_days", self.every_days, 0, note=" (0: never)")
        check_range("experiment.retrain.rounds", self.rounds, 1)
        check_range("experiment.retrain.central_epochs", self.central_epochs, 1)
        check_range("experiment.retrain.sample_rate", self.sample_rate, 0, 1, low_open=True)


@dataclass(frozen=True)
class JudgeSettings:
    """How a user's hidden taste scores a generated piece (``simulations.loop.judging``).

    Attributes:
        genre_weight, tempo_weight, instrument_weight: weights of the three match scores (normalised to sum 1).
        keep_threshold: satisfaction at or above which the user is satisfied and keeps the piece.
        mood_tolerance: energy distance at which the mood match reaches 0.
    """

    genre_weight: float = 0.6
    tempo_weight: float = 0.2
    instrument_weight: float = 0.2
    keep_threshold: float = 0.7
    mood_tolerance: float = 0.25

    def __post_init__(self) -> None:
        weights = (self.genre_weight, self.tempo_weight, self.instrument_weight)
        for name in ("genre_weight", "tempo_weight", "instrument_weight"):
            check_range(f"experiment.judge.{name}", getattr(self, name), 0)
        if not sum(weights) > 0.0:
            raise ConfigError(f"experiment.judge weights must not all be 0 (they are normalised to sum 1). Found {weights}.")
        check_range("experiment.judge.keep_threshold", self.keep_threshold, 0, 1)
        check_range("experiment.judge.mood_tolerance", self.mood_tolerance, 0, low_open=True)


@dataclass(frozen=True)
class BehaviourSettings:
    """What users do in the loop (``simulations.loop.user``).

    Attributes:
        settle_prob: chance of keeping an unsatisfying piece anyway.
        max_attempts: generations per request; the last is kept (the user stops steering), so edits are bounded.
        extra_sessions_mean: Poisson mean of sessions beyond the first on a day the user opens the app.
        edit_cost: satisfaction lost per edit in the experience that drives coming back.
        ema_alpha: weight of the latest request in the running mean of experience.
        return_base: daily chance of coming back when the running experience equals ``return_pivot``.
        return_slope: change of that chance per unit of experience above the pivot.
        return_pivot: the experience at which the chance is ``return_base``; also the running mean's start.
        return_min, return_max: bounds of the daily chance.
    """

    settle_prob: float = 0.1
    max_attempts: int = 4
    extra_sessions_mean: float = 0.4
    edit_cost: float = 0.05
    ema_alpha: float = 0.3
    return_base: float = 0.5
    return_slope: float = 1.5
    return_pivot: float = 0.6
    return_min: float = 0.05
    return_max: float = 0.95

    def __post_init__(self) -> None:
        for name in ("settle_prob", "edit_cost", "return_base", "return_pivot", "return_min", "return_max"):
            check_range(f"experiment.behaviour.{name}", getattr(self, name), 0, 1)
        check_range("experiment.behaviour.ema_alpha", self.ema_alpha, 0, 1, low_open=True)
        check_range("experiment.behaviour.max_attempts", self.max_attempts, 1)
        check_range("experiment.behaviour.extra_sessions_mean", self.extra_sessions_mean, 0)
        if self.return_min > self.return_max:
            raise ConfigError(f"experiment.behaviour.return_min must be <= return_max. Found {self.return_min} > "
                              f"{self.return_max}.")


@dataclass(frozen=True)
class ReportSettings:
    """Attributes:
    bootstrap: resamples of users for the confidence intervals.
    confidence: coverage of the intervals.
    curve_interactions: points of the cold-start curve (interactions 1..this).
    """

    bootstrap: int = 1000
    confidence: float = 0.95
    curve_interactions: int = 20

    def __post_init__(self) -> None:
        check_range("experiment.report.bootstrap", self.bootstrap, 10)
        check_range("experiment.report.curve_interactions", self.curve_interactions, 1)
        check_range("experiment.report.confidence", self.confidence, 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class LoopSettings:
    """The ``experiment`` section.

    Attributes:
        users: new users in the cohort; every policy serves the same ones.
        days: simulated days from each user's sign-up (day 0) on; at least 8 so day-7 retention exists.
        seed: root of the loop's randomness (schedules, wants, prompts, judging, generation).
        first_user_id: id of the first cohort user in the population; ``None`` puts the cohort after the historic
            and held-out users, so no cohort user was ever trained on.
        policies: which of ``POLICIES`` to run, in this order.
        questionnaire_weight: weight of the sign-up answers against the population prior at cold start.
    """

    users: int = 1000
    days: int = 14
    seed: int = 0
    first_user_id: Optional[int] = None
    policies: list = field(default_factory=lambda: list(POLICIES))
    questionnaire_weight: float = 0.7
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    noise: AdherenceNoise = field(default_factory=AdherenceNoise)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    behaviour: BehaviourSettings = field(default_factory=BehaviourSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    def __post_init__(self) -> None:
        check_range("experiment.users", self.users, 1)
        check_range("experiment.days", self.days, RETENTION_DAY + 1, 366,
                    note=f" (day-{RETENTION_DAY} retention needs day {RETENTION_DAY})")
        check_range("experiment.seed", self.seed, 0, SEED_MAX)
        if self.first_user_id is not None:
            check_range("experiment.first_user_id", self.first_user_id, 0, note=" or null")
        unknown = [p for p in self.policies if p not in POLICIES]
        if not self.policies or unknown or len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"experiment.policies must list distinct names among {list(POLICIES)}. Found {self.policies}.")
        check_range("experiment.questionnaire_weight", self.questionnaire_weight, 0, 1)


@dataclass(frozen=True)
class ExperimentSettings:
    """The whole experiment: the historic federation (``run``), the loop (``loop``) and how it generates music."""

    run: RunSettings
    loop: LoopSettings
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    @property
    def first_user_id(self) -> int:
        """Id of the first cohort user (after the historic and held-out users unless set)."""
        if self.loop.first_user_id is not None:
            return self.loop.first_user_id
        return self.run.population.num_users + self.run.population.eval_users


def experiment_settings_from_config(cfg: DictConfig | dict) -> ExperimentSettings:
    """Validate the composed experiment config; raises ``ConfigError`` naming the offending key."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    if "experiment" not in container:
        raise ConfigError("the config has no 'experiment' section: compose conf/experiment.yaml.")
    loop_values = container.pop("experiment")
    generation_values = container.pop("generation", {})
    run = simulated_settings(container)
    check_no_plan(run)  # the experiment would run: a plan is simulations.run's (privacy.plan=true)
    try:
        loop = dataclass_from_dict(LoopSettings, loop_values, "experiment.")
        generation = dataclass_from_dict(GenerationSettings, generation_values, "generation.")
    except (InstructionError, ValueError) as error:
        raise ConfigError(str(error)) from None
    settings = ExperimentSettings(run=run, loop=loop, generation=generation)
    if run.privacy.user_level and any(p.startswith("federated_dp") for p in loop.policies) and not run.privacy.delta < 1.0 / loop.users:
        raise ConfigError(f"privacy.delta must be < 1/experiment.users = {1.0 / loop.users:g} (the retraining "
                          f"federation is the new users). Found {run.privacy.delta}.")
    return settings
