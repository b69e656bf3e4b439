"""A privacy plan before any run: ``python -m privacy.plan --users N --sample-rate q --rounds R --epsilon E``.

Given the population N, the sampling (q, or K expected clients per round, q = K/N), the rounds R, δ and either a
target ε or a noise multiplier z, prints the other, and what the noise does to each round's release: DP-FedAvg's
noisy mean (``privacy.user_level``) carries Gaussian noise of std σ = z·S/K on every coordinate, S = the largest norm
of one device's contribution (``privacy.contribution``: C·√(1 + 3β²), the update clipped to C and its bounded
statistics), while the mean's signal has norm at most C (every update clipped to C). The report gives σ/C, and with
the model's d coordinates (``--parameters``) the noise's norm against C, σ·√d/C.

It refuses, with exit code 2 and the flag and rule named, what cannot work: q outside (0, 1], K > N, δ ≥ 1/N (a δ
that large lets a mechanism leak one user's data outright), a target ε no noise multiplier up to 10⁶ reaches,
both or neither of ``--epsilon`` / ``--noise-multiplier``.

The utility a plan would give is read off the measured privacy-utility surface (``privacy.utility_surface``): the
held-out top-1 the default model reached at the same noise on each round's mean, with its interval, or why no
prediction holds (no surface, or more noise than any measured point). ``python -m simulations.run privacy.plan=true`` prints the plan of a run's
config through ``plan_user_level`` too (``server.run_start.privacy_plan``), with the run's own calibration.

Framework-free: numpy and Opacus' accountants (imported only when ε or z is computed), no torch at import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from privacy.accounting import ACCOUNTANTS, MAX_NOISE_MULTIPLIER, calibrate_noise_multiplier, planned_epsilon
from privacy.banded_mf import participations
from privacy.contribution import contribution_sensitivity
from privacy.errors import PrivacyConfigError
from privacy.utility_surface import SURFACE, PredictedUtility, load_surface, predict_top1

USER_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "privacy" / "user.yaml"
"""The project's user-level DP config: the planner's default clipping norm and accountant are the run's."""
NOISE_DOMINATED = 1.0
"""The ratio to the signal bound C at or above which a round's noise is at least the largest signal the mean can
carry: of the noise std per coordinate (σ/C), or, with the model's d coordinates known, of the noise's norm (σ·√d/C)."""


@dataclass(frozen=True)
class PrivacyPlan:
    """One user-level DP-FedAvg plan: the mechanism's inputs, the ε its ledger gives, and the noise per round.

    Attributes:
        population: N, the users sampled from.
        sample_rate: q, each user's chance of being sampled in a round (Poisson).
        rounds: R, the planned releases at q.
        delta: δ of the (ε, δ) guarantee.
        noise_multiplier: z.
        epsilon: what the ledger of R releases at (z, q), and the ``also`` releases, spends at δ.
        accountant: "rdp" or "prv" (Opacus', with subsampling amplification).
        clipping_norm: C.
        target_epsilon: the budget z was calibrated for, or None when z was given.
        also: further releases at the same z as (sample rate, releases), e.g. the devices' final evaluation.
        parameters: d, the model's coordinates, when known: the noise's norm on a round's mean is then about σ·√d.
        sensitivity: S, the largest norm of one device's contribution as the mechanism noises it (0: the update
            clipped to C and its bounded statistics; under SecAgg+ the run passes its larger, quantised bound).
        bands: b > 0 for DP-FTRL with a banded factor (``privacy.banded_release``): ``sample_rate`` is then 1/b, the
            share of users each round's group holds, and ε is that of the ceil(R/b) rounds a device can join,
            unamplified; 0 for DP-FedAvg.
    """

    population: int
    sample_rate: float
    rounds: int
    delta: float
    noise_multiplier: float
    epsilon: float
    accountant: str
    clipping_norm: float
    target_epsilon: float | None = None
    also: tuple[tuple[float, int], ...] = ()
    parameters: int | None = None
    sensitivity: float = 0.0
    bands: int = 0

    def __post_init__(self) -> None:
        if not self.sensitivity:  # S: one device's largest contribution (the update clipped to C, its statistics)
            object.__setattr__(self, "sensitivity", contribution_sensitivity(self.clipping_norm))

    @property
    def expected_clients(self) -> float:
        """K = qN: the expected cohort, which divides every noisy sum."""
        return self.sample_rate * self.population

    @property
    def noise_std(self) -> float:
        """σ = z·S/K: the noise std on every coordinate of a round's released mean update."""
        return self.noise_multiplier * self.sensitivity / self.expected_clients

    @property
    def noise_to_signal(self) -> float:
        """σ/C: the noise std per coordinate against the bound C on the norm of the mean's signal."""
        return self.noise_std / self.clipping_norm

    @property
    def noise_norm_to_signal(self) -> float | None:
        """σ·√d/C: the (expected) norm of a round's noise against the bound C on its signal's norm; None without d."""
        return None if self.parameters is None else self.noise_to_signal * math.sqrt(self.parameters)

    def verdict(self) -> str:
        """One line: does the plan meet its budget, and how the noise compares with the signal bound (no utility)."""
        budget = (f"ε {self.epsilon:.3g} ≤ target {self.target_epsilon:g}" if self.target_epsilon is not None
                  else f"z {self.noise_multiplier:.4g} spends ε {self.epsilon:.3g}")
        if self.expected_clients < 1.0:
            return (f"{budget}, but K = qN = {self.expected_clients:.3g} < 1: most rounds would release noise alone. "
                    "Raise q or N.")
        if self.noise_to_signal >= NOISE_DOMINATED:
            return (f"{budget}, but noise-dominated: each round's noise std per coordinate is {self.noise_to_signal:.3g}×C,"
                    " at least the largest norm the mean's signal can have. More clients per round or a larger ε lower it.")
        norm = self.noise_norm_to_signal
        if norm is not None and norm >= NOISE_DOMINATED:
            return (f"{budget}; each round's noise has norm ≈ {norm:.3g}×C over d = {self.parameters:,} coordinates, more "
                    f"than the mean's signal can have (≤ C): progress relies on averaging over rounds. More clients "
                    f"per round or a larger ε lower it.")
        where = f" (norm ≈ {norm:.3g}×C over d = {self.parameters:,})" if norm is not None else ""
        return (f"{budget}; each round's noise std per coordinate is {self.noise_to_signal:.3g}×C{where}, the mean's "
                f"signal has norm ≤ C.")

    def lines(self) -> list[str]:
        """The plan as text, one quantity a line."""
        calibrated = (f"calibrated for target ε = {self.target_epsilon:g}" if self.target_epsilon is not None
                      else "given")
        also = "".join(f", plus {n} release{'s' if n > 1 else ''} at q = {q:.4g} (same z)" for q, n in self.also)
        sampling = (f"none assumed: one of {self.bands} groups a round (K = N/b = {self.expected_clients:,.4g}); "
                    f"each device joins rounds >= {self.bands} apart, at most {participations(self.rounds, self.bands)}"
                    if self.bands else
                    f"{self.sample_rate:.6g}  (Poisson; expected clients per round K = qN = {self.expected_clients:,.4g})")
        rows = [
            ("users N", f"{self.population:,}"),
            ("sampling" if self.bands else "sample rate q", sampling),
            ("rounds R", f"{self.rounds}{also}"),
            ("delta δ", f"{self.delta:.3g}  (< 1/N = {1.0 / self.population:.3g})"),
            ("noise multiplier z", f"{self.noise_multiplier:.4f}  ({calibrated})"),
            ("epsilon ε", f"{self.epsilon:.4f}  ({self.accountant} accountant, Opacus, " + (
                "no amplification)" if self.bands else "with amplification by sampling)")),
            ("clipping norm C", f"{self.clipping_norm:g}  (S = {self.sensitivity:.4g}: one device's contribution as noised)"),
            ("noise std σ", f"{self.noise_std:.4g} per coordinate of each round's mean (σ = z·S/K)" + (
                ", correlated across rounds by the banded factor" if self.bands else "")),
            ("signal", f"the mean's norm ≤ C = {self.clipping_norm:g} per round (each update clipped to C)"),
            ("σ/C", f"{self.noise_to_signal:.4g}" + ("" if self.parameters is None else
                    f"  (noise norm ≈ σ·√d = {self.noise_norm_to_signal:.4g}×C over the model's d = {self.parameters:,})")),
            ("utility", self.utility_text()),
        ]
        width = max(len(name) for name, _ in rows)
        title = "user-level DP-FTRL (banded matrix factorisation) plan" if self.bands else "user-level DP-FedAvg plan"
        return [title] + [f"  {name.ljust(width)}  {value}" for name, value in rows] + [
            f"verdict: {self.verdict()}"]

    def as_dict(self) -> dict:
        return {"users": self.population, "sample_rate": self.sample_rate, "clients_per_round": self.expected_clients,
                "rounds": self.rounds, "also": [list(a) for a in self.also], "delta": self.delta,
                "target_epsilon": self.target_epsilon, "noise_multiplier": self.noise_multiplier,
                "epsilon": self.epsilon, "accountant": self.accountant, "clipping_norm": self.clipping_norm,
                "sensitivity": self.sensitivity, "noise_std": self.noise_std, "noise_to_signal": self.noise_to_signal,
                "parameters": self.parameters, "noise_norm_to_signal": self.noise_norm_to_signal,
                "utility": self.utility_dict(), "utility_note": self.utility_text(), "verdict": self.verdict(),
                "bands": self.bands}

    def utility(self) -> PredictedUtility | str:
        """The held-out top-1 the measured surface predicts for this plan, or why it predicts none."""
        if self.bands:
            return ("the measured surface is DP-FedAvg's; the banded mechanism's measured points are in "
                    "benchmarks/results/bandmf_vs_dpfedavg_1k/ and bandmf_vs_dpfedavg_10k.md")
        surface = load_surface()
        if surface is None:
            return f"no measured surface ({SURFACE.name} is missing): no utility is predicted"
        return predict_top1(surface, self.noise_to_signal, rounds=self.rounds, clients_per_round=self.expected_clients)

    def utility_text(self) -> str:
        predicted = self.utility()
        return predicted if isinstance(predicted, str) else predicted.text()

    def utility_dict(self) -> dict | None:
        predicted = self.utility()
        return None if isinstance(predicted, str) else dataclasses.asdict(predicted)


def plan_user_level(*, population: int, sample_rate: float, rounds: int, delta: float, clipping_norm: float,
                    accountant: str = "rdp", target_epsilon: float | None = None,
                    noise_multiplier: float | None = None, also: Sequence[tuple[float, int]] = (),
                    parameters: int | None = None, sensitivity: float = 0.0, bands: int = 0) -> PrivacyPlan:
    """The plan of R releases at (z, q) over N users, and the ``also`` releases at the same z; with ``bands`` b > 0,
    of DP-FTRL with a banded factor: ceil(R/b) releases a device can join and the ``also`` ones, all unamplified.

    Without ``noise_multiplier``, z is ``calibrate_noise_multiplier``'s for ``target_epsilon``; a caller that has
    calibrated already (the run, ``server.run_start.privacy_plan``) passes both. ε is the ledger's for those releases.

    Raises:
        PrivacyConfigError: naming the input that cannot work (δ ≥ 1/N, q outside (0, 1], no z fits the target ...).
    """
    if population < 1 or rounds < 1:
        raise PrivacyConfigError(f"the population and the rounds must be >= 1; found {population}, {rounds}.")
    if not delta < 1.0 / population:
        raise PrivacyConfigError(f"privacy.delta must be < 1/N = {1.0 / population:g} for N = {population} users (a "
                                 f"larger delta can leak one user's data outright); found {delta}.")
    if not clipping_norm > 0.0:
        raise PrivacyConfigError(f"privacy.clipping_norm must be > 0; found {clipping_norm}.")
    also = tuple((1.0 if bands else float(q), int(n)) for q, n in also)
    accounted_rate, steps = (1.0, participations(rounds, bands)) if bands else (sample_rate, rounds)
    with warnings.catch_warnings():  # much noise or few steps: Opacus' note on its alphas, not a problem of the plan
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        if noise_multiplier is None:
            if target_epsilon is None:
                raise PrivacyConfigError("a plan needs a target epsilon or a noise multiplier; found neither.")
            noise_multiplier = calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                                          sample_rate=accounted_rate, steps=steps,
                                                          accountant=accountant, also=also)
        elif not noise_multiplier > 0.0:
            raise PrivacyConfigError(f"the noise multiplier must be > 0; found {noise_multiplier}.")
        epsilon = planned_epsilon(noise_multiplier, sample_rate=accounted_rate, steps=steps, also=also, delta=delta,
                                  accountant=accountant)
    return PrivacyPlan(population=population, sample_rate=sample_rate, rounds=rounds, delta=delta,
                       noise_multiplier=float(noise_multiplier), epsilon=epsilon, accountant=accountant,
                       clipping_norm=clipping_norm, target_epsilon=target_epsilon, also=also, parameters=parameters,
                       sensitivity=sensitivity, bands=bands)


def _user_config() -> dict:
    """conf/privacy/user.yaml, or {} where conf/ is not shipped (the app bundle): then --clipping-norm is required."""
    try:
        import yaml

        return yaml.safe_load(USER_CONFIG.read_text(encoding="utf-8")) or {}
    except (OSError, ImportError):
        return {}


def _parser(defaults: dict) -> argparse.ArgumentParser:
    clipping = defaults.get("clipping_norm")
    parser = argparse.ArgumentParser(
        prog="python -m privacy.plan",
        description="Plan a user-level DP-FedAvg run: the noise multiplier for a target ε (or the ε of a noise "
                    "multiplier), and the noise on each round's mean against its signal. With --bands, plan DP-FTRL "
                    "with a banded matrix factorisation instead (privacy=bandmf: no amplification by sampling).",
        epilog="example: python -m privacy.plan --users 10000 --clients-per-round 100 --rounds 100 --epsilon 2")
    parser.add_argument("--users", type=int, required=True, help="N, the population sampled from")
    cohort = parser.add_mutually_exclusive_group(required=True)
    cohort.add_argument("--clients-per-round", type=float, metavar="K", help="expected clients per round (q = K/N)")
    cohort.add_argument("--sample-rate", type=float, metavar="q", help="each user's chance per round, in (0, 1]")
    parser.add_argument("--rounds", type=int, required=True, help="R, the planned rounds")
    parser.add_argument("--delta", type=float, help="δ, < 1/N (default 1/(10N))")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epsilon", type=float, help="target ε: print the noise multiplier that spends it")
    budget.add_argument("--noise-multiplier", type=float, metavar="Z", help="z: print the ε it spends")
    parser.add_argument("--clipping-norm", type=float, default=clipping, required=clipping is None, metavar="C",
                        help=f"C (default: conf/privacy/user.yaml's clipping_norm, {clipping})")
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default=defaults.get("accountant", "rdp"),
                        help="Opacus' accountant (default: conf/privacy/user.yaml's, %(default)s)")
    parser.add_argument("--bands", type=int, metavar="B",
                        help="plan DP-FTRL with a B-banded factor (privacy=bandmf): one of B groups a round, each "
                             "device at most ceil(R/B) rounds, B apart, no amplification (q is then ignored: K = N/B)")
    parser.add_argument("--parameters", type=int, metavar="D",
                        help="the model's coordinates d, to compare the noise's norm (≈ σ·√d) with the signal's")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON line")
    return parser


def _refusal(args: argparse.Namespace) -> str | None:
    """The first flag whose value cannot work, with the rule and the value; None when all can."""
    n = args.users
    if n < 1:
        return f"--users must be >= 1; found {n}."
    if args.clients_per_round is not None and not 0 < args.clients_per_round <= n:
        return f"--clients-per-round must be in (0, --users = {n}]; found {args.clients_per_round:g}."
    if args.sample_rate is not None and not 0.0 < args.sample_rate <= 1.0:
        return f"--sample-rate must be in (0, 1]; found {args.sample_rate:g}."
    if args.rounds < 1:
        return f"--rounds must be >= 1; found {args.rounds}."
    if args.delta is not None and not 0.0 < args.delta < 1.0 / n:
        return (f"--delta must be in (0, 1/--users) = (0, {1.0 / n:g}) (a larger δ can leak one user's data outright, "
                f"so user-level DP would mean nothing); found {args.delta:g}.")
    if args.epsilon is not None and not args.epsilon > 0.0:
        return f"--epsilon must be > 0; found {args.epsilon:g}."
    if args.noise_multiplier is not None and not args.noise_multiplier > 0.0:
        return f"--noise-multiplier must be > 0; found {args.noise_multiplier:g}."
    if not args.clipping_norm > 0.0:
        return f"--clipping-norm must be > 0; found {args.clipping_norm:g}."
    if args.bands is not None and not 1 <= args.bands <= args.rounds:
        return f"--bands must be in [1, --rounds = {args.rounds}] (a device joins at most once a band); found {args.bands}."
    if args.parameters is not None and args.parameters < 1:
        return f"--parameters must be >= 1; found {args.parameters}."
    return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser(_user_config())
    args = parser.parse_args(argv)
    refusal = _refusal(args)
    if refusal:
        parser.error(refusal)  # exit code 2
    q = args.sample_rate if args.sample_rate is not None else args.clients_per_round / args.users
    if args.bands:
        q = 1.0 / args.bands
    delta = args.delta if args.delta is not None else 1.0 / (10 * args.users)
    try:
        plan = plan_user_level(population=args.users, sample_rate=q, rounds=args.rounds, delta=delta,
                               clipping_norm=args.clipping_norm, accountant=args.accountant,
                               target_epsilon=args.epsilon, noise_multiplier=args.noise_multiplier,
                               parameters=args.parameters, bands=args.bands or 0)
    except PrivacyConfigError as error:
        if args.epsilon is None:
            parser.error(str(error))
        parser.error(f"--epsilon {args.epsilon:g} cannot be reached at --delta {delta:g} over --rounds {args.rounds} "
                     f"at q = {q:g} with any noise multiplier up to {MAX_NOISE_MULTIPLIER:g}: raise --epsilon or "
                     "--delta, or plan fewer rounds or a lower q.")
    print(json.dumps(plan.as_dict()) if args.json else "\n".join(plan.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
