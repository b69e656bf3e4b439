"""Checks a run's settings against the files and the machine before anything starts (issue 16, item 6).

``settings_from_config`` checks each value against its schema and the rules between groups. What it cannot see is
checked here, before the simulation engine starts Ray, so a run that would crash minutes later with a traceback
fails at once with exit code 2, the key, the rule and the value:

- the checkpoint to resume from exists and ``server.checkpoint`` loads it (weights only: a pickled object is refused);
- the privacy budget can be met at all over the planned rounds (under ``privacy=distributed``: the devices' noise
  shares can be planned for it, for the simulated users or a deployment's ``deployment.min_nodes``);
- the model fits in this machine's memory, in every process that holds it.

A simulation also checks that its synthetic population can be generated
(``simulations.federation.simulation_settings.check_simulation_can_start``).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
import zipfile
from pathlib import Path

from privacy.banded_mf import participations
from privacy.contribution import STATISTICS
from privacy.distributed_dp import DistributedDiscreteGaussian
from privacy.distributed_release import plan_run
from server.settings import RunSettings, bands_of
from validation.config import ConfigError

COPIES_PER_PROCESS = 8
"""Model-sized float32 buffers a process holds at once: weights, gradient, two Adam moments, the global model,
the update, the server's running sum, and one spare for copies in flight."""


def check_can_start(settings: RunSettings, *, planning: bool = False) -> None:
    """Raise ``ConfigError`` (or ``PrivacyConfigError``) naming the key, rule and value of the first check that fails.

    ``planning``: the caller prints the privacy plan and exits (``simulations.run`` with ``privacy.plan=true``); any
    other entry refuses ``privacy.plan=true`` rather than run while the user asked only for a plan.
    """
    if not planning:
        check_no_plan(settings)
    if settings.resume and settings.checkpoint:
        check_checkpoint_file(settings.checkpoint)
    if settings.privacy.distributed:
        # The plan for N: the simulated users (the run's own plan, cached), or on a deployment the fewest nodes it
        # starts with (more nodes only add expected devices a round); without deployment.min_nodes, N is known late.
        simulated = settings.deployment.engine == "simulation"
        population = settings.population.num_users if simulated else settings.deployment.min_nodes
        if population is not None:
            distributed_plan(settings, population)
    elif settings.privacy.user_level:
        _check_budget_reachable(settings)
    _check_model_fits(settings)


def check_no_plan(settings: RunSettings) -> None:
    """Refuse ``privacy.plan=true`` in an entry that would run rather than print the plan."""
    if settings.privacy.plan:
        raise ConfigError("privacy.plan=true asks for the privacy plan only, and this entry would run: only "
                          "`python -m simulations.run ... privacy.plan=true` prints it (or `python -m privacy.plan "
                          "--users N ...` for any population). Drop privacy.plan here; found privacy.plan=true.")


def check_checkpoint_file(path_text: str) -> None:
    """Refuse a checkpoint path that is missing, not a file, or not a PyTorch archive (``torch.save``'s zip)."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ConfigError(f"checkpoint={path_text}: no such file; give the checkpoint.pt of the run to continue.")
    if not path.is_file():
        raise ConfigError(f"checkpoint={path_text} is not a regular file; give the checkpoint.pt of the run to continue.")
    try:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    except (OSError, zipfile.BadZipFile) as error:
        raise ConfigError(f"checkpoint={path_text} cannot be read ({error}).") from None
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        what = "a zip archive without data.pkl" if names else f"a file of {path.stat().st_size} bytes, not a zip archive"
        raise ConfigError(f"checkpoint={path_text} is not a checkpoint: a checkpoint.pt is the PyTorch archive "
                          f"(torch.save, with data.pkl) a run wrote to its output folder; found {what}.")
    from server.checkpoint import CheckpointError, load_checkpoint  # torch, only when resuming

    try:  # weights-only: a tampered file is refused here, before anything starts, and nothing in it runs
        load_checkpoint(path)
    except CheckpointError as error:
        raise ConfigError(str(error)) from None


def _check_budget_reachable(settings: RunSettings) -> None:
    """Refuse a target ε that no noise can meet: Opacus' calibration gives up at noise multiplier ``MAX_SIGMA``."""
    from opacus.accountants.utils import MAX_SIGMA

    from privacy.accounting import PrivacyLedger

    privacy, sim = settings.privacy, settings.simulation
    with warnings.catch_warnings():  # at this much noise the best RDP order is the largest: expected, not a problem
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # Unamplified (q = 1) RDP bounds every sampled mechanism's ε from above and costs nothing, where Opacus'
        # series at q = 0.5 and this noise takes ~3 s: the exact floor is computed only when the bound is not enough.
        floor = PrivacyLedger().epsilon_after(noise_multiplier=MAX_SIGMA, sample_rate=1.0, delta=privacy.delta,
                                              accountant="rdp", steps=sim.rounds)
        # The releases the run's own accountant counts: R at q, or under bandmf the k rounds a device can join, unamplified.
        rate, steps = ((1.0, participations(sim.rounds, bands_of(settings))) if privacy.banded
                       else (sim.sample_rate, sim.rounds))
        if floor > privacy.target_epsilon:  # type: ignore[operator]
            floor = PrivacyLedger().epsilon_after(noise_multiplier=MAX_SIGMA, sample_rate=rate,
                                                  delta=privacy.delta, accountant=privacy.accountant, steps=steps)
    if floor > privacy.target_epsilon:  # type: ignore[operator]
        raise ConfigError(
            f"privacy.target_epsilon must be more than the ε that even noise multiplier z={MAX_SIGMA:g} (Opacus' "
            f"largest) spends over {steps} releases at q={rate}, δ={privacy.delta:g} (simulation.rounds="
            f"{sim.rounds}): {floor:.3g}; found {privacy.target_epsilon}.")


def model_parameters(settings: RunSettings) -> int:
    """The model's parameter count, built on PyTorch's meta device (shapes only, no memory)."""
    import torch

    from model.network.networks import PreferenceLSTM

    with torch.device("meta"):
        model = PreferenceLSTM(settings.model)
    return sum(p.numel() for p in model.parameters())


def model_bytes_per_process(settings: RunSettings) -> int:
    """Bytes of model-sized buffers one process holds: ``COPIES_PER_PROCESS`` float32 copies, plus one per-example
    gradient per batch example under record-level DP."""
    copies = COPIES_PER_PROCESS + (settings.train.batch_size if settings.privacy.record_level else 0)
    return 4 * copies * model_parameters(settings)


def available_memory() -> int:
    """Bytes this machine can still give: ``MemAvailable`` of /proc/meminfo, else all physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_model_fits(settings: RunSettings) -> None:
    """Refuse a model whose buffers in every process (the server and one per simulation worker) pass free memory."""
    workers = max(1, math.floor((os.cpu_count() or 1) / settings.simulation.num_cpus_per_client))
    per_process = model_bytes_per_process(settings)
    need, have = (workers + 1) * per_process, available_memory()
    if need > have:
        m = settings.model
        raise ConfigError(
            f"model.hidden_size={m.hidden_size}, model.num_layers={m.num_layers} give {model_parameters(settings):,} "
            f"parameters; at {per_process / 2**30:,.1f} GiB per process ({COPIES_PER_PROCESS} float32 copies"
            f"{', plus per-example gradients' if settings.privacy.record_level else ''}) in {workers + 1} processes "
            f"(the server and {workers} worker(s)) that is {need / 2**30:,.1f} GiB, more than this machine's "
            f"{have / 2**30:,.1f} GiB (MemAvailable); found model.hidden_size={m.hidden_size}. Lower it.")


@functools.lru_cache(maxsize=16)
def distributed_plan(settings: RunSettings, population: int) -> DistributedDiscreteGaussian:
    """``privacy=distributed``: the devices' noise shares for the run's budget over N = ``population`` (cached: the
    same settings always give the same plan, so a resumed run rebuilds its own)."""
    p, sim = settings.privacy, settings.simulation
    return plan_run(target_epsilon=p.target_epsilon, delta=p.delta, sample_rate=sim.sample_rate,  # type: ignore[arg-type]
                    rounds=sim.rounds, population=population, clipping_norm=p.clipping_norm,  # type: ignore[arg-type]
                    dimension=model_parameters(settings) + len(STATISTICS), min_survivors=p.min_survivors)
