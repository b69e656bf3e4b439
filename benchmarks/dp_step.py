"""Time one training step of the preference LSTM: non-private, our DP-SGD step, and stock Opacus (DPLSTM).

A step is forward + backward + optimizer step on one batch of right-padded windows (a quarter of them shorter than
the window, like the first windows of a user's log). Three ways, same weights, one thread:

1. non-private: ``PreferenceLSTM`` as it trains without privacy (mean cross-entropy, Adam): the fused recurrence of
   ``model/per_sample/lstm.py`` with ``per_sample=False``, which replaced ``nn.LSTM`` on packed input for training
   because on CPU the packed backward is slow (profiled: mostly ``slice_backward`` zero-filling). The floor. For
   reference, also ``nn.LSTM``'s fused kernel on the *unpacked* padded batch (not the same model: its reverse
   direction reads the padding).
2. DP (ours): the same model with ``per_sample_grads=True`` (``model.per_sample``), summed cross-entropy, Opacus'
   ``DPOptimizer`` (clip every sample's gradient, add Gaussian noise, average over the expected batch size, Adam).
3. stock Opacus: ``nn.LSTM`` replaced by ``opacus.layers.DPLSTM`` (weights copied by name), ``GradSampleModule`` in
   hooks mode, the same ``DPOptimizer``.

The machine is shared and noisy, so repetitions alternate between the methods (and between batch shapes) and the
tables report medians, of the thread's CPU time (primary: it does not count time the core spent on other processes)
and of wall-clock time. Run: ``.venv/bin/python benchmarks/dp_step.py [--quick]``. The last line printed is one
JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import opacus  # noqa: E402
from opacus import GradSampleModule  # noqa: E402
from opacus.layers import DPLSTM  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

from model.features.encoding import FEATURE_DIM, GENRE_SLOTS  # noqa: E402
from model.network.networks import PreferenceLSTM  # noqa: E402
from model.log.vocab import GENRES  # noqa: E402

SHAPES = [(16, 32), (16, 64), (64, 32), (64, 64)]
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0


def make_batch(batch: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows ``[B, T, FEATURE_DIM]`` (genre one-hot + features), lengths, and genre targets."""
    x = torch.rand(batch, steps, FEATURE_DIM, generator=generator)
    x[..., :GENRE_SLOTS] = F.one_hot(torch.randint(GENRE_SLOTS, (batch, steps), generator=generator), GENRE_SLOTS)
    lengths = torch.full((batch,), steps, dtype=torch.int64)
    short = batch // 4
    lengths[:short] = torch.randint(1, steps + 1, (short,), generator=generator)
    x[torch.arange(steps) >= lengths[:, None]] = 0.0
    targets = torch.randint(len(GENRES), (batch,), generator=generator)
    return x, lengths, targets


def dp_optimizer(params, expected_batch_size: int) -> DPOptimizer:
    return DPOptimizer(torch.optim.Adam(params, lr=1e-3), noise_multiplier=NOISE_MULTIPLIER,
                       max_grad_norm=MAX_GRAD_NORM, expected_batch_size=expected_batch_size, loss_reduction="mean")


def step_functions(batch: int, steps: int) -> dict[str, Callable[[], None]]:
    """One closure per method, each doing a full training step on its own copy of the same model and batch."""
    torch.manual_seed(0)
    x, lengths, targets = make_batch(batch, steps, torch.Generator().manual_seed(batch * 1000 + steps))
    base = PreferenceLSTM().train()

    plain = copy.deepcopy(base)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def non_private() -> None:
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x, lengths), targets).backward()
        plain_opt.step()

    unpacked = copy.deepcopy(base)
    unpacked_opt = torch.optim.Adam(unpacked.parameters(), lr=1e-3)

    def non_private_unpacked() -> None:
        unpacked_opt.zero_grad(set_to_none=True)
        _, (h_n, _) = unpacked.lstm(unpacked._embed(x))
        last_row = x[torch.arange(x.shape[0]), lengths - 1]  # the model's head reads the predicted event's row too
        logits = unpacked._logits(torch.cat([h_n[-2], h_n[-1]], dim=-1), last_row)
        F.cross_entropy(logits, targets).backward()
        unpacked_opt.step()

    ours = copy.deepcopy(base)
    ours.per_sample_grads = True
    ours_opt = dp_optimizer(ours.parameters(), batch)

    def dp_ours() -> None:
        ours_opt.zero_grad(set_to_none=True)
        # Sum, not mean: p.grad_sample is then each example's own gradient; DPOptimizer averages after clipping.
        F.cross_entropy(ours(x, lengths), targets, reduction="sum").backward()
        ours_opt.step()

    stock = copy.deepcopy(base)
    config = stock.config
    dplstm = DPLSTM(stock.lstm.input_size, config.hidden_size, num_layers=config.num_layers,
                    dropout=config.dropout, bidirectional=config.bidirectional, batch_first=True)
    dplstm.load_state_dict(stock.lstm.state_dict())
    stock.lstm = dplstm
    wrapped = GradSampleModule(stock, batch_first=True, loss_reduction="mean")
    stock_opt = dp_optimizer(wrapped.parameters(), batch)

    def dp_opacus() -> None:
        stock_opt.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x, lengths), targets).backward()
        stock_opt.step()

    return {"non_private": non_private, "unpacked": non_private_unpacked, "dp_ours": dp_ours, "dp_opacus": dp_opacus}


def measure(repetitions: int, warmup: int) -> dict[str, dict[tuple[int, int], dict[str, float]]]:
    """Median ms per step for every (shape, method), repetitions interleaved across both.

    Returns medians of two clocks: ``cpu`` (this thread's CPU time: not inflated while another process holds the
    core, so the steadier measure on a shared machine) and ``wall``.
    """
    functions = {shape: step_functions(*shape) for shape in SHAPES}
    clocks = {"cpu": time.thread_time, "wall": time.perf_counter}
    times = {c: {s: {m: [] for m in f} for s, f in functions.items()} for c in clocks}
    for rep in range(warmup + repetitions):
        for shape, methods in functions.items():
            names = list(methods)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # no method always runs first
                cpu, wall = time.thread_time(), time.perf_counter()
                methods[name]()
                if rep >= warmup:
                    times["cpu"][shape][name].append((time.thread_time() - cpu) * 1e3)
                    times["wall"][shape][name].append((time.perf_counter() - wall) * 1e3)
    return {
        c: {s: {m: statistics.median(v) for m, v in by_method.items()} for s, by_method in by_shape.items()}
        for c, by_shape in times.items()
    }


def print_table(title: str, medians: dict[tuple[int, int], dict[str, float]]) -> None:
    print(title)
    print(f"{'batch':>5} {'T':>4} | {'non-private':>11} {'(unpacked)':>10} {'DP ours':>8} {'Opacus':>8} | "
          f"{'ours/non-priv':>13} {'(/unpacked)':>11} {'Opacus/ours':>11}")
    for (batch, steps), m in medians.items():
        print(f"{batch:>5} {steps:>4} | {m['non_private']:>11.1f} {m['unpacked']:>10.1f} {m['dp_ours']:>8.1f} "
              f"{m['dp_opacus']:>8.1f} | {m['dp_ours'] / m['non_private']:>12.2f}x "
              f"{m['dp_ours'] / m['unpacked']:>10.2f}x {m['dp_opacus'] / m['dp_ours']:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke test, not a measurement")
    parser.add_argument("--repetitions", type=int, default=None, help="timed repetitions per shape and method")
    args = parser.parse_args()
    repetitions = args.repetitions or (3 if args.quick else 15)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus hooks on the first layer
    started = time.perf_counter()
    medians = measure(repetitions, warmup=1 if args.quick else 2)
    print(f"torch {torch.__version__}, opacus {opacus.__version__}, 1 thread; median of {repetitions} interleaved "
          "steps per cell, ms per step")
    print_table("CPU time of the step (primary):", medians["cpu"])
    print_table("wall-clock time of the step:", medians["wall"])
    print(f"total {time.perf_counter() - started:.0f} s")
    cpu = medians["cpu"]
    keys = {shape: f"b{shape[0]}_t{shape[1]}" for shape in cpu}
    print(json.dumps({
        "dp_over_nonprivate": {k: round(cpu[s]["dp_ours"] / cpu[s]["non_private"], 2) for s, k in keys.items()},
        "opacus_over_dp": {k: round(cpu[s]["dp_opacus"] / cpu[s]["dp_ours"], 2) for s, k in keys.items()},
    }))


if __name__ == "__main__":
    main()
