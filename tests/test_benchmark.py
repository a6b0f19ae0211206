"""``vla-gym benchmark``: files, determinism across worker counts, resume, bad input."""

from __future__ import annotations

import json

import cv2
import pytest

from vla_gym.benchmark import (
    BENCHMARK_SEED,
    EPISODES_FILE,
    JSON_FILE,
    MARKDOWN_FILE,
    PLOT_FILE,
    SPLITS,
    BenchmarkConfig,
    _training_warnings,
    run_benchmark,
)
from vla_gym.cli import main as cli_main


def _records(path) -> list[dict]:
    lines = (path / EPISODES_FILE).read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: (r["policy"], r["split"], r["seed"]))


def test_two_episodes_per_cell_write_all_three_files(bc_checkpoint, tmp_path):
    out = tmp_path / "reports"
    code = cli_main([
        "benchmark", "--policies", f"scripted,random,{bc_checkpoint}", "--episodes", "2", "--out", str(out),
        "--workers", "2", "--no-progress",
    ])
    assert code == 0
    report = json.loads((out / JSON_FILE).read_text())
    assert [p["label"] for p in report["policies"]] == ["scripted", "random", "bc"]
    assert [s["name"] for s in report["splits"]] == [s.name for s in SPLITS]
    assert report["seeds"] == {**report["seeds"], "first": BENCHMARK_SEED, "last": BENCHMARK_SEED + 1}
    for label, by_split in report["results"].items():
        assert set(by_split) == {s.name for s in SPLITS}
        for cell in by_split.values():
            assert cell["episodes"] == 2 and cell["ci95"][0] <= cell["success_rate"] <= cell["ci95"][1]
    assert all(cell["success_rate"] == 1.0 for cell in report["results"]["scripted"].values())
    assert all(cell["success_rate"] == 0.0 and cell["mean_length"] == 50 for cell in report["results"]["random"].values())
    # Every split changes what the env does: the object split's goals are held out, the
    # object-count splits have that many objects.
    records = _records(out)
    assert all(r["objects"] == int(r["split"][-1]) for r in records if r["split"].startswith("objects_"))
    assert {r["target"] for r in records if r["split"] == "object_test"}.isdisjoint(
        {r["target"] for r in records if r["split"] == "train"}
    )
    markdown = (out / MARKDOWN_FILE).read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| policy |"))
    assert header.count("|") == len(SPLITS) + 2
    assert all(f"| {label} |" in markdown for label in ("scripted", "random", "bc"))
    assert "vla-gym benchmark --policies" in markdown and "## Targets" in markdown
    image = cv2.imread(str(out / PLOT_FILE))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600


def test_same_table_whatever_the_workers_and_after_an_interruption(bc_checkpoint, tmp_path):
    splits = ["train", "object_test", "camera_jitter"]
    runs = {}
    for workers in (1, 2):
        config = BenchmarkConfig(
            policies=[f"bc={bc_checkpoint}", "random"], episodes=3, splits=splits, workers=workers,
            out=str(tmp_path / f"w{workers}"), progress=False,
        )
        runs[workers] = run_benchmark(config)
    assert runs[1]["results"] == runs[2]["results"]
    assert _records(tmp_path / "w1") == _records(tmp_path / "w2")

    # Cut the episode log as an interruption would: a rerun runs only the missing episodes.
    log = tmp_path / "w2" / EPISODES_FILE
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-5]) + lines[-5][:10])
    again = run_benchmark(BenchmarkConfig(
        policies=[f"bc={bc_checkpoint}", "random"], episodes=3, splits=splits, workers=1,
        out=str(tmp_path / "w2"), progress=False,
    ))
    assert again["episodes_run"] == 5
    assert again["results"] == runs[2]["results"]
    assert _records(tmp_path / "w2") == _records(tmp_path / "w1")


def test_checkpoints_from_before_the_object_split_are_flagged():
    old = {"env": {"env_config": {"image_size": 84, "instruction_split": "train"}}}
    assert any("before object splits" in w for w in _training_warnings(old))
    now = {"env": {"env_config": {"image_size": 84, "instruction_split": "train", "object_split": "train",
                                  "camera_jitter": [0.0, 0.0]}}}
    assert _training_warnings(now) == []
    leaked = {"env": {"env_config": {**now["env"]["env_config"], "object_split": "test"}}}
    assert any("object_split='test'" in w for w in _training_warnings(leaked))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"policies": []}, ValueError, "at least one policy"),
        ({"policies": ["scripted"], "episodes": 0}, ValueError, "episodes must be an int from 1"),
        ({"policies": ["scripted"], "splits": ["val"]}, ValueError, r"unknown splits \['val'\]"),
        ({"policies": ["scripted"], "env_kwargs": {"object_split": "test"}}, ValueError, "set by the benchmark"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        BenchmarkConfig(**kwargs)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["benchmark", "--policies", "scripted,nope.pt", "--episodes", "1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "no checkpoint file exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["benchmark", "--policies", "scripted", "--env-kwargs", '{"colour": 1}', "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown vla_gym env kwargs ['colour']" in capsys.readouterr().err
