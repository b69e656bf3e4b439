"""The device room's latency: from a prompt to a WAV with the tiny ACE-Step 1.5 pipeline, and installing a prior.

Measured on one torch thread, the default model (``model=prior``), a calm listener's log of 48 events:

* ``request``: ``DeviceRoom.request`` (the preference from the kept prior's ONNX step and the personal offset, and
  the request and pipeline call it makes). Target <= 5 ms.
* ``generate``: ``DeviceRoom.generate`` for a 10-second piece: log the request, the preference and request, the
  pipeline call (diffusers' ``AceStepPipeline``, tiny random weights: noise) and the WAV written. Target <= 3 s.
* ``install``: ``DeviceRoom.receive_prior`` of a new prior of the same architecture: check, write, fill the kept
  ONNX graph with its weights, load it in ONNX Runtime and compare with torch, swap it in. Target <= 100 ms. The
  first prior of an architecture also exports its graph (seconds, once per device): ``first_install_s``.

Medians of repeated runs (the first generation, which loads the pipeline, is reported apart). Run:
``.venv/bin/python benchmarks/device_room.py [--quick]``; the last line is one JSON object.
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

from model.network.networks import ModelConfig, PreferenceLSTM  # noqa: E402
from studio.room import DeviceRoom  # noqa: E402

PRIOR = ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0, head_dropout=0.0,
                    style_embedding_dim=8, residual=True)
PROMPT = "something relaxing"


def _arrays(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = PreferenceLSTM(PRIOR)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.1)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _log(start: float):
    from model.log.events import Event

    events = []
    for i in range(12):
        t = start + i * 86_400
        events += [Event(t, 60, "generation_requested", prompt="something to listen to"),
                   Event(t + 40, 60, "segment_redone", genre="folk", bpm=92.0, instruments=()),
                   Event(t + 60, 60, "bpm_set", bpm=72.0, direction="down"),
                   Event(t + 90, 60, "segment_kept", genre=("folk", "classical")[i % 2], bpm=72.0,
                         instruments=("acoustic_guitar", "strings"))]
    return events


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    requests, generations, installs = (20, 2, 3) if args.quick else (200, 10, 20)
    with tempfile.TemporaryDirectory() as tmp:
        room = DeviceRoom(Path(tmp) / "events.db", utc_offset_min=60)
        room.log(_log(time.time() - 20 * 86_400))
        started = time.perf_counter()
        room.receive_prior(_arrays(0), PRIOR, run_key="bench", round_number=1)
        first_install = time.perf_counter() - started
        install = []
        for k in range(installs):
            started = time.perf_counter()
            room.preference.priors.install(_arrays(k + 1), PRIOR, run_key="bench", round_number=k + 2, message="train")
            install.append(time.perf_counter() - started)
        room.preference.refresh()
        room.preference.refit_offset()
        request = []
        for _ in range(requests):
            started = time.perf_counter()
            proposal = room.request(PROMPT)
            request.append(time.perf_counter() - started)
        started = time.perf_counter()
        room.generate(PROMPT)
        first_generate = time.perf_counter() - started
        generate, pipeline = [], []
        for _ in range(generations):
            started = time.perf_counter()
            piece = room.generate(PROMPT)
            generate.append(time.perf_counter() - started)
            pipeline.append(piece.seconds)
        room.close()
    rows = [("request (preference + request + call)", _ms(request), requests),
            ("generate a 10 s piece (all of it)", _ms(generate), generations),
            ("  of which the pipeline call + WAV", _ms(pipeline), generations),
            ("install a new prior (check, write, ONNX, swap)", _ms(install), installs)]
    print(f"device room, default model, one torch thread; piece: {proposal.request.duration_s:.0f} s, "
          f"{piece.source} (noise)")
    print(f"{'what':48s} {'median ms':>10s} {'n':>5s}")
    for name, value, n in rows:
        print(f"{name:48s} {value:10.3f} {n:5d}")
    print(f"first generation (loads the pipeline): {first_generate:.2f} s; first prior (exports the graph): "
          f"{first_install:.2f} s")
    print(json.dumps({"request_ms": _ms(request), "generate_s": round(statistics.median(generate), 3),
                      "pipeline_s": round(statistics.median(pipeline), 3), "install_ms": _ms(install),
                      "first_generate_s": round(first_generate, 3), "first_install_s": round(first_install, 3),
                      "duration_s": proposal.request.duration_s}))


if __name__ == "__main__":
    main()
