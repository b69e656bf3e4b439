"""``benchmarks/privacy_audit.py``: its smoke run prints the Markdown table and ends with one JSON line."""

from __future__ import annotations

import importlib.util
import json
import math

from tests.helpers import ROOT


def test_the_benchmark_prints_a_markdown_table_and_one_json_line_last(capsys):
    spec = importlib.util.spec_from_file_location("privacy_audit_benchmark", ROOT / "benchmarks" / "privacy_audit.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)

    summary = benchmark.main(["--quick", "--noise", "seeded", "--epsilons", "8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(summary))
    assert any(line.startswith("| target ε | z | accounted ε |") for line in lines)
    [row] = summary["results"]
    assert math.isclose(row["config"]["target_epsilon"], 8.0) and row["flagged"] is False
    assert row["config"]["noise"] == "seeded" and any("not a privacy guarantee" in line for line in lines)
