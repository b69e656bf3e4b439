"""``server.report_files``: the run's plots and its metrics file."""

from __future__ import annotations

import json
import math

from server import report_files as report_module
from server.report_files import BASELINE_STYLES, figure_against_round, plot_rounds, write_json

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


def test_accuracy_plot_starts_at_round_0_and_draws_each_baseline_in_its_own_style():
    baselines = {"global_most_popular": 0.18, "user_recent_most_frequent": 0.42, "central_nonprivate": 0.3}
    lines = [(v, k, BASELINE_STYLES[i]) for i, (k, v) in enumerate(baselines.items())]
    fig = figure_against_round([0, 1, 2, 3], [0.1, 0.2, 0.25, 0.3], label="global model", ylabel="top-1", lines=lines)
    ax = fig.axes[0]
    styles = {(line.get_color(), str(line.get_linestyle())) for line in ax.get_lines()}
    assert len(styles) == 1 + len(baselines)
    assert ax.get_xlim()[0] == 0
    assert all(float(tick).is_integer() for tick in ax.get_xticks())


def test_plot_rounds_adds_the_initial_model_and_starts_epsilon_at_0(tmp_path, monkeypatch):
    drawn: list[tuple[list, list, bool]] = []
    real = report_module.figure_against_round

    def spy(xs, ys, **kwargs):
        drawn.append((xs, ys, kwargs.get("y_from_zero", False)))
        return real(xs, ys, **kwargs)

    monkeypatch.setattr(report_module, "figure_against_round", spy)
    plot_rounds(_rounds(lambda r: 0.5 * r), tmp_path, initial={"round": 0, "eval_top1": 0.05}, target_epsilon=8.0)
    (acc_x, acc_y, _), (eps_x, eps_y, eps_from_zero) = drawn
    assert (acc_x[0], acc_y[0]) == (0, 0.05) and (eps_x[0], eps_y[0]) == (0, 0.0) and eps_from_zero
