"""train-agent: every stage runs, the report holds the evaluation's numbers, a rerun resumes."""

from __future__ import annotations

import json

import pytest

from vla_gym import pipeline
from vla_gym.cli import train_agent_main
from vla_gym.data.dataset import read_env_args
from vla_gym.data.grounding import read_grounding_frames
from vla_gym.evaluation import wilson_interval
from vla_gym.pipeline import POLICIES, SPLITS, AgentConfig, train_agent

SMALL_NETWORK = {"channels": [8, 16, 16], "features_dim": 64, "net_arch": {"pi": [64], "vf": [64]}}
TINY = dict(
    preset="tiny", demo_episodes=4, demo_workers=0,
    bc={"epochs": 1, "batch_size": 32, "network": SMALL_NETWORK, "rollout_every": 0, "paraphrase_prob": 0.0},
    ppo={"timesteps": 128, "n_envs": 2, "vec_env": "dummy", "n_steps": 64, "batch_size": 64, "n_epochs": 1,
         "eval_every": 64, "eval_episodes": 1, "critic_warmup_rollouts": 1},
    eval_episodes=2, eval_workers=1, video_episodes=1, device="cpu", progress=False,
)


def test_train_agent_writes_a_report_of_what_it_measured_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "agent"
    # Demos from randomised cameras: BC reads them from the demo file (and its env checks agree);
    # grounding frames from the same cameras, a stage of their own that BC reads.
    config = AgentConfig(out=str(out), **{**TINY, "demo_env_kwargs": {"camera_jitter": [0.03, 3.0]},
                                          "grounding_frames": 12})
    real_ppo = pipeline._run_ppo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_run_ppo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_agent(config)
    stages = json.loads((out / "stages.json").read_text())
    assert stages["demos"]["done"] and stages["grounding"]["done"] and stages["bc"]["done"] and not stages["ppo"]["done"]
    bc_log = [json.loads(line) for line in (out / "bc" / "metrics.jsonl").read_text().splitlines()]
    assert "train_grounding_target_loss" in bc_log[-1]  # BC trained on the grounding frames
    bc_mtime = (out / "bc" / "policy.pt").stat().st_mtime_ns

    monkeypatch.setattr(pipeline, "_run_ppo", real_ppo)
    report = train_agent(config)
    assert (out / "bc" / "policy.pt").stat().st_mtime_ns == bc_mtime  # BC was not redone
    assert report["stages"]["demos"]["skipped"] and report["stages"]["bc"]["skipped"]
    assert not report["stages"]["ppo"]["skipped"] and report["stages"]["ppo"]["attempts"] == 2

    for name in ("report.md", "report.json", "learning_curve.png", "final_policy.mp4"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert {(r["policy"], r["split"]) for r in saved["results"]} == {(p, s) for p in POLICIES for s in SPLITS}
    for row in saved["results"]:
        cell = json.loads((out / "eval" / f"{row['policy'].replace('+', '_')}_{row['split']}.json").read_text())
        assert row["successes"] == cell["successes"] and row["episodes"] == cell["episodes"] == 2
        assert row["mean_length"] == cell["mean_length"]
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(cell["successes"], 2))
        assert f"{cell['successes']}/2" in markdown
    scripted = {r["split"]: r for r in saved["results"] if r["policy"] == "scripted"}
    assert scripted["train"]["successes"] == 2  # the expert solves its episodes
    history = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [p["timesteps"] for p in saved["learning_curve"]] == [h["timesteps"] for h in history]
    assert saved["bc_level"] == history[0]["success_rate"]
    assert saved["total_seconds"] == pytest.approx(sum(s["seconds"] for s in saved["stages"].values()))

    # A finished run reruns as a no-op; another config in the same directory is refused.
    again = train_agent(config)
    assert all(stage["skipped"] for stage in again["stages"].values())
    with pytest.raises(ValueError, match="another config"):
        train_agent(AgentConfig(out=str(out), **{**TINY, "eval_episodes": 3}))
    assert read_env_args(out / "demos.h5")["env_kwargs"] == {"camera_jitter": [0.03, 3.0]}
    frames = read_grounding_frames(out / "grounding.h5")
    assert len(frames) == 12 and frames.env_args["env_kwargs"] == {"camera_jitter": [0.03, 3.0]}
    assert list(saved["stages"]) == ["demos", "grounding", "bc", "ppo", "evaluation"]
    commands = "\n".join(saved["commands"])
    assert "vla-gym collect-grounding --env VLAPick-v0 --frames 12 " in commands
    assert f"--grounding-data {out / 'grounding.h5'}" in commands


def test_presets_are_valid_configs(tmp_path):
    for preset in pipeline.PRESETS:
        config = AgentConfig.from_preset(preset, out=str(tmp_path / preset), device="cpu")
        assert config.preset == preset and config.ppo_config(tmp_path).init.endswith("policy.pt")
    with pytest.raises(ValueError, match="choose one of"):
        AgentConfig.from_preset("huge")
    with pytest.raises(ValueError, match="set by train-agent itself"):
        AgentConfig(ppo={"init": "x.pt"})
    with pytest.raises(TypeError):
        AgentConfig(bc={"epoch": 3})


def test_train_agent_cli_reports_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_agent_main(["--out", str(tmp_path), "--eval-episodes", "0", "--no-progress"])
    assert exc.value.code == 2 and "argument --eval-episodes: 0 is not allowed" in capsys.readouterr().err


def test_report_splits_are_checked_and_the_full_preset_randomises_the_camera(tmp_path):
    full = AgentConfig.from_preset("full", out=str(tmp_path / "full"), device="cpu")
    assert "camera_jitter" in full.splits
    jitter = pipeline.REPORT_SPLITS["camera_jitter"]["camera_jitter"]
    assert full.ppo_config(tmp_path).env_kwargs == {"camera_jitter": jitter}  # PPO trains on the shifted cameras
    commands = "\n".join(pipeline._commands(full, tmp_path))
    assert '"camera_jitter": [0.03, 3.0]' in commands and "--sil-coef" in commands
    assert "--word-context bag" in commands  # the pick presets keep the encoder their figures were measured with
    assert "--destination-head" not in commands
    multitask = AgentConfig.from_preset("multitask", out=str(tmp_path / "mt"), device="cpu")
    assert multitask.bc_config(tmp_path).network["word_context"] == "gru"
    custom = AgentConfig(out=str(tmp_path / "c"), bc={"network": {"destination_head": True}})
    assert "--destination-head" in "\n".join(pipeline._commands(custom, tmp_path))
    # The quick preset's network has the fovea, and its stage commands say so; the others do not.
    quick = AgentConfig.from_preset("quick", out=str(tmp_path / "q"), device="cpu")
    assert quick.bc_config(tmp_path).network["fovea"] == 16
    assert "--fovea 16" in "\n".join(pipeline._commands(quick, tmp_path)) and "--fovea" not in commands
    with pytest.raises(ValueError, match=r"splits must be a non-empty list of \['camera_jitter', 'object_test', "):
        AgentConfig(out=str(tmp_path / "x"), splits=["objects"])


def test_demo_env_kwargs_are_in_the_commands_and_bad_ones_fail_before_any_stage(tmp_path):
    """(The tiny run above collects its demos with them.)"""
    jitter = {"camera_jitter": [0.03, 3.0]}
    config = AgentConfig(out=str(tmp_path / "j"), **{**TINY, "demo_env_kwargs": jitter})
    assert config.bc_config(tmp_path).env_kwargs == jitter
    collect = next(c for c in pipeline._commands(config, tmp_path) if c.startswith("vla-gym collect"))
    assert '--env-kwargs \'{"camera_jitter": [0.03, 3.0]}\'' in collect
    with pytest.raises(ValueError, match="demo_env_kwargs .*camera_jitter"):
        AgentConfig(out=str(tmp_path / "x"), **{**TINY, "demo_env_kwargs": {"camera_jitter": [5.0, 3.0]}})
    with pytest.raises(ValueError, match="demo_env_kwargs must be a dict"):
        AgentConfig(out=str(tmp_path / "x"), **{**TINY, "demo_env_kwargs": [0.03, 3.0]})
    # Grounding frames take the demos' kwargs unless given their own.
    with_frames = AgentConfig(out=str(tmp_path / "f"), **{**TINY, "demo_env_kwargs": jitter, "grounding_frames": 10})
    assert with_frames.grounding_config(tmp_path).env_kwargs == jitter
    own = AgentConfig(out=str(tmp_path / "g"), **{**TINY, "grounding_frames": 10, "grounding_env_kwargs": {}})
    assert own.grounding_config(tmp_path).env_kwargs == {}
    assert "collect-grounding --env VLAPick-v0 --frames 10 --workers 0 --seed 5000000 --out" in "\n".join(
        pipeline._commands(own, tmp_path))
    with pytest.raises(ValueError, match="grounding_env_kwargs .*camera_jitter"):
        AgentConfig(out=str(tmp_path / "x"), **{**TINY, "grounding_env_kwargs": {"camera_jitter": [5.0, 3.0]}})


def test_multitask_run_collects_balanced_demos_and_reports_a_row_per_task(tmp_path):
    """VLAMultiTask-v0: one demo of each task, one policy, every task evaluated on its own
    env id (train and the switched-goal check), a block per task and the mean over tasks."""
    from vla_gym.data.dataset import DemoDataset
    from vla_gym.envs.tasks import TASKS

    out = tmp_path / "multi"
    config = AgentConfig(
        out=str(out), **{**TINY, "env_id": "VLAMultiTask-v0", "demo_episodes_per_task": 1, "eval_episodes": 1,
                         "policies": ["scripted", "bc+ppo"], "splits": ["train", "switched_goal"]},
    )
    report = train_agent(config)
    assert sorted(DemoDataset(out / "demos.h5", split="all").tasks) == sorted(TASKS)  # balanced: one each
    cells = {(r["policy"], r["split"], r["task"]): r for r in report["results"]}
    assert set(cells) == {(p, s, t) for p in ("scripted", "bc+ppo") for s in ("train", "switched_goal") for t in TASKS}
    for task in TASKS:  # the expert does what each task's (and each switched) instruction says
        assert cells["scripted", "train", task]["successes"] == 1
        assert cells["scripted", "switched_goal", task]["successes"] == 1
    assert cells["scripted", "train", "rearrange"]["num_subgoals"] >= 2
    swapped = json.loads((out / "eval" / "scripted_switched_goal_stack.json").read_text())
    assert swapped["metadata"]["swap_target"] and swapped["metadata"]["env_id"] == "VLAStack-v0"
    means = {(m["policy"], m["split"]): m for m in report["mean_over_tasks"]}
    assert means["scripted", "train"]["mean_success_rate"] == 1.0 and means["scripted", "train"]["tasks"] == len(TASKS)
    markdown = (out / "report.md").read_text()
    assert "### Mean over the 6 tasks" in markdown and "### rearrange" in markdown and "Subgoals done" in markdown
    commands = "\n".join(report["commands"])
    assert "--episodes-per-task 1" in commands and "--swap-target" in commands and "--env VLAPush-v0" in commands
    with pytest.raises(ValueError, match="has one task: use demo_episodes"):
        AgentConfig(out=str(tmp_path / "x"), **{**TINY, "demo_episodes_per_task": 3})
    with pytest.raises(ValueError, match="policies must be a non-empty list of"):
        AgentConfig(out=str(tmp_path / "x"), **{**TINY, "policies": ["expert"]})


def test_a_run_directory_from_before_grounding_frames_continues(tmp_path):
    config = AgentConfig(out=str(tmp_path), **TINY)
    saved = config.to_dict()
    del saved["grounding_frames"]  # written before the field existed
    (tmp_path / "agent_config.json").write_text(json.dumps(saved))
    pipeline._claim_run_directory(tmp_path, config)  # the same run: accepted
    with pytest.raises(ValueError, match="another config.*grounding_frames"):
        pipeline._claim_run_directory(tmp_path, AgentConfig(out=str(tmp_path), **{**TINY, "grounding_frames": 5}))
    with pytest.raises(ValueError, match="grounding_frames must be >= 0"):
        AgentConfig(out=str(tmp_path), **{**TINY, "grounding_frames": -1})
