"""``benchmarks/device_room.py --quick`` runs and ends with its JSON line of latencies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow  # a benchmark's smoke test, as in tests/test_benchmarks.py: make test runs it
def test_the_quick_benchmark_prints_its_json_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_room.py"), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(line) == {"request_ms", "generate_s", "pipeline_s", "install_ms", "first_generate_s",
                         "first_install_s", "duration_s"}
    assert line["duration_s"] == 10.0 and all(value > 0 for value in line.values())
