"""The run's typed settings: the one schema Hydra's composed YAML is checked against.

``settings_from_config`` builds these dataclasses from the composed config, rejecting unknown keys and wrong
types with the full key named (each dataclass then checks its own ranges), and checks the rules that span groups. Everything downstream receives these objects, never a raw DictConfig.

Over 300 lines on purpose: one frozen dataclass per Hydra group plus the checks across groups, so the whole
schema a run is checked against reads in one file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from model.network.networks import ModelConfig
from model.network.training import LocalTrainConfig
from privacy.accounting import ACCOUNTANTS
from privacy.adaptive_clipping import AdaptiveClipping
from privacy.errors import PrivacyConfigError
from privacy.randomness import NOISE_SOURCES
from privacy.record_level import RecordLevelDP
from protocol.instructions import ATTACK_KINDS, AttackInstructions, dataclass_from_dict
from validation.config import ConfigError, check_range

PRIVACY_MODES = ("none", "record", "user", "both", "distributed")
CLIPPING_RULES = ("fixed", "adaptive")
USER_LEVEL_MECHANISMS = ("dpfedavg", "bandmf")
STRATEGIES = ("fedavg", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
MEAN_STRATEGIES = ("fedavg", "fedadam")
"""Strategies whose aggregate is a mean of updates: the only ones the user-level Gaussian mechanism bounds."""


SEED_MAX = 2**63 - 1
"""Largest seed: what the synthetic population (``simulations.population.population``) and NumPy's streams accept."""
MAX_POPULATION = 10**10
"""Largest population a run may describe (more than there are people): a bound that keeps the privacy checks'
arithmetic (``1 / population.num_users``) in floating point."""


@dataclass(frozen=True)
class PopulationSettings:
    """The federation's users: in simulation a synthetic population (``simulations/``), on a deployment its size N.

    ``world`` describes the synthetic users' world. The server's schema keeps it as plain data it never reads; the
    simulation's schema (``simulations.settings.SimulatedRunSettings``) types and validates it as a
    ``simulations.population.world.World``, so the server needs no synthetic-world types.
    """

    seed: int = 0
    num_users: int = 1000
    eval_users: int = 200
    days: int = 28
    window: int = 32
    client_eval_fraction: float = 0.2
    eval_points_per_user: int = 10
    world: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_range("population.seed", self.seed, 0, SEED_MAX)
        check_range("population.num_users", self.num_users, 1, MAX_POPULATION)
        check_range("population.eval_users", self.eval_users, 0, MAX_POPULATION)
        check_range("population.days", self.days, 1)
        check_range("population.window", self.window, 1, note=" event")
        check_range("population.eval_points_per_user", self.eval_points_per_user, 1)
        check_range("population.client_eval_fraction", self.client_eval_fraction, 0, 1, high_open=True)


@dataclass(frozen=True)
class PrivacySettings:
    mode: str = "user"
    target_epsilon: Optional[float] = 8.0
    delta: float = 1e-5
    clipping_norm: Optional[float] = 0.5
    accountant: str = "rdp"
    record: Optional[RecordLevelDP] = None  # privacy.record: record-level DP-SGD (privacy.record_level)
    noise: str = "secure"  # secure: OS entropy at each release; seeded: reproducible, no guarantee (privacy.randomness)
    clipping: str = "fixed"  # fixed: C = clipping_norm; adaptive: C follows a quantile of update norms (Andrew et al.)
    clipping_quantile: float = 0.5  # adaptive: the share of updates C aims to leave unclipped
    clipping_learning_rate: float = 0.2  # adaptive: the geometric step of C per round
    plan: bool = False  # print the run's privacy plan (privacy.plan) and exit before anything starts
    min_survivors: Optional[int] = None  # distributed: fewest devices whose noise a released sum holds (None: derived)
    mechanism: str = "dpfedavg"  # dpfedavg: Poisson sampling, amplified | bandmf: DP-FTRL, banded MF, no sampling
    bands: Optional[int] = None  # bandmf: the factor's bands = a device's fewest rounds between two it joins

    @property
    def banded(self) -> bool:
        """DP-FTRL with a banded matrix factorisation (``privacy.banded_release``) instead of amplified DP-FedAvg."""
        return self.mechanism == "bandmf"

    @property
    def user_level(self) -> bool:
        return self.mode in ("user", "both", "distributed")

    @property
    def distributed(self) -> bool:
        """The devices add the noise under SecAgg+ (``privacy.distributed_dp``); the server never sees an un-noised sum."""
        return self.mode == "distributed"

    @property
    def record_level(self) -> bool:
        return self.mode in ("record", "both")

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise PrivacyConfigError(f"privacy.mode must be one of {list(PRIVACY_MODES)}; found {self.mode!r}.")
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyConfigError(f"privacy.accountant must be one of {list(ACCOUNTANTS)}; found {self.accountant!r}.")
        if self.noise not in NOISE_SOURCES:
            raise PrivacyConfigError(f"privacy.noise must be one of {list(NOISE_SOURCES)}; found {self.noise!r}.")
        if self.clipping not in CLIPPING_RULES:
            raise PrivacyConfigError(f"privacy.clipping must be one of {list(CLIPPING_RULES)}; found {self.clipping!r}.")
        AdaptiveClipping(self.clipping_quantile, self.clipping_learning_rate)  # its own range checks
        if self.user_level:
            for name in ("target_epsilon", "clipping_norm"):
                check_range(f"privacy.{name}", getattr(self, name), 0, low_open=True, note=f" for mode '{self.mode}'",
                            fix="Without user-level DP use privacy=none or record.", error=PrivacyConfigError)
            check_range("privacy.delta", self.delta, 0, 1, low_open=True, high_open=True, error=PrivacyConfigError)
        if self.mechanism not in USER_LEVEL_MECHANISMS:
            raise PrivacyConfigError(f"privacy.mechanism must be one of {list(USER_LEVEL_MECHANISMS)}; found {self.mechanism!r}.")
        if self.banded:
            if self.mode not in ("user", "both"):
                raise PrivacyConfigError(f"privacy.mechanism=bandmf needs privacy.mode user or both (the server adds the "
                                         f"correlated noise); found {self.mode!r}.")
            if self.clipping != "fixed":
                raise PrivacyConfigError("privacy.mechanism=bandmf needs privacy.clipping=fixed (its sensitivity "
                                         "assumes one clipping norm for every round).")
        if self.bands is not None:
            check_range("privacy.bands", self.bands, 1, integer=True, note=" (rounds between two a device joins)",
                        error=PrivacyConfigError)
        if self.min_survivors is not None:
            check_range("privacy.min_survivors", self.min_survivors, 2, note=" (a sum of one device's share is that device's)",
                        error=PrivacyConfigError)
        if self.record_level and self.record is None:
            raise PrivacyConfigError(f"privacy.record must be set for mode '{self.mode}' (noise_multiplier, max_grad_norm, target_epsilon, delta).")


@dataclass(frozen=True)
class StrategySettings:
    name: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.0  # FedAvg's server momentum (FedAvgM, Hsu et al. 2019); post-processing under DP
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    beta: float = 0.2
    num_malicious_nodes: int = 0  # Krum's f: it scores each update by its n - f - 2 nearest neighbours

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy.name must be one of {list(STRATEGIES)}; found {self.name!r}.")
        check_range("strategy.num_malicious_nodes", self.num_malicious_nodes, 0, note=" (Krum's f)")
        check_range("strategy.server_lr", self.server_lr, 0, low_open=True)
        check_range("strategy.momentum", self.momentum, 0, 1, high_open=True, note=" (FedAvg's server momentum)")
        check_range("strategy.beta", self.beta, 0, 0.5, high_open=True, note=" (trimmed fraction per side)")
        for name in ("beta_1", "beta_2"):  # FedAdam's moment decays
            check_range(f"strategy.{name}", getattr(self, name), 0, 1, high_open=True)
        check_range("strategy.tau", self.tau, 0, low_open=True, note=" (FedAdam's adaptivity, added to the root of v)")


@dataclass(frozen=True)
class AttackSettings:
    """Simulation only: ``fraction`` of the synthetic users are malicious and play ``kind`` (``simulations/federation/attacks.py``)."""

    kind: str = "none"
    fraction: float = 0.0
    scale: float = 10.0  # the factor of kind=scale

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ConfigError(f"simulation.attack.kind must be one of {list(ATTACK_KINDS)}; found {self.kind!r}.")
        check_range("simulation.attack.fraction", self.fraction, 0, 1, note=" (the share of users that are malicious)")
        check_range("simulation.attack.scale", self.scale, -1e6, 1e6, note=" (a finite factor)")

    def instructions(self) -> AttackInstructions | None:
        """What the clients are sent each round; None (nothing sent) when nobody attacks."""
        if self.kind == "none" or self.fraction == 0.0:
            return None
        return AttackInstructions(kind=self.kind, fraction=self.fraction, scale=self.scale)


@dataclass(frozen=True)
class SimulationSettings:
    rounds: int = 30
    sample_rate: float = 0.1
    num_cpus_per_client: float = 1.0
    round_timeout_s: float = 300.0
    node_wait_s: float = 300.0
    final_eval_clients: int = 100
    central_baseline_epochs: int = 1
    baseline_users: int = 1000
    nodes: int = 0
    users_per_message: int = 1
    attack: AttackSettings = field(default_factory=AttackSettings)

    def __post_init__(self) -> None:
        check_range("simulation.nodes", self.nodes, 0, note=" (0: one node per user)")
        check_range("simulation.users_per_message", self.users_per_message, 1)
        check_range("simulation.rounds", self.rounds, 1)
        check_range("simulation.sample_rate", self.sample_rate, 0, 1, low_open=True)
        for name in ("num_cpus_per_client", "round_timeout_s", "node_wait_s"):
            check_range(f"simulation.{name}", getattr(self, name), 0, low_open=True)
        check_range("simulation.final_eval_clients", self.final_eval_clients, 0)
        check_range("simulation.central_baseline_epochs", self.central_baseline_epochs, 0)
        check_range("simulation.baseline_users", self.baseline_users, 0, note=" (0: every federation user)")


@dataclass(frozen=True)
class DeploymentSettings:
    """How the server meets its nodes: Flower's simulation (node slots playing synthetic users) or real SuperNodes."""

    min_nodes: Optional[int] = None  # nodes that must be connected before round 1; None = every simulated node
    server_eval: bool = True  # score on held-out synthetic users each round, baselines at the end (simulation only)
    warm_up_nodes: int = 4  # untimed round trip before round 1 (simulation workers start slowly); 0 skips it
    engine: str = "simulation"  # "simulation": Flower's simulation engine; "real": SuperNodes on devices

    def __post_init__(self) -> None:
        if self.engine not in ("simulation", "real"):
            raise ConfigError(f"deployment.engine must be one of ['simulation', 'real']; found {self.engine!r}.")
        if self.min_nodes is not None:
            check_range("deployment.min_nodes", self.min_nodes, 1, note=" (or null for population.num_users)")
        check_range("deployment.warm_up_nodes", self.warm_up_nodes, 0)


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
        check_range("secagg.reconstruction_threshold", self.reconstruction_threshold, 2, self.num_shares - 1,
                    note=" (secagg.num_shares - 1 at most)")
        check_range("secagg.quantization_range", self.quantization_range, 2, SECAGG_MODULUS_RANGE, high_open=True,
                    note=" (2**32 is SecAgg+'s modulus)")


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

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, SEED_MAX)

    @property
    def simulated_nodes(self) -> int:
        """SuperNodes the simulation engine starts: the slots (at most one per user), or one node per user."""
        return min(self.simulation.nodes, self.population.num_users) if self.simulation.nodes else self.population.num_users


def _check_delta(s: RunSettings) -> None:
    """delta < 1/N, N the users sampled from: the simulation's population, or on a real deployment the nodes
    connected at round 1, at least ``deployment.min_nodes`` (checked again once they are known)."""
    if s.deployment.engine == "simulation":
        n, key, what = s.population.num_users, "population.num_users", "the simulated users"
    elif s.deployment.min_nodes is not None:
        n, key, what = s.deployment.min_nodes, "deployment.min_nodes", ("the fewest nodes round 1 starts with; the run "
                                                                         "checks again against the nodes connected")
    else:
        return
    if not s.privacy.delta < 1.0 / n:
        raise PrivacyConfigError(f"privacy.delta must be < 1/{key} = {1.0 / n:g} ({what}; a larger delta can leak one "
                                 f"user's data outright); found {s.privacy.delta}.")


def _check_distributed(s: RunSettings) -> None:
    """privacy=distributed: the devices noise their shares of a SecAgg+ sum, from their own OS entropy."""
    needs = [("secagg.enabled", s.secagg.enabled, "true", "the devices' noise shares only protect a sum SecAgg+ hides "
              "the parts of"),
             ("privacy.noise", s.privacy.noise == "secure", "secure", "each device draws its share from its own OS "
              "entropy; a seeded share could be subtracted"),
             ("privacy.clipping", s.privacy.clipping == "fixed", "fixed", "adaptive clipping is not built for the "
              "distributed mechanism yet"),
             ("privacy.accountant", s.privacy.accountant == "rdp", "rdp", "the sum of the devices' discrete shares is "
              "accounted in RDP (Kairouz et al., Zhu & Wang); PRV has no bound for it here")]
    for key, holds, value, why in needs:
        if not holds:
            raise PrivacyConfigError(f"privacy=distributed needs {key}={value} ({why}).")


def bands_of(s: RunSettings) -> int:
    """privacy=bandmf: the factor's bands b, ``privacy.bands`` or, unset, ``round(1 / simulation.sample_rate)`` (each
    round then trains the same expected cohort qN as DP-FedAvg at q), at most the rounds."""
    bands = s.privacy.bands or max(1, round(1.0 / s.simulation.sample_rate))
    return min(bands, s.simulation.rounds)


def _check_banded(s: RunSettings) -> None:
    """privacy.mechanism=bandmf: the server adds correlated noise it keeps in memory between rounds."""
    if s.privacy.bands is not None and s.privacy.bands > s.simulation.rounds:
        raise PrivacyConfigError(f"privacy.bands must be <= simulation.rounds = {s.simulation.rounds} (a device joins at "
                                 f"most once a band); found {s.privacy.bands}.")
    if s.resume:
        raise ConfigError("resume=true is refused with privacy.mechanism=bandmf: the correlated noise of the last "
                          "privacy.bands rounds lives only in the server's memory (stored, it could be subtracted), "
                          "so a resumed run could not continue the factorisation. Start a new run.")


def _check_across_groups(s: RunSettings) -> None:
    if s.simulation.nodes > s.population.num_users:
        raise ConfigError(
            f"simulation.nodes must be <= population.num_users = {s.population.num_users} (each slot plays one "
            f"sampled user at a time; more slots than users would wait for nodes that never start); found "
            f"{s.simulation.nodes}."
        )
    if s.simulation.nodes and s.deployment.engine != "simulation":
        raise ConfigError(
            f"simulation.nodes={s.simulation.nodes} (node slots playing synthetic users) is simulation-only; with "
            f"deployment.engine={s.deployment.engine!r} every SuperNode is a device with its own log. Set simulation.nodes=0."
        )
    if s.privacy.noise == "seeded" and s.deployment.engine != "simulation":
        raise PrivacyConfigError(
            f"privacy.noise=seeded is refused with deployment.engine={s.deployment.engine!r}: noise drawn from the "
            "config seed can be regenerated and subtracted by anyone who knows it, so no privacy would hold. "
            "Set privacy.noise=secure (the default)."
        )
    if s.privacy.user_level:
        _check_delta(s)
        if s.strategy.name not in MEAN_STRATEGIES:
            raise ConfigError(
                f"strategy.name={s.strategy.name!r} cannot be combined with user-level DP (privacy.mode="
                f"{s.privacy.mode!r}): the Gaussian mechanism bounds a sum of clipped updates, not a median, "
                f"a trimmed mean or Krum's choice of one update. Use one of {list(MEAN_STRATEGIES)}, or privacy=none/record."
            )
    if s.privacy.distributed:
        _check_distributed(s)
    if s.privacy.banded:
        _check_banded(s)
    if s.secagg.enabled:
        if not s.privacy.user_level:
            raise ConfigError(
                f"secagg.enabled=true needs user-level DP (privacy=user or both; found privacy.mode={s.privacy.mode!r}): "
                "the clipping norm bounds every coordinate of an update, which sets SecAgg's quantisation range."
            )
        if not s.privacy.distributed and s.population.num_users * s.secagg.quantization_range >= SECAGG_MODULUS_RANGE:
            raise ConfigError(
                f"population.num_users * secagg.quantization_range must be < 2**32 (a secure sum of that many "
                f"quantised updates would overflow SecAgg's modulus); found {s.population.num_users} * "
                f"{s.secagg.quantization_range}. Lower secagg.quantization_range."
            )
        if s.simulation.nodes:
            raise ConfigError(f"simulation.nodes={s.simulation.nodes} (node slots playing sampled users) cannot run with "
                              "secagg.enabled=true: SecAgg+ pairs keys with fixed nodes. Add simulation.nodes=0 "
                              "(one SuperNode per user).")
    if s.simulation.attack.kind != "none":
        if s.deployment.engine != "simulation":
            raise ConfigError(
                f"simulation.attack.kind={s.simulation.attack.kind!r} is refused with deployment.engine="
                f"{s.deployment.engine!r}: hostile clients are a simulation-only test, and a real server must never "
                "tell devices to attack. Set simulation.attack.kind=none."
            )
        if s.secagg.enabled:
            raise ConfigError("simulation.attack needs plain aggregation (the SecAgg+ client does not play attacks); "
                              "set secagg.enabled=false or simulation.attack.kind=none.")
    if s.resume and not s.checkpoint:
        raise ConfigError("resume=true needs checkpoint=PATH (the checkpoint.pt of the run to continue).")


def settings_from_config(cfg: DictConfig | dict, schema: type[RunSettings] = RunSettings) -> RunSettings:
    """Validate a composed config against ``schema`` (``RunSettings`` or a subclass, e.g. the simulation's); raise
    ``ConfigError`` naming the offending key."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    try:
        settings = dataclass_from_dict(schema, container)
    except ConfigError:
        raise
    except ValueError as error:  # schema errors and each dataclass's own range checks
        raise ConfigError(str(error)) from None
    _check_across_groups(settings)
    return settings
