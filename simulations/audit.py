"""Empirical privacy audit of the user-level DP-FedAvg release, with Dirac canary clients.

The game. A run is a federation of ``canaries_per_run`` canary clients, each in the population independently with
probability 1/2 (Steinke, Nasr & Jagielski 2023). Canary i always sends the same update: ``canary_norm`` * C along
its own coordinate e_i (a Dirac canary, longer than C so that a skipped clip shows). Nobody else takes part: DP
must hold whatever the other users send, so the strongest adversary knows their updates and subtracts them, which
leaves exactly this view. Every round is played by the mechanism that runs (``simulations.audit_mechanism``:
``server.round.poisson_sample``, then ``privacy.user_level.UserLevelGaussian`` clips, sums, adds noise z*C from
``privacy.randomness`` and records the release in its ``PrivacyLedger``), and the adversary reads every round's
release: canary i's coordinate times qN / C.

The attack (``privacy.audit_attack``). One canary in ``tune_every`` tunes it: the adversary fits the shift and the
noise it sees and picks the threshold on the Neyman-Pearson log-likelihood ratio that proves most on them. The
other canaries are held out, and give two bounds at confidence 1 - alpha each:

- ``epsilon``: the test's counts over the held-out canaries, bounded with Clopper-Pearson intervals through
  TPR <= e^eps FPR + delta (``privacy.audit_bounds``; Kairouz, Oh & Viswanath 2015, Thm. 2.1; Jagielski, Ullman &
  Oprea 2020). It counts the canaries as independent trials, which they are for the mechanism as specified: each
  owns a coordinate whose noise is drawn independently and each is sampled independently (isolation, which Keinan,
  Shenfeld & Ligett 2025 show is what lets one run audit tightly). The audit *flags* the mechanism when this bound
  is above the ledger's epsilon: the code does not release the mechanism its ledger describes, or the accountant
  is wrong.
- ``one_run``: Steinke et al.'s bound from guesses on the first run's held-out canaries (``privacy.audit_one_run``).
  It assumes nothing but DP, and pays for that with its 2 m delta term.

Andrew et al. 2024 ("One-shot Empirical Privacy Estimation for Federated Learning") instead fit a Gaussian to the
cosines between canaries and the released updates and read off an epsilon: an estimate, not a bound, and under
Poisson sampling a canary's statistic is a mixture, not a Gaussian; this audit uses the exact likelihood ratio.

The noise, the sampling and the canaries' coins come from OS entropy (``noise="secure"``, the default: what an
attacker faces); ``noise="seeded"`` derives all three from ``seed`` so tests are reproducible, and guarantees
nothing (``privacy.randomness.SEEDED_WARNING``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier
from privacy.audit_attack import ReleaseModel, choose_test, fit_release_model, log_likelihood_ratio
from privacy.audit_bounds import epsilon_lower_bound
from privacy.audit_one_run import OneRunBound, top_guesses_epsilon_lower_bound
from privacy.randomness import NOISE_SOURCES, gaussian_noise, sampling_generator
from server.settings import RunSettings
from simulations.audit_mechanism import Arrays, MechanismSpec, release_rounds

CANARY_ARRAY = "canaries"
"""The one array of the audit's model: coordinate i belongs to canary i."""


@dataclass(frozen=True)
class AuditConfig:
    """One audit: the mechanism's parameters (as a run's config gives them) and the canary game's size.

    Attributes:
        target_epsilon: the budget the noise multiplier is calibrated for.
        delta, sample_rate, rounds, clipping_norm, accountant: the user-level mechanism's, as in a run.
        canaries_per_run: the population N of one run, all canaries; delta must be below 1/N.
        runs: independent runs of the mechanism; each canary takes part in one.
        canary_norm: the length of a canary's update in units of C (>= 1; above 1 a skipped clip is visible).
        tune_every: one canary in this many tunes the attack; the others are held out for the bounds.
        alpha: each bound holds with confidence 1 - alpha.
        noise: ``secure`` (OS entropy for the noise, the sampling and the canaries' coins) or ``seeded``.
        seed: keys every draw when ``noise`` is ``seeded``; unused otherwise.
    """

    target_epsilon: float
    delta: float
    sample_rate: float
    rounds: int
    clipping_norm: float
    accountant: str = "rdp"
    canaries_per_run: int = 5000
    runs: int = 20
    canary_norm: float = 4.0
    tune_every: int = 4
    alpha: float = 0.05
    noise: str = "secure"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0.0:
            raise ValueError(f"target_epsilon must be > 0; found {self.target_epsilon}.")
        if not 0.0 < self.sample_rate <= 1.0 or self.rounds < 1 or not self.clipping_norm > 0.0:
            raise ValueError(f"need 0 < sample_rate <= 1, rounds >= 1 and clipping_norm > 0; found "
                             f"{self.sample_rate}, {self.rounds}, {self.clipping_norm}.")
        if self.tune_every < 2 or self.canaries_per_run < 2 * self.tune_every or self.runs < 1:
            raise ValueError(f"need tune_every >= 2, canaries_per_run >= 2 * tune_every (canaries to tune and to "
                             f"hold out) and runs >= 1; found {self.tune_every}, {self.canaries_per_run}, "
                             f"{self.runs}.")
        if not 0.0 < self.delta < 1.0 / self.canaries_per_run:
            raise ValueError(f"delta must be in (0, 1/canaries_per_run) = (0, {1.0 / self.canaries_per_run:g}); "
                             f"found {self.delta}.")
        if not self.canary_norm >= 1.0:
            raise ValueError(f"canary_norm must be >= 1 (a canary at least as long as the clip); found "
                             f"{self.canary_norm}.")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1); found {self.alpha}.")
        if self.noise not in NOISE_SOURCES:
            raise ValueError(f"noise must be one of {list(NOISE_SOURCES)}; found {self.noise!r}.")

    @classmethod
    def from_settings(cls, settings: RunSettings, **game: object) -> AuditConfig:
        """The audit of a run's user-level mechanism: target epsilon, delta, q, rounds, C, accountant and noise
        source from the composed config; ``game`` sets the canary game's fields (and may override those)."""
        p, s = settings.privacy, settings.simulation
        if not p.user_level or p.target_epsilon is None or p.clipping_norm is None:
            raise ValueError(f"the audit needs user-level DP (privacy=user or both); found privacy.mode {p.mode!r}.")
        mechanism = dict(target_epsilon=p.target_epsilon, delta=p.delta, sample_rate=s.sample_rate,
                         rounds=s.rounds, clipping_norm=p.clipping_norm, accountant=p.accountant, noise=p.noise)
        return cls(**{**mechanism, **game})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Observations:
    """What the runs showed: each canary's coordinate in every round (in units of C), whether it was in, and the
    ledger of one run (every run records the same releases)."""

    seen: np.ndarray
    included: np.ndarray
    ledger: PrivacyLedger


def play(config: AuditConfig, noise_multiplier: float) -> Observations:
    """Play ``config.runs`` independent runs through the mechanism and read each canary's coordinate.

    Raises:
        RuntimeError: if the runs' ledgers disagree (each canary's epsilon is its own run's).
    """
    spec = MechanismSpec(config.clipping_norm, noise_multiplier, config.sample_rate, config.delta, config.accountant)
    secure, slots = config.noise == "secure", config.canaries_per_run
    length = np.float32(config.canary_norm * config.clipping_norm)
    zero = {CANARY_ARRAY: np.zeros(slots, dtype=np.float32)}
    seen, included, ledgers = [], [], []
    for run in range(config.runs):
        coins = sampling_generator(secure, [config.seed, run, 0]).random(slots) < 0.5

        def contribution(slot: int, coins: np.ndarray = coins) -> Arrays | None:
            if not coins[slot]:
                return None
            update = np.zeros(slots, dtype=np.float32)
            update[slot] = length
            return {CANARY_ARRAY: update}

        releases, ledger = release_rounds(spec, rounds=config.rounds, candidates=slots, zero=zero,
                                          contribution=contribution,
                                          noise=gaussian_noise(config.noise, [config.seed, run, 2]),
                                          sampling_rng=sampling_generator(secure, [config.seed, run, 1]))
        coordinates = np.stack([np.asarray(r[CANARY_ARRAY], dtype=np.float64) for r in releases], axis=1)
        seen.append(coordinates * (config.sample_rate * slots / config.clipping_norm))
        included.append(coins)
        ledgers.append(ledger)
    if any(ledger.state_dict() != ledgers[0].state_dict() for ledger in ledgers):
        raise RuntimeError(f"every run must record the same releases; found {[l.history for l in ledgers]}.")
    return Observations(np.concatenate(seen), np.concatenate(included), ledgers[0])


@dataclass(frozen=True)
class HeldOutCounts:
    """The chosen test on the held-out canaries: it fired ``hits`` times among the ``trials`` canaries of the world
    it points at ("in" when ``in_above``) and ``false_hits`` times among the ``false_trials`` of the other."""

    threshold: float
    in_above: bool
    hits: int
    trials: int
    false_hits: int
    false_trials: int


@dataclass(frozen=True)
class AuditResult:
    """One audit's figures.

    Attributes:
        config: the audit.
        noise_multiplier: z, calibrated for ``config.target_epsilon``.
        accounted_epsilon: what the mechanism's ledger says one run spent (``config.accountant``).
        tight_epsilon: the same ledger under the PRV accountant (Gopi, Lee & Wutschitz 2021), within its
            discretisation error of the mechanism's exact epsilon: the most any audit of it can prove.
        epsilon: the held-out canaries' Clopper-Pearson bound (confidence 1 - alpha).
        model: the shift and noise the adversary fitted on the tuning canaries.
        counts: the chosen test's counts on the held-out canaries.
        one_run: Steinke et al.'s bound from the first run's held-out canaries (confidence 1 - alpha).
        seconds: the runs' and the attack's wall-clock time.
    """

    config: AuditConfig
    noise_multiplier: float
    accounted_epsilon: float
    tight_epsilon: float
    epsilon: float
    model: ReleaseModel
    counts: HeldOutCounts
    one_run: OneRunBound
    seconds: float

    @property
    def flagged(self) -> bool:
        """The audit proves, at confidence 1 - alpha, more epsilon than the ledger accounts for."""
        return self.epsilon > self.accounted_epsilon


def attack(config: AuditConfig, observed: Observations) -> tuple[ReleaseModel, HeldOutCounts, float, OneRunBound]:
    """Fit and choose on the tuning canaries; count and bound on the held-out ones."""
    held = np.tile(np.arange(config.canaries_per_run) % config.tune_every != 0, config.runs)
    tune, seen, included = ~held, observed.seen, observed.included
    model = fit_release_model(seen[tune & included], seen[tune & ~included], sample_rate=config.sample_rate)
    scores = log_likelihood_ratio(seen, model)
    test = choose_test(scores[tune & included], scores[tune & ~included], delta=config.delta, alpha=config.alpha)
    fires = test.fires(scores)
    aimed = included if test.in_above else ~included  # the world the test points at
    counts = HeldOutCounts(test.threshold, test.in_above, int(np.sum(fires & held & aimed)), int(np.sum(held & aimed)),
                           int(np.sum(fires & held & ~aimed)), int(np.sum(held & ~aimed)))
    epsilon = epsilon_lower_bound(hits=counts.hits, trials=counts.trials, false_hits=counts.false_hits,
                                  false_trials=counts.false_trials, delta=config.delta, alpha=config.alpha)
    first_run = held & (np.arange(held.size) < config.canaries_per_run)
    one_run = top_guesses_epsilon_lower_bound(scores[first_run], included[first_run], delta=config.delta,
                                              alpha=config.alpha)
    return model, counts, epsilon, one_run


def audit(config: AuditConfig) -> AuditResult:
    """Calibrate z for the target as a run does, play every run through the mechanism, attack, and bound epsilon."""
    z = calibrate_noise_multiplier(target_epsilon=config.target_epsilon, delta=config.delta,
                                   sample_rate=config.sample_rate, steps=config.rounds, accountant=config.accountant)
    started = time.perf_counter()
    observed = play(config, z)
    model, counts, epsilon, one_run = attack(config, observed)
    seconds = time.perf_counter() - started
    return AuditResult(
        config=config, noise_multiplier=z,
        accounted_epsilon=observed.ledger.epsilon(delta=config.delta, accountant=config.accountant),
        tight_epsilon=observed.ledger.epsilon(delta=config.delta, accountant="prv"),
        epsilon=epsilon, model=model, counts=counts, one_run=one_run, seconds=seconds,
    )
