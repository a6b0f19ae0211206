"""benchmarks/demo_scaling.py and benchmarks/ablations.py at a tiny size: the cells they write,
a rerun that does no new work, ``--only-table``, missing cells, ``--max-minutes``, and the
shared helpers of benchmarks/_suite_common.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Two short tasks (50-step episodes), one demo each, one episode per cell, a few BC samples
#: and one 64-step PPO rollout evaluated on one episode: seconds per stage.
TINY = [
    "--tasks", "pick,spatial_pick", "--bc-samples", "32", "--ppo-steps", "64", "--episodes", "1", "--workers", "1",
    "--no-progress",
    "--ppo", json.dumps({"n_envs": 1, "n_steps": 64, "batch_size": 64, "eval_episodes": 1, "eval_every": 64}),
]
TASKS = ("pick", "spatial_pick")


def load_script(name: str):
    """A benchmarks/ script as a module (its sibling imports, ``report`` and ``_suite_common``,
    resolved from benchmarks/ as when it is run)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module_name = f"benchmark_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def section(path: Path, name: str) -> str:
    text = path.read_text()
    start, end = text.index(f"<!-- {name}:start -->"), text.index(f"<!-- {name}:end -->")
    assert start < end
    return text[start:end]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """BC and PPO (one env, in this process) on one torch thread: on shared cores, tiny
    networks lose more to waiting threads than they gain. The global random states that
    training seeds are put back after the module, so later tests draw what they would have."""
    import random

    import numpy as np
    import torch

    threads, torch_rng, numpy_rng, python_rng = (torch.get_num_threads(), torch.get_rng_state(),
                                                 np.random.get_state(), random.getstate())
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(torch_rng)
    np.random.set_state(numpy_rng)
    random.setstate(python_rng)


@pytest.fixture(scope="module")
def demo_scaling_run(tmp_path_factory, one_torch_thread):
    """One tiny demo_scaling run: 1 demo per task, BC and BC+PPO, train and object_test."""
    module = load_script("demo_scaling")
    root = tmp_path_factory.mktemp("demo_scaling")
    argv = [*TINY, "--demos", "1", "--ppo-from", "1", "--work", str(root / "work"), "--out", str(root / "RESULTS.md")]
    assert module.main(argv) == 0
    return module, root, argv


def test_demo_scaling_writes_every_cell_the_table_and_the_plot(demo_scaling_run, capsys):
    _, root, _ = demo_scaling_run
    cells = root / "work" / "cells"
    names = {f"{policy}__{task}__{split}.json" for policy in ("bc_1", "bc_1plusppo") for task in TASKS
             for split in ("train", "object_test")}
    assert {p.name for p in cells.iterdir()} == names
    record = json.loads((cells / "bc_1__pick__train.json").read_text())
    assert record["episodes"] == 1 and record["spec"]["env_id"] == "VLAPick-v0" and record["spec"]["seed"] == 200_000
    assert len(record["episodes_log"]) == 1
    text = section(root / "RESULTS.md", "demo_scaling")
    assert "| task / demos per task | 1 | 1 + PPO |" in text and "**mean**" in text and "Unseen objects" in text
    assert "done: 8 of 8 cells; none missing" in text and "missing |" not in text
    assert (root / "demo_scaling.png").stat().st_size > 0
    state = json.loads((root / "work" / "state.json").read_text())
    assert all(entry["done"] for entry in state["stages"].values())
    assert set(state["stages"]) == {"demos_1", "bc_1", "ppo_1"}


def test_demo_scaling_rerun_does_no_new_work(demo_scaling_run, capsys):
    module, root, argv = demo_scaling_run
    cells = root / "work" / "cells"
    before = mtimes(cells)
    capsys.readouterr()
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert "[demo_scaling] 0 units run, 10 done already, 0 left" in out
    assert "stage bc_1: done already, skipped" in out
    assert mtimes(cells) == before


def test_demo_scaling_only_table_shows_a_missing_cell(demo_scaling_run, capsys):
    module, root, argv = demo_scaling_run
    cell = root / "work" / "cells" / "bc_1plusppo__pick__train.json"
    saved = cell.read_text()
    cell.unlink()
    try:
        capsys.readouterr()
        assert module.main([*argv, "--only-table"]) == 0
        out = capsys.readouterr().out
        assert not cell.exists()  # nothing ran
        assert "left (--only-table): cell bc_1+ppo/pick/train" in out
        text = section(root / "RESULTS.md", "demo_scaling")
        assert "done: 7 of 8 cells; missing: bc_1+ppo: pick/train" in text
        seen = text[text.index("Seen objects"):text.index("Unseen objects")]
        pick_row = next(line for line in seen.splitlines() if line.startswith("| pick |"))
        assert pick_row.endswith("| missing |") and pick_row.count("missing") == 1
        assert "missing (1/2 tasks)" in seen
    finally:
        cell.write_text(saved)


def test_demo_scaling_refuses_other_settings_and_stops_at_the_deadline(demo_scaling_run, tmp_path, capsys):
    module, root, argv = demo_scaling_run
    other = [*argv[:argv.index("--bc-samples") + 1], "64", *argv[argv.index("--bc-samples") + 2:]]
    capsys.readouterr()
    assert module.main(other) == 2
    assert "holds stage 'bc_1' made with other settings (samples: recorded 32, asked 64)" in \
        capsys.readouterr().err
    fresh = [*TINY, "--demos", "1", "--ppo-from", "1", "--work", str(tmp_path / "work"), "--out",
             str(tmp_path / "RESULTS.md"), "--max-minutes", "1e-9"]
    assert module.main(fresh) == 0
    out = capsys.readouterr().out
    assert "0 units run, 0 done already, 11 left" in out and "left (the time is up (--max-minutes))" in out
    text = section(tmp_path / "RESULTS.md", "demo_scaling")
    assert "done: 0 of 8 cells; missing: bc_1: all 4; bc_1+ppo: all 4" in text
    assert not (tmp_path / "work" / "cells").exists()


def test_ablations_rows_cells_rerun_and_missing(demo_scaling_run, tmp_path, capsys):
    module = load_script("ablations")
    _, root, _ = demo_scaling_run
    argv = [*TINY, "--data", str(root / "work" / "demos_1.h5"), "--rows", "no_ppo,no_depth,pretrained_encoder",
            "--splits", "train", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "RESULTS.md")]
    assert module.main(argv) == 0
    cells = tmp_path / "work" / "cells"
    assert {p.name for p in cells.iterdir()} == {f"{row}__{task}__train.json" for row in ("no_ppo", "no_depth")
                                                 for task in TASKS}
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert set(state["stages"]) == {"bc_full", "bc_no_depth", "ppo_no_depth"}  # no collection: --data
    assert state["stages"]["bc_no_depth"]["identity"]["network"] == {"use_depth": False}
    text = section(tmp_path / "RESULTS.md", "ablations")
    assert "| pretrained encoder | frozen sentence-transformers encoder; BC + PPO | " \
           "not run: no local sentence-transformers weights (pass --encoder PATH) |" in text
    assert "| no depth | RGB only (`use_depth=False`); BC + PPO | " in text and "done: 4 of 4 cells" in text
    summary = json.loads((tmp_path / "work" / "ablations.json").read_text())
    assert set(summary["rows"]["no depth"]["train"]["per_task"]) == set(TASKS)
    before = mtimes(cells)
    capsys.readouterr()
    assert module.main(argv) == 0
    assert "[ablations] 0 units run, 7 done already, 0 left" in capsys.readouterr().out
    assert mtimes(cells) == before
    (cells / "no_depth__spatial_pick__train.json").unlink()
    assert module.main([*argv, "--only-table"]) == 0
    text = section(tmp_path / "RESULTS.md", "ablations")
    assert "missing (1/2 tasks)" in text and "missing: no_depth: spatial_pick/train" in text


def test_suite_helpers_pool_format_and_size_bc():
    load_script("demo_scaling")  # puts benchmarks/ on sys.path
    suite_lib = importlib.import_module("_suite_common")
    from vla_gym.evaluation import wilson_interval

    stat = suite_lib.pooled([{"successes": 3, "episodes": 10}, {"successes": 5, "episodes": 10}])
    assert stat["success_rate"] == pytest.approx(0.4) and stat["episodes"] == 20
    assert stat["ci95"] == pytest.approx(list(wilson_interval(8, 20)))
    assert suite_lib.format_rate({"success_rate": 0.4, "ci95": [0.2188, 0.6134]}) == "40 % (22-61)"
    assert suite_lib.format_rate(None) == "missing"
    assert suite_lib.bc_epochs(200_000, 5_000, 60) == 40
    assert suite_lib.bc_epochs(10, 5_000, 60) == 1
    assert suite_lib.bc_epochs(10**9, 10, 60) == 60
    assert suite_lib.task_env_kwargs(list(suite_lib.TASKS)) is None
    assert suite_lib.task_env_kwargs(["pick"]) == {"tasks": ["pick"]}
    with pytest.raises(suite_lib.SuiteError, match="unknown or no names"):
        suite_lib.parse_names("pick,lift", suite_lib.TASKS, "--tasks")


def test_bc_phase_errors_are_per_tenth_and_zero_for_the_labels_themselves(demo_file, bc_checkpoint, capsys):
    import numpy as np
    import torch

    from vla_gym.agents.checkpoint import load_policy

    script = load_script("bc_phase_errors")
    policy = load_policy(bc_checkpoint, device="cpu")
    errors = script.phase_errors(policy, demo_file, episodes=3)
    assert errors.shape == (script.TENTHS, 5) and np.isfinite(errors).all() and (errors[:, :4] >= 0).all()
    assert errors[0, 4] == -1.0  # every pick episode starts with the gripper open

    class Oracle:  # a "policy" whose mean is the label: no error anywhere
        def __init__(self, labels):
            self.labels = labels

        def get_distribution(self, obs):
            mean = torch.as_tensor(self.labels.pop(0))
            return type("D", (), {"distribution": torch.distributions.Normal(mean, 1.0)})()

    import h5py

    with h5py.File(demo_file) as f:
        labels = [f["data"][name]["actions"][()] for name in sorted(f["data"].keys())[:2]]
    assert script.phase_errors(Oracle(labels), demo_file, episodes=2)[:, :4].max() == 0.0
    assert script.main(["--policy", bc_checkpoint, "--data", demo_file, "--episodes", "2"]) == 0
    assert "| 10 |" in capsys.readouterr().out


def test_failure_modes_reports_the_first_close_and_a_reopened_gripper():
    import gymnasium as gym
    import numpy as np

    script = load_script("failure_modes")

    class Cycle:  # a "policy" that plays the given actions in turn
        def __init__(self, *actions):
            self.actions, self.step = [np.array(a, dtype=np.float32) for a in actions], 0

        def predict(self, obs, deterministic=True):
            self.step += 1
            return self.actions[(self.step - 1) % len(self.actions)], None

    env = gym.make("VLAPick-v0", max_episode_steps=4)
    try:
        env.reset(seed=7)
        task = env.unwrapped.task
        start = env.unwrapped.world.robot.ee_position() - task.position(task.episode.roles["target"])
        name, first_close, reopened = script.classify(env, Cycle([0, 0, 0, 1], [0, 0, 0, -1]), seed=7)
        assert name.startswith("touched nothing") and reopened
        assert first_close == pytest.approx(float(np.linalg.norm(start[:2])), abs=1e-6)
        name, first_close, reopened = script.classify(env, Cycle([0, 0, 0, -1]), seed=7)
        assert np.isnan(first_close) and not reopened
    finally:
        env.close()


def test_localisation_error_per_step_and_its_bands(bc_checkpoint):
    import gymnasium as gym
    import numpy as np

    from vla_gym.agents.checkpoint import load_policy

    script = load_script("localisation_error")
    policy = load_policy(bc_checkpoint, device="cpu")
    env = gym.make("VLAPick-v0", max_episode_steps=3)
    try:
        errors = script.step_errors(env, policy, seed=3)
        env.reset(seed=3)
        task = env.unwrapped.task
        start = task.position(task.episode.roles["target"]) - env.unwrapped.world.robot.ee_position()
    finally:
        env.close()
    assert errors.shape == (3, 3) and np.isfinite(errors).all() and (errors >= 0).all()
    assert errors[0, 0] == pytest.approx(float(np.linalg.norm(start[:2])), abs=1e-6)  # the true distance
    lines = script.table(np.array([[0.01, 0.02, 0.005], [0.05, 0.01, 0.0]])).splitlines()
    assert lines[2].startswith("| 0-3 cm | 1 | 2.00 |") and lines[3].startswith("| 3-8 cm | 1 | 1.00 |")
    assert lines[4] == "| 8 cm and more | 0 | - | - | - |"


@pytest.mark.parametrize("start, says", [({"valid_target_loss": 0.02}, "no rollout checks"),
                                         ({"valid_target_loss": 0.02, "rollout_success_rate": 0.5}, "rollout success 50%")])
def test_weak_start_parts_section_with_and_without_the_starts_rollout_checks(start, says):
    import argparse

    script = load_script("weak_start_parts")
    args = argparse.Namespace(init="start.pt", data="demos.h5", epochs=3, episodes=10)
    record = {"variant": "heads", "success_rate": 0.8, "episodes": 10, "valid_target_loss": 0.01, "valid_action_mse": 0.05}
    text = script.section([record], start, args)
    assert says in text and "| heads | 0.0100 | 0.0500 | 80% (" in text
