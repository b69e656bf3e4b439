"""``python -m simulations.summarize``: one truncated or foreign metrics.json is skipped and named, never fatal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _metrics(target: float | None, top1: float) -> dict:
    user = None if target is None else {"target_epsilon": target, "epsilon": target * 0.99, "noise_multiplier": 1.1}
    return {"privacy": {"mode": "user" if user else "none", "user_level": user},
            "rounds": [{"round": 1}], "final": {"eval_top1": top1, "eval_nll": 1.9,
                                                 "baselines": {"user_recent_most_frequent": 0.4,
                                                               "central_nonprivate": None,
                                                               "global_most_popular": 0.2}}}


def _write(root: Path, name: str, content: str) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    return path


def _summarize(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.summarize", str(root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_truncated_or_foreign_metrics_file_is_skipped_and_named_and_the_rest_tabulated(tmp_path):
    _write(tmp_path, "0_eps1", json.dumps(_metrics(1.0, 0.21)))
    _write(tmp_path, "1_eps8", json.dumps(_metrics(8.0, 0.31)))
    cut = _write(tmp_path, "2_cut", json.dumps(_metrics(4.0, 0.3))[:40])
    foreign = _write(tmp_path, "3_other", json.dumps({"loss": [1, 2, 3]}))
    wrong = _write(tmp_path, "4_wrong", json.dumps(_metrics(2.0, 0.2)).replace("0.2,", '"high",', 1))
    run = _summarize(tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "0_eps1" in run.stdout and "1_eps8" in run.stdout and "2_cut" not in run.stdout
    for path in (cut, foreign, wrong):
        assert f"skipped {path}" in run.stderr
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 2
    assert (tmp_path / "privacy_utility.png").exists()


def test_only_bad_files_is_exit_2_naming_them(tmp_path):
    bad = _write(tmp_path, "run", "{")
    run = _summarize(tmp_path)
    assert run.returncode == 2 and f"skipped {bad}" in run.stderr and "no readable metrics.json" in run.stderr
