"""The run's typed settings: the one schema Hydra's composed YAML is checked against.

``settings_from_config`` builds these dataclasses from the composed config, rejecting unknown keys and wrong
types with the full key named (each dataclass then checks its own ranges), and checks the rules that span groups. Everything downstream receives these objects, never a raw DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from client.instructions import dataclass_from_dict
from model.networks import ModelConfig
from model.training import LocalTrainConfig
from privacy.accounting import ACCOUNTANTS
from privacy.errors import PrivacyConfigError

PRIVACY_MODES = ("none", "record", "user", "both")
STRATEGIES = ("fedavg", "fedadam", "fedmedian", "fedtrimmedavg")
MEAN_STRATEGIES = ("fedavg", "fedadam")
"""Strategies whose aggregate is a mean of updates: the only ones the user-level Gaussian mechanism bounds."""


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training, naming the key and the allowed range."""


@dataclass(frozen=True)
class PopulationSettings:
    seed: int = 0
    num_users: int = 1000
    eval_users: int = 200
    days: int = 28
    window: int = 32
    client_eval_fraction: float = 0.2
    eval_points_per_user: int = 10

    def __post_init__(self) -> None:
        if self.num_users < 1:
            raise ConfigError(f"population.num_users must be >= 1; found {self.num_users}.")
        if self.eval_users < 0:
            raise ConfigError(f"population.eval_users must be >= 0; found {self.eval_users}.")
        if self.days < 1:
            raise ConfigError(f"population.days must be >= 1; found {self.days}.")
        if self.window < 1:
            raise ConfigError(f"population.window must be >= 1 event; found {self.window}.")
        if self.eval_points_per_user < 1:
            raise ConfigError(f"population.eval_points_per_user must be >= 1; found {self.eval_points_per_user}.")
        if not 0.0 <= self.client_eval_fraction < 1.0:
            raise ConfigError(f"population.client_eval_fraction must be in [0, 1); found {self.client_eval_fraction}.")


@dataclass(frozen=True)
class RecordPrivacySettings:
    """Record-level DP-SGD on each client; ``target_epsilon`` is each client's own budget over all its rounds."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float = 10.0
    delta: float = 1e-3

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0.0:
            raise PrivacyConfigError(f"privacy.record.noise_multiplier must be > 0; found {self.noise_multiplier}.")
        if not self.max_grad_norm > 0.0:
            raise PrivacyConfigError(f"privacy.record.max_grad_norm must be > 0; found {self.max_grad_norm}.")
        if not self.target_epsilon > 0.0:
            raise PrivacyConfigError(f"privacy.record.target_epsilon must be > 0; found {self.target_epsilon}.")
        if not 0.0 < self.delta < 1.0:
            raise PrivacyConfigError(f"privacy.record.delta must be in (0, 1); found {self.delta}.")


@dataclass(frozen=True)
class PrivacySettings:
    mode: str = "user"
    target_epsilon: Optional[float] = 8.0
    delta: float = 1e-5
    clipping_norm: Optional[float] = 0.5
    accountant: str = "rdp"
    record: Optional[RecordPrivacySettings] = None

    @property
    def user_level(self) -> bool:
        return self.mode in ("user", "both")

    @property
    def record_level(self) -> bool:
        return self.mode in ("record", "both")

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise PrivacyConfigError(f"privacy.mode must be one of {list(PRIVACY_MODES)}; found {self.mode!r}.")
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyConfigError(f"privacy.accountant must be one of {list(ACCOUNTANTS)}; found {self.accountant!r}.")
        if self.user_level:
            if self.target_epsilon is None or not self.target_epsilon > 0.0:
                raise PrivacyConfigError(f"privacy.target_epsilon must be > 0 for mode '{self.mode}'; found {self.target_epsilon}.")
            if self.clipping_norm is None or not self.clipping_norm > 0.0:
                raise PrivacyConfigError(f"privacy.clipping_norm must be > 0 for mode '{self.mode}'; found {self.clipping_norm}.")
            if not 0.0 < self.delta < 1.0:
                raise PrivacyConfigError(f"privacy.delta must be in (0, 1); found {self.delta}.")
        if self.record_level and self.record is None:
            raise PrivacyConfigError(f"privacy.record must be set for mode '{self.mode}' (noise_multiplier, max_grad_norm, target_epsilon, delta).")


@dataclass(frozen=True)
class StrategySettings:
    name: str = "fedavg"
    server_lr: float = 1.0
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    beta: float = 0.2

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy.name must be one of {list(STRATEGIES)}; found {self.name!r}.")
        if not self.server_lr > 0.0:
            raise ConfigError(f"strategy.server_lr must be > 0; found {self.server_lr}.")
        if not 0.0 <= self.beta < 0.5:
            raise ConfigError(f"strategy.beta (trimmed fraction per side) must be in [0, 0.5); found {self.beta}.")


@dataclass(frozen=True)
class SimulationSettings:
    rounds: int = 30
    sample_rate: float = 0.1
    num_cpus_per_client: float = 1.0
    round_timeout_s: float = 300.0
    node_wait_s: float = 300.0
    final_eval_clients: int = 100
    central_baseline_epochs: int = 1
    nodes: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 0:
            raise ConfigError(f"simulation.nodes must be >= 0 (0: one node per user); found {self.nodes}.")
        if self.rounds < 1:
            raise ConfigError(f"simulation.rounds must be >= 1; found {self.rounds}.")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"simulation.sample_rate must be in (0, 1]; found {self.sample_rate}.")
        if not self.num_cpus_per_client > 0.0:
            raise ConfigError(f"simulation.num_cpus_per_client must be > 0; found {self.num_cpus_per_client}.")
        if not self.round_timeout_s > 0.0:
            raise ConfigError(f"simulation.round_timeout_s must be > 0; found {self.round_timeout_s}.")
        if self.final_eval_clients < 0 or self.central_baseline_epochs < 0:
            raise ConfigError(
                "simulation.final_eval_clients and simulation.central_baseline_epochs must be >= 0; "
                f"found {self.final_eval_clients}, {self.central_baseline_epochs}."
            )


@dataclass(frozen=True)
class DeploymentSettings:
    """How the server meets its nodes: Flower's simulation (one node per synthetic user) or real SuperNodes."""

    min_nodes: Optional[int] = None  # nodes that must be connected before round 1; None = population.num_users
    server_eval: bool = True  # score on held-out synthetic users each round, baselines at the end (simulation only)
    warm_up_nodes: int = 4  # untimed round trip before round 1 (simulation workers start slowly); 0 skips it

    def __post_init__(self) -> None:
        if self.min_nodes is not None and self.min_nodes < 1:
            raise ConfigError(f"deployment.min_nodes must be >= 1 (or null for population.num_users); found {self.min_nodes}.")
        if self.warm_up_nodes < 0:
            raise ConfigError(f"deployment.warm_up_nodes must be >= 0; found {self.warm_up_nodes}.")


SECAGG_MODULUS_RANGE = 2**32
"""Flower's SecAgg+ default (and maximum) modulus: sums of quantised values must stay below it."""


@dataclass(frozen=True)
class SecAggSettings:
    """Flower's SecAgg+ (Bell et al. 2020) for the sum of clipped updates; see ``server/secagg.py``."""

    enabled: bool = False
    num_shares: int = 3  # each client's secrets are split among itself and num_shares - 1 neighbours; odd
    reconstruction_threshold: int = 2  # shares needed to unmask a client; tolerates num_shares - threshold dropouts
    quantization_range: int = 2**22  # integer levels over [-C, C]; error per coordinate <= 2C / quantization_range

    def __post_init__(self) -> None:
        if self.num_shares < 3 or self.num_shares % 2 == 0:
            raise ConfigError(
                f"secagg.num_shares must be an odd number >= 3 (even counts crash Flower's SecAgg+ clients); found {self.num_shares}."
            )
        if not 2 <= self.reconstruction_threshold < self.num_shares:
            raise ConfigError(
                f"secagg.reconstruction_threshold must be in [2, secagg.num_shares - 1 = {self.num_shares - 1}]; "
                f"found {self.reconstruction_threshold}."
            )
        if not 2 <= self.quantization_range < SECAGG_MODULUS_RANGE:
            raise ConfigError(f"secagg.quantization_range must be in [2, 2**32); found {self.quantization_range}.")


@dataclass(frozen=True)
class RunSettings:
    seed: int = 0
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    population: PopulationSettings = field(default_factory=PopulationSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    deployment: DeploymentSettings = field(default_factory=DeploymentSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    resume: bool = False
    checkpoint: Optional[str] = None

    @property
    def expected_clients_per_round(self) -> float:
        return self.simulation.sample_rate * self.population.num_users


def _check_across_groups(s: RunSettings) -> None:
    if s.simulation.nodes and s.secagg.enabled:
        raise ConfigError("simulation.nodes > 0 (node slots playing sampled users) cannot run with secagg.enabled=true: "
                          "SecAgg+ pairs keys with fixed nodes. Use simulation.nodes=0.")
    if s.simulation.nodes > s.population.num_users:
        raise ConfigError(
            f"simulation.nodes must be <= population.num_users = {s.population.num_users}; found {s.simulation.nodes}."
        )
    if s.privacy.user_level:
        if not s.privacy.delta < 1.0 / s.population.num_users:
            raise PrivacyConfigError(
                f"privacy.delta must be < 1/population.num_users = {1.0 / s.population.num_users:g} "
                f"(a larger delta can leak one user's data outright); found {s.privacy.delta}."
            )
        if s.strategy.name not in MEAN_STRATEGIES:
            raise ConfigError(
                f"strategy.name={s.strategy.name!r} cannot be combined with user-level DP (privacy.mode="
                f"{s.privacy.mode!r}): the Gaussian mechanism bounds a sum of clipped updates, not a median or "
                f"trimmed mean. Use one of {list(MEAN_STRATEGIES)}, or privacy=none/record."
            )
    if s.secagg.enabled:
        if not s.privacy.user_level:
            raise ConfigError(
                f"secagg.enabled=true needs user-level DP (privacy=user or both; found privacy.mode={s.privacy.mode!r}): "
                "the clipping norm bounds every coordinate of an update, which sets SecAgg's quantisation range."
            )
        if s.population.num_users * s.secagg.quantization_range >= SECAGG_MODULUS_RANGE:
            raise ConfigError(
                f"population.num_users * secagg.quantization_range must be < 2**32 (a secure sum of that many "
                f"quantised updates would overflow SecAgg's modulus); found {s.population.num_users} * "
                f"{s.secagg.quantization_range}. Lower secagg.quantization_range."
            )
    if s.resume and not s.checkpoint:
        raise ConfigError("resume=true needs checkpoint=PATH (the checkpoint.pt of the run to continue).")


def settings_from_config(cfg: DictConfig | dict) -> RunSettings:
    """Validate a composed config against the schema; raise ``ConfigError`` naming the offending key."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    try:
        settings = dataclass_from_dict(RunSettings, container)
    except ConfigError:
        raise
    except ValueError as error:  # schema errors and each dataclass's own range checks
        raise ConfigError(str(error)) from None
    _check_across_groups(settings)
    return settings
