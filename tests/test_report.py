"""The train-agent report writer (vla_gym.report) and the machine description (vla_gym.hardware)."""

from __future__ import annotations

import json
import os
import struct

import pytest

from vla_gym.evaluation import wilson_interval
from vla_gym.hardware import hardware_dict, machine_description
from vla_gym.report import (
    FIGURE_DPI,
    FIGURE_SIZE_INCHES,
    LEARNING_CURVE_FILE,
    REPORT_JSON_FILE,
    REPORT_MARKDOWN_FILE,
    collapse_summary,
    plot_learning_curve,
    render_markdown,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 5_000  # an axes with a curve, a band, lines and a legend is tens of kB
EPISODES = 200
SEED_FIRST = 1000


def _result(policy: str, split: str, successes: int, mean_length: float) -> dict:
    low, high = wilson_interval(successes, EPISODES)
    return {
        "policy": policy,
        "split": split,
        "episodes": EPISODES,
        "successes": successes,
        "success_rate": successes / EPISODES,
        "ci_low": low,
        "ci_high": high,
        "mean_length": mean_length,
        "source": "scripted" if policy == "scripted" else f"runs/quick/{policy}.zip",
    }


def _point(timesteps: int, successes: int, mean_length: float) -> dict:
    low, high = wilson_interval(successes, EPISODES)
    return {
        "timesteps": timesteps,
        "success_rate": successes / EPISODES,
        "ci_low": low,
        "ci_high": high,
        "mean_length": mean_length,
    }


@pytest.fixture
def report() -> dict:
    """2 policies x 2 splits (bc listed first, to check the row order) and a 3-point curve."""
    curve = [_point(0, 124, 31.0), _point(2048, 116, 33.5), _point(4096, 140, 28.2)]  # 62 %, 58 %, 70 %
    bc_level = curve[0]["success_rate"]
    return {
        "title": "vla_gym train-agent report",
        "preset": "quick",
        "created": "2025-01-31T12:00:00+00:00",
        "env_id": "VLAPick-v0",
        "env_kwargs": {"image_size": 84},
        "hardware": hardware_dict(),
        "device": "cpu",
        "eval": {"episodes": EPISODES, "seed_first": SEED_FIRST, "seed_last": SEED_FIRST + EPISODES - 1,
                 "splits": ["train", "test"]},
        "results": [
            _result("bc", "train", 124, 31.0),
            _result("bc", "test", 101, 34.25),
            _result("scripted", "train", 193, 23.1),
            _result("scripted", "test", 190, 23.4),
        ],
        "learning_curve": curve,
        "bc_level": bc_level,
        "collapse": collapse_summary(curve, bc_level),
        "stages": {
            "demos": {"seconds": 61.5, "skipped": True, "summary": "200 episodes"},
            "bc": {"seconds": 125.4, "skipped": False, "summary": "10 epochs"},
            "ppo": {"seconds": 300.0, "skipped": False, "summary": "4096 steps"},
            "evaluation": {"seconds": 40.0, "skipped": False, "summary": "4 cells"},
        },
        "total_seconds": 526.9,
        "files": {"learning_curve": LEARNING_CURVE_FILE, "video": "final_policy.mp4", "demos": "demos.h5",
                  "bc_policy": "bc.zip", "ppo_policy": "ppo.zip"},
        "commands": ["vla-gym train-agent --preset quick --out runs/quick"],
        "notes": ["hand-made report for the tests"],
    }


def _expected_cell(successes: int, mean_length: float) -> str:
    low, high = wilson_interval(successes, EPISODES)
    return (
        f"{100 * successes / EPISODES:.1f} % ({100 * low:.1f}-{100 * high:.1f}) · "
        f"{successes}/{EPISODES}, len {mean_length:.1f}"
    )


def test_write_report_round_trips_json_and_renders_the_numbers(tmp_path, report):
    json_path, md_path = write_report(tmp_path, report)
    assert (json_path, md_path) == (tmp_path / REPORT_JSON_FILE, tmp_path / REPORT_MARKDOWN_FILE)
    assert json.loads(json_path.read_text()) == report

    md = md_path.read_text()
    assert md == render_markdown(report)
    for successes, mean_length in [(193, 23.1), (190, 23.4), (124, 31.0), (101, 34.25)]:
        assert _expected_cell(successes, mean_length) in md
    assert "96.5 % (" in md and "193/200" in md
    assert md.index("| scripted |") < md.index("| bc |"), "scripted comes before bc whatever the input order"
    assert f"seeds {SEED_FIRST}-{SEED_FIRST + EPISODES - 1}" in md
    assert f"![learning curve]({LEARNING_CURVE_FILE})" in md
    # BC level 62 %, lowest 58 %: a 4-point drop, under the 10-point threshold.
    assert "biggest drop below the BC level: 4.0 points: **no collapse**" in md
    assert "COLLAPSE" not in md
    assert "| ppo | 300.0 | 5:00 | no |" in md
    assert "| demos | 61.5 | 1:02 | yes (resumed) |" in md
    assert "[final_policy.mp4](final_policy.mp4)" in md
    assert report["commands"][0] in md and "## Notes" in md


def test_markdown_says_collapse_when_ppo_falls_past_the_threshold(report):
    report["learning_curve"][1] = _point(2048, 96, 40.0)  # 48 %: 14 points below 62 %
    report["collapse"] = collapse_summary(report["learning_curve"], report["bc_level"])
    assert "14.0 points: **COLLAPSE**" in render_markdown(report)


def test_plot_learning_curve_writes_a_png(tmp_path, report):
    path = plot_learning_curve(report["learning_curve"], report["bc_level"], tmp_path / "sub" / LEARNING_CURVE_FILE)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > MIN_PNG_BYTES
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (round(FIGURE_SIZE_INCHES[0] * FIGURE_DPI), round(FIGURE_SIZE_INCHES[1] * FIGURE_DPI))
    assert [p.name for p in path.parent.iterdir()] == [LEARNING_CURVE_FILE], "no temporary file left behind"


@pytest.mark.parametrize(
    ("bc_level", "lowest", "drop", "collapsed"),
    [(0.60, 0.48, 12.0, True), (0.60, 0.55, 5.0, False), (0.60, 0.50, 10.0, False), (0.50, 0.70, 0.0, False)],
)
def test_collapse_summary(bc_level, lowest, drop, collapsed):
    curve = [{"timesteps": 0, "success_rate": bc_level, "ci_low": 0.0, "ci_high": 1.0},
             {"timesteps": 1000, "success_rate": lowest, "ci_low": 0.0, "ci_high": 1.0}]
    summary = collapse_summary(curve, bc_level)
    assert summary == {"min_success_rate": min(bc_level, lowest), "max_drop_points": drop,
                       "threshold_points": 10.0, "collapsed": collapsed}


def test_collapse_summary_is_none_without_curve_or_bc_level(report):
    assert collapse_summary([], 0.5) is None
    assert collapse_summary(report["learning_curve"], None) is None


@pytest.mark.parametrize("key", ["bc_level", "results", "commands", "files"])
def test_missing_key_is_named(tmp_path, report, key):
    del report[key]
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        write_report(tmp_path, report)
    assert list(tmp_path.iterdir()) == [], "nothing is written for an invalid report"


def test_missing_result_key_is_named(report):
    del report["results"][2]["successes"]
    with pytest.raises(ValueError, match=r"report\['results'\]\[2\] is missing key 'successes'"):
        render_markdown(report)


def test_bad_success_rate_is_named(tmp_path, report):
    report["results"][0]["success_rate"] = 62.0  # percent instead of a fraction
    with pytest.raises(ValueError, match=r"\['success_rate'\]=62.0 is outside \[0, 1\]"):
        write_report(tmp_path, report)
    curve = [dict(report["learning_curve"][0], success_rate=1.5)]
    with pytest.raises(ValueError, match=r"learning_curve\[0\]\['success_rate'\]=1.5 is outside \[0, 1\]"):
        plot_learning_curve(curve, None, tmp_path / LEARNING_CURVE_FILE)
    assert list(tmp_path.iterdir()) == []


def test_plot_rejects_an_empty_curve(tmp_path):
    with pytest.raises(ValueError, match="learning curve is empty"):
        plot_learning_curve([], 0.5, tmp_path / LEARNING_CURVE_FILE)


def test_machine_description_mentions_the_core_count():
    assert f"{os.cpu_count()} logical cores" in machine_description()


def test_hardware_dict_keys():
    hw = hardware_dict()
    assert set(hw) == {"cpu", "logical_cores", "usable_cores", "gpu", "platform", "python", "torch",
                       "stable_baselines3", "pybullet", "gymnasium"}
    assert hw["logical_cores"] == os.cpu_count()
    assert hw["gpu"] is None or isinstance(hw["gpu"], str)
