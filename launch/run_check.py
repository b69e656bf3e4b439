"""Check a run's config on the operator's machine before ``flwr run`` submits it.

The ServerApp composes ``conf/<config-name>.yaml`` with the run's overrides (``server.server_app.compose_settings``)
and checks it (``server.preflight.check_can_start``); a mistake found there costs a submitted run, a Hydra traceback
in the server's log and a failed run left behind. ``check_run_config`` makes the same composition and the same checks
first, and says what is wrong in one line that names the override and the key. Hydra's own advice for an unknown key
("use +key=value to append") is wrong here: the run's schema would refuse the added key.
"""

from __future__ import annotations

import re

from validation.config import ConfigError
from privacy.errors import PrivacyConfigError


class RunConfigError(ValueError):
    """The run's config would fail in the ServerApp; one line naming the override or key, the rule and the value."""


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _allowed_keys(config_name: str, full_key: str) -> list[str]:
    """The keys next to ``full_key`` in the composed config without overrides (empty if its parent is not a group)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    from server.server_app import CONF_DIR

    parent_path = full_key.rpartition(".")[0]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(config_name=config_name)
    parent = OmegaConf.select(config, parent_path) if parent_path else config
    return sorted(str(k) for k in parent.keys() if k != "hydra") if isinstance(parent, DictConfig) else []


def _explain_hydra(error: Exception, config_name: str, overrides: list[str]) -> str:
    """One line for a Hydra composition error: the override, the key and what exists instead."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException):
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        if not group:
            return f"--config-name {config_name}: there is no conf/{config_name}.yaml."
        return (f"{group}={option}: conf/{group}/ has no option {option!r}; choose one of "
                f"{', '.join(error.options or [])}.")
    if isinstance(error, OverrideParseException):
        return f"cannot read override: {_one_line(str(error).split('See https')[0])} (write KEY=VALUE)."
    full_key = getattr(error.__cause__, "full_key", None)
    if full_key:
        override = next((o for o in overrides if f"{o.split('=', 1)[0].lstrip('+~')}.".startswith(f"{full_key}.")),
                        full_key)
        allowed = _allowed_keys(config_name, str(full_key))
        parent = str(full_key).rpartition(".")[0] or "the top level"
        return (f"override {override}: conf/{config_name}.yaml has no key {full_key}"
                + (f"; {parent} has: {', '.join(allowed)}." if allowed else "."))
    return _one_line(str(error))


def check_run_config(config_name: str, overrides: list[str]) -> None:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and check it as the ServerApp will.

    Raises:
        RunConfigError: naming the override or key, the rule and the value, in one line.
    """
    from hydra.errors import HydraException

    from server.preflight import check_can_start
    from server.server_app import compose_settings

    try:
        settings = compose_settings(config_name, overrides)
        check_can_start(settings)
    except HydraException as error:
        raise RunConfigError(_explain_hydra(error, config_name, overrides)) from None
    except (ConfigError, PrivacyConfigError) as error:
        raise RunConfigError(_one_line(str(error))) from None
