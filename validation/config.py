"""``ConfigError`` and ``check_range``: one way to refuse a setting, naming the key, the rule and the value found.

Used by every settings dataclass (the run's, the generation group's, the synthetic world's), so a bad config reads the
same wherever it is checked and fails before anything starts.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training, naming the key and the allowed range."""


def check_range(key: str, value: object, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, integer: bool = False, note: str = "", fix: str = "",
                error: type[ValueError] = ConfigError) -> None:
    """Raise ``error`` naming ``key``, the rule and ``value`` unless ``value`` is a number between ``low`` and ``high``.

    Bounds are inclusive unless ``low_open`` / ``high_open``; ``None`` is no bound. NaN, ``None`` and non-numbers are
    never in range; with ``integer`` nor is a float (1.0 included: nothing is coerced). ``note`` follows the rule (e.g. " (0: one node per user)"), ``fix`` follows the value found.
    E.g. ``check_range("simulation.sample_rate", 0, 0, 1, low_open=True)`` raises "simulation.sample_rate must be
    in (0, 1]; found 0."
    """
    number = isinstance(value, (int,) if integer else (int, float)) and not isinstance(value, bool)
    if (number and (low is None or (low < value if low_open else low <= value))
            and (high is None or (value < high if high_open else value <= high))):
        return
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {_bound(low)}"
    else:
        rule = f"{'<' if high_open else '<='} {_bound(high)}"
    kind = "an integer " if integer else ""
    raise error(f"{key} must be {kind}{rule}{note}; found {value!r}." + (f" {fix}" if fix else ""))


def _bound(bound: float | None) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
