"""``server.report``: the run's plots and its metrics file."""

from __future__ import annotations

import json
import math

from server.report import plot_rounds, write_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rounds(epsilon) -> list[dict]:
    return [{"round": r, "eval_top1": 0.1 + 0.01 * r, "epsilon": epsilon(r)} for r in range(1, 5)]


def test_plot_rounds_writes_accuracy_and_epsilon_pngs(tmp_path):
    paths = plot_rounds(_rounds(lambda r: 0.5 * r), tmp_path, baselines={"majority_genre": 0.12, "central": None},
                        target_epsilon=8.0)
    assert paths == [tmp_path / "accuracy.png", tmp_path / "epsilon.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths)


def test_without_a_finite_epsilon_only_accuracy_is_plotted(tmp_path):
    assert plot_rounds(_rounds(lambda r: None), tmp_path) == [tmp_path / "accuracy.png"]
    assert plot_rounds(_rounds(lambda r: math.inf), tmp_path) == [tmp_path / "accuracy.png"]
    assert not (tmp_path / "epsilon.png").exists()


def test_no_rounds_write_no_plot(tmp_path):
    assert plot_rounds([], tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_write_json_turns_non_finite_floats_into_null(tmp_path):
    write_json(tmp_path / "metrics.json", {"epsilon": math.inf, "rounds": [{"loss": math.nan, "top1": 0.5}]})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"epsilon": None, "rounds": [{"loss": None,
                                                                                               "top1": 0.5}]}
