"""The ``vla-gym`` command line."""

from __future__ import annotations

import json

import cv2
import pytest

from vla_gym.cli import main


def test_render_writes_rgb_and_depth_side_by_side(tmp_path, capsys):
    out = tmp_path / "obs.png"
    assert main(["render", "--env", "VLAPick-v0", "--seed", "0", "--out", str(out), "--scale", "2"]) == 0
    image = cv2.imread(str(out))
    assert image.shape == (84 * 2, 84 * 2 * 2, 3)
    assert "VLAPick-v0" in capsys.readouterr().out


def test_render_bad_target_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "--seed", "0", "--target", "magenta", "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
    assert "colours present" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("layout", ["file", "shards"])
def test_collect_train_evaluate_end_to_end(tmp_path, capsys, layout):
    """One demo file, or a shard directory (read by train-bc like one file; evaluation in 2 workers)."""
    sharded = layout == "shards"
    data, run = tmp_path / ("demos" if sharded else "demos.h5"), tmp_path / "run"
    extra = ["--shards", "--shard-episodes", "2"] if sharded else []
    assert main(["collect", "--episodes", "3", "--workers", "0", "--out", str(data), "--no-progress", *extra]) == 0
    assert "3 episodes" in capsys.readouterr().out
    readouts = ["--destination-head"] if sharded else ["--fovea", "8"]
    assert main(["train-bc", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                 "--rollout-every", "0", "--device", "cpu", "--no-progress", *readouts]) == 0
    assert "policy.pt" in capsys.readouterr().out
    from vla_gym.agents.checkpoint import load_policy

    network = load_policy(run / "policy.pt", device="cpu").network_config
    assert network.destination_head is sharded and network.fovea == (0 if sharded else 8)
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--policy", str(run / "policy.pt"), "--episodes", "2", "--json", str(report),
                 "--device", "cpu", "--no-progress", "--workers", "2" if sharded else "1"]) == 0
    out = capsys.readouterr().out
    assert "success" in out and report.exists()


def test_collect_episodes_per_task_balances_a_multi_task_env(tmp_path, capsys):
    from tests.conftest import TWO_TASK_KWARGS
    from vla_gym.data import DemoDataset

    out = tmp_path / "balanced.h5"
    argv = ["collect", "--env", "VLAMultiTask-v0", "--env-kwargs", json.dumps(TWO_TASK_KWARGS),
            "--episodes-per-task", "1", "--workers", "0", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert sorted(DemoDataset(out, "all").tasks) == sorted(TWO_TASK_KWARGS["tasks"])


def test_train_ppo_from_a_bc_checkpoint(bc_checkpoint, tmp_path, capsys):
    out = tmp_path / "ppo"
    argv = ["train-ppo", "--init", bc_checkpoint, "--timesteps", "128", "--n-envs", "2", "--vec-env", "dummy",
            "--n-steps", "64", "--batch-size", "64", "--eval-every", "64", "--eval-episodes", "1",
            "--critic-warmup-rollouts", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "128 env steps" in capsys.readouterr().out
    assert (out / "policy.pt").exists() and (out / "last.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-ppo", "--init", "missing.pt", "--device", "cpu"], "does not exist"),
        (["train-ppo", "--batch-size", "4096", "--n-envs", "2", "--n-steps", "64"], "larger than a rollout"),
        (["collect", "--episodes", "0", "--out", "x.h5"], "argument --episodes: 0 is not allowed"),
        (["collect", "--env-kwargs", "[1]", "--out", "x.h5"], "JSON object"),
        (["collect", "--episodes", "4", "--episodes-per-task", "2", "--out", "x.h5"],
         "argument --episodes-per-task: not allowed with argument --episodes"),
        (["collect", "--env", "VLAMultiTask-v0", "--episodes-per-task", "50000", "--out", "x.h5"],
         "give at most 16666 per task"),
        (["train-bc", "--data", "missing.h5", "--device", "cpu"], "does not exist"),
        (["train-bc", "--data", "d.h5", "--fovea", "40"], "argument --fovea: 40 is not allowed; must be an integer from 0 to 32"),
        (["evaluate", "--policy", "missing.pt"], "no checkpoint file exists"),
        (["evaluate", "--policy", "scripted", "--target", "red", "--swap-target"], "not allowed with"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
