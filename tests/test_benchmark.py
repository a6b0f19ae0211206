"""``vla-gym benchmark``: files, determinism across worker counts, resume, tasks x splits, bad input."""

from __future__ import annotations

import json

import cv2
import pytest

from vla_gym.benchmark import (
    BENCHMARK_SEED,
    EPISODES_FILE,
    HEATMAP_FILE,
    JSON_FILE,
    MARKDOWN_FILE,
    PLOT_FILE,
    SPLITS,
    BenchmarkConfig,
    _training_warnings,
    benchmark_command,
    run_benchmark,
)
from vla_gym.cli import build_parser
from vla_gym.cli import main as cli_main
from vla_gym.envs.tasks import TASKS
from vla_gym.rundir import OutputError


def _records(path) -> list[dict]:
    lines = (path / EPISODES_FILE).read_text().splitlines()
    return sorted((json.loads(line) for line in lines),
                  key=lambda r: (r["policy"], r.get("task", ""), r["split"], r["seed"]))


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


def test_tasks_by_splits_per_task_tables_pooled_table_heat_map_and_resume(tmp_path):
    """pick (one step) and rearrange (two or three subgoals) x train and object test: one
    block of episodes per task on its own env id, pooled and per-task cells, subgoal
    progress, the heat map, and a rerun that has nothing left to run."""
    out = tmp_path / "tasks"
    config = dict(policies="scripted,random", tasks="pick,rearrange", splits=["train", "object_test"], episodes=2,
                  workers=2, out=str(out), progress=False)
    report = run_benchmark(BenchmarkConfig(**config))
    assert report["tasks"] == ["pick", "rearrange"] and report["env_id"] is None
    assert report["task_env_ids"] == {"pick": "VLAPick-v0", "rearrange": "VLARearrange-v0"}
    assert report["episodes"] == report["episodes_run"] == 2 * 2 * 2 * 2
    assert "--tasks pick,rearrange" in report["command"]
    by_task = report["results_by_task"]
    for label, by_split in report["results"].items():
        for split, pooled in by_split.items():
            cells = [by_task[task][label][split] for task in ("pick", "rearrange")]
            assert [c["episodes"] for c in cells] == [2, 2]
            assert pooled["episodes"] == sum(c["episodes"] for c in cells)
            assert pooled["successes"] == sum(c["successes"] for c in cells)
            for key in ("mean_length", "mean_subgoals_done", "mean_num_subgoals"):
                assert pooled[key] == pytest.approx(sum(c[key] for c in cells) / 2)
            assert report["mean_over_tasks"][label][split] == pytest.approx(
                sum(c["success_rate"] for c in cells) / 2)
            assert cells[0]["mean_num_subgoals"] == 1.0 and cells[1]["mean_num_subgoals"] >= 2
    assert all(c["success_rate"] == 1.0 for t in by_task.values() for c in t["scripted"].values())
    assert all(c["mean_subgoals_done"] == 0.0 for c in by_task["rearrange"]["random"].values())
    records = _records(out)
    assert {(r["task"], r["split"]) for r in records} == {
        (t, s) for t in ("pick", "rearrange") for s in ("train", "object_test")}
    # The same seeds for every task, policy and split.
    assert {r["seed"] for r in records if r["task"] == "rearrange"} == {BENCHMARK_SEED, BENCHMARK_SEED + 1}
    assert all(r["num_subgoals"] >= 2 and 0 <= r["subgoals_done"] <= r["num_subgoals"]
               for r in records if r["task"] == "rearrange")

    markdown = (out / MARKDOWN_FILE).read_text()
    assert markdown.index("## Mean over tasks") < markdown.index("### pick (VLAPick-v0)") < markdown.index(
        "### rearrange (VLARearrange-v0)")
    assert f"![success per task and split]({HEATMAP_FILE})" in markdown
    rearrange_block = markdown[markdown.index("### rearrange"):]
    assert "Mean subgoals done / mean subgoals" in rearrange_block
    assert "Mean subgoals done" not in markdown[:markdown.index("### rearrange")]  # pick is one step
    heatmap = cv2.imread(str(out / HEATMAP_FILE))
    assert heatmap is not None and heatmap.shape[0] > 150 and heatmap.shape[1] > 300
    assert cv2.imread(str(out / PLOT_FILE)) is not None
    assert json.loads((out / JSON_FILE).read_text())["files"]["heatmap"] == HEATMAP_FILE

    again = run_benchmark(BenchmarkConfig(**config))  # the same arguments: nothing left to run
    assert again["episodes_run"] == 0 and again["results_by_task"] == by_task and _records(out) == records
    with pytest.raises(OutputError, match=r"other arguments \(tasks differ\)"):
        run_benchmark(BenchmarkConfig(**{**config, "tasks": None}))


def test_an_episode_log_from_before_tasks_still_resumes(tmp_path):
    """Records without ``task`` and subgoal counts count as the env's single task."""
    config = dict(policies=["scripted"], splits=["train"], episodes=2, workers=0, out=str(tmp_path), progress=False)
    first = run_benchmark(BenchmarkConfig(**config))
    assert first["tasks"] == ["pick"] and "mean_over_tasks" not in first and first["env_id"] == "VLAPick-v0"
    assert first["results_by_task"] == {"pick": first["results"]}
    log = tmp_path / EPISODES_FILE
    old = [{k: v for k, v in json.loads(line).items() if k not in ("task", "subgoals_done", "num_subgoals")}
           for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps(r) + "\n" for r in old))
    again = run_benchmark(BenchmarkConfig(**config))
    assert again["episodes_run"] == 0 and again["results"] == first["results"]
    assert again["results"]["scripted"]["train"]["mean_subgoals_done"] == 1.0
    markdown = (tmp_path / MARKDOWN_FILE).read_text()
    assert "Mean over tasks" not in markdown and "### " not in markdown  # one task: the table as before


def test_more_tasks_extend_a_run_and_fewer_are_refused(tmp_path):
    config = dict(policies=["scripted"], splits=["train"], episodes=2, workers=0, out=str(tmp_path), progress=False)
    assert run_benchmark(BenchmarkConfig(**config, tasks=["pick"]))["episodes_run"] == 2
    more = run_benchmark(BenchmarkConfig(**config, tasks=["pick", "stack"]))
    assert more["episodes_run"] == 2 and more["episodes"] == 4 and more["tasks"] == ["pick", "stack"]
    with pytest.raises(OutputError, match="holds 2 episodes outside the policies, tasks, splits and seeds"):
        run_benchmark(BenchmarkConfig(**config, tasks=["stack"]))


def test_cli_parses_tasks_all_and_refuses_bad_tasks(tmp_path, capsys):
    argv = ["benchmark", "--policies", "scripted", "--tasks", "all", "--out", str(tmp_path)]
    args = build_parser(argv).parse_args(argv)
    config = BenchmarkConfig(policies=args.policies, tasks=args.tasks, env_id=args.env, out=args.out)
    assert config.tasks == list(TASKS)
    assert "--tasks all" in benchmark_command(config)
    for extra, message in ((["--tasks", "pick,nope"], "unknown tasks ['nope']; choose from ['pick'"),
                           (["--tasks", "stack", "--env", "VLAPush-v0"], "--tasks picks each task's own env id")):
        with pytest.raises(SystemExit) as exc:
            cli_main(["benchmark", "--policies", "scripted", "--out", str(tmp_path / "r"), *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"policies": []}, ValueError, "at least one policy"),
        ({"policies": ["scripted"], "episodes": 0}, ValueError, "episodes must be an int from 1"),
        ({"policies": ["scripted"], "splits": ["val"]}, ValueError, r"unknown splits \['val'\]"),
        ({"policies": ["scripted"], "env_kwargs": {"object_split": "test"}}, ValueError, "set by the benchmark"),
        ({"policies": ["scripted"], "tasks": ["nope"]}, ValueError,
         r"unknown tasks \['nope'\]; choose from \['pick', 'place', 'push', 'stack', 'spatial_pick', 'rearrange'\]"),
        ({"policies": ["scripted"], "tasks": []}, ValueError, "names no task; choose from"),
        ({"policies": ["scripted"], "tasks": "pick,stack,pick"}, ValueError,
         r"tasks \['pick'\] are given more than once"),
        ({"policies": ["scripted"], "tasks": ["pick"], "env_id": "VLAStack-v0"}, ValueError,
         "--tasks picks each task's own env id"),
        ({"policies": ["scripted"], "tasks": ["pick"], "env_kwargs": {"tasks": "stack"}}, ValueError,
         "remove 'tasks' from env_kwargs"),
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
