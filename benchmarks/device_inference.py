"""Latency of on-device streaming inference and the size of the exported device model.

SEED.md's targets: LSTM inference under 80 ms on a phone, streaming (each action updates the hidden state instead
of re-reading the sequence), a cache so a returning user needs no recomputation, and an on-device model under
5 MB. Here, on one CPU thread, with the default distilled device model (``model.network.distill.DEVICE_MODEL``, untrained
weights: latency does not depend on their values):

* ``observe``: ``StreamingPredictor.observe`` for each event of synthetic users' logs: encode the event, one LSTM
  step, and the user's state file written every ``SAVE_EVERY`` events (the log is the durable record; after a crash
  the events since the last save are replayed from it). Median and p99 over all events. ``observe, state saved
  after every event`` is the same with a write per event, as before.
* ``step only``: the LSTM step alone on pre-encoded features, through ``StepKernel`` (what ``observe`` uses) and
  through ``PreferenceLSTM.step`` (which runs the same kernel in inference mode; the difference is its dispatch).
* ``ONNX Runtime step``: the same step from the exported ``.onnx`` file in ONNX Runtime
  (``model.device.runtime.DeviceStep``, one thread): what runs on the device, without torch.
* ``save state``: rewriting one user's state file (temporary file + rename), the part that depends on the disk.
* ``returning user``: ``observe`` with the in-memory cache off, so every event also reads the state file.
* ``full recompute``: the full-sequence forward over the last 256 events: what each event would cost without
  streaming.
* sizes: the ONNX file of the single-step function, the weights, and one user's state file.

Run: ``.venv/bin/python benchmarks/device_inference.py [--quick]``. The last line printed is one JSON object
``{"p50_ms", "p99_ms", "onnx_p50_ms", "onnx_p99_ms", "full_recompute_ms", "model_bytes"}``. Targets: under 1 ms
per event, under 1 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.device.export import export_device_model, state_dict_bytes, step_signature
from model.device.runtime import DeviceStep
from model.device.stream_state import UserStreamState, save_state, state_path
from model.features.encoding import FEATURE_DIM
from model.device.streaming import StreamingPredictor
from model.features.encoding import encode_events
from model.log.events import Event
from model.network.distill import DEVICE_MODEL, new_student
from model.network.step_kernel import StepKernel
from simulations.population.population import Population, PopulationConfig

RECOMPUTE_WINDOW = 256


def user_logs(min_events: int) -> list[tuple[int, list[Event]]]:
    """Whole logs of synthetic users 0, 1, ... until they hold at least ``min_events`` events."""
    population = Population(PopulationConfig(num_users=10_000, days=28, seed=0))
    logs, total = [], 0
    for user_id in range(len(population)):
        events = population.user(user_id).events()
        logs.append((user_id, events))
        total += len(events)
        if total >= min_events:
            return logs
    raise RuntimeError(f"the population holds fewer than {min_events} events; found {total}.")


def percentile_ms(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.array(samples_ns) / 1e6, q))


SAVE_EVERY = 256
"""Under 1 % of events write the file, so the p99 is a step, not a write; a crash replays at most 255 events
(~8 ms of steps) once."""


def time_observe(model, logs, cache_dir: Path, *, max_cached_users: int, save_every: int = 1) -> list[int]:
    """Nanoseconds of each ``observe`` call over all logs, users interleaved as they would arrive."""
    read = {str(user_id): 0 for user_id, _ in logs}  # events of each user read so far: the log before the next
    by_user = {str(user_id): events for user_id, events in logs}
    predictor = StreamingPredictor(model, cache_dir, max_cached_users=max_cached_users, save_every=save_every,
                                   history=lambda user: by_user[user][:read[user]])
    samples = []
    for user_id, events in logs:
        for event in events:
            start = time.perf_counter_ns()
            predictor.observe(user_id, event)
            samples.append(time.perf_counter_ns() - start)
            read[str(user_id)] += 1
    predictor.close()
    return samples


@torch.inference_mode()
def time_step_only(step, model, logs) -> list[int]:
    """Nanoseconds of each call of ``step(features, state)`` over all logs."""
    samples = []
    for _, events in logs:
        features = torch.from_numpy(encode_events(events))
        state = model.initial_state(1)
        for row in features:
            start = time.perf_counter_ns()
            _, state = step(row[None], state)
            samples.append(time.perf_counter_ns() - start)
    return samples


def time_onnx_step(runtime: DeviceStep, logs) -> list[int]:
    """Nanoseconds of each ONNX Runtime step over all logs (features as numpy, state threaded through)."""
    samples = []
    for _, events in logs:
        h, c = runtime.initial_state()
        for row in encode_events(events):
            row = row[None]
            start = time.perf_counter_ns()
            _, h, c = runtime(row, h=h, c=c)
            samples.append(time.perf_counter_ns() - start)
    return samples


def time_save_state(model, path: Path, repeats: int) -> list[int]:
    h, c = model.initial_state(1)
    state = UserStreamState(h, c, torch.zeros(8), "0" * 64, 1, 0.0, torch.zeros(8), torch.zeros(0, FEATURE_DIM))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        save_state(path, state)
        samples.append(time.perf_counter_ns() - start)
    return samples


@torch.inference_mode()
def time_full_recompute(model, logs, repeats: int) -> list[int]:
    events = [event for _, log in logs for event in log][-RECOMPUTE_WINDOW:]
    x = torch.from_numpy(encode_events(events)).unsqueeze(0)
    lengths = torch.tensor([x.shape[1]])
    model(x, lengths)  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        model(x, lengths)
        samples.append(time.perf_counter_ns() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 events and fewer repeats (a few seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    min_events, repeats = (1_000, 20) if args.quick else (5_000, 100)

    model = new_student(DEVICE_MODEL, seed=0).eval()
    logs = user_logs(min_events)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        time_observe(model, logs[:1], tmp_dir / "warmup", max_cached_users=1024)
        observe = time_observe(model, logs, tmp_dir / "cached", max_cached_users=1024, save_every=SAVE_EVERY)
        observe_each = time_observe(model, logs, tmp_dir / "each", max_cached_users=1024)
        returning = time_observe(model, logs, tmp_dir / "uncached", max_cached_users=0)
        state_bytes = state_path(tmp_dir / "cached", logs[0][0]).stat().st_size
        saves = time_save_state(model, tmp_dir / "bench.stream", len(observe))
        exported = export_device_model(model, tmp_dir / "device_step.onnx")
        runtime = DeviceStep(exported.path, step_signature(model))
        time_onnx_step(runtime, logs[:1])  # warm-up
        onnx_step = time_onnx_step(runtime, logs)
    kernel_step = time_step_only(StepKernel(model), model, logs)
    module_step = time_step_only(model.step, model, logs)
    recompute = time_full_recompute(model, logs, repeats)

    rows = [
        (f"observe (encode + step, save every {SAVE_EVERY})", observe),
        ("observe, state saved after every event", observe_each),
        ("  step only, torch (StepKernel)", kernel_step),
        ("  step only, ONNX Runtime (.onnx file)", onnx_step),
        ("  save state file only", saves),
        ("step via PreferenceLSTM.step (kernel + dispatch)", module_step),
        ("returning user (load + observe)", returning),
        (f"full recompute, {RECOMPUTE_WINDOW} events", recompute),
    ]
    print(f"device model: {DEVICE_MODEL}; one thread; {len(observe)} events of {len(logs)} synthetic users")
    print(f"{'what':44s} {'n':>6s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for name, samples in rows:
        print(f"{name:44s} {len(samples):6d} {percentile_ms(samples, 50):9.3f} {percentile_ms(samples, 99):9.3f}")
    print(f"{'exported step (.onnx, weights included)':44s} {exported.size_bytes:>9d} bytes")
    print(f"{'weights (torch.save state_dict)':44s} {state_dict_bytes(model):>9d} bytes")
    print(f"{'one user state file':44s} {state_bytes:>9d} bytes")
    print(json.dumps({
        "p50_ms": round(percentile_ms(observe, 50), 4),
        "p99_ms": round(percentile_ms(observe, 99), 4),
        "save_each_event_p50_ms": round(percentile_ms(observe_each, 50), 4),
        "save_each_event_p99_ms": round(percentile_ms(observe_each, 99), 4),
        "onnx_p50_ms": round(percentile_ms(onnx_step, 50), 4),
        "onnx_p99_ms": round(percentile_ms(onnx_step, 99), 4),
        "full_recompute_ms": round(statistics.median(recompute) / 1e6, 4),
        "model_bytes": exported.size_bytes,
    }))


if __name__ == "__main__":
    main()
