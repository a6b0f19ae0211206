"""The command lines used as a hostile user would (issue 14, CLI and run-directory half).

* every bad option is refused before any work: exit code 2 and one line naming the option,
  the value and what is allowed;
* an earlier file or run is never overwritten or mixed without ``--overwrite`` (byte-identical
  afterwards), and ``--overwrite`` replaces it only once the new one is complete;
* a killed ``collect`` resumes, and leaves nothing behind that blocks a later run;
* benchmark labels never collide and never break the Markdown table;
* no command hangs on ``render_mode="human"`` without a display.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from vla_gym import benchmark as benchmark_module
from vla_gym.agents import bc as bc_module
from vla_gym.agents import ppo as ppo_module
from vla_gym.benchmark import EPISODES_FILE, MARKDOWN_FILE, RUN_FILES, resolve_policies
from vla_gym.cli import main, train_agent_main
from vla_gym.data.collect import ATTEMPTS_FILE, LOCK_FILE, CollectConfig, collect_demos, partial_dir
from vla_gym.pipeline import AgentConfig
from tests.conftest import wait_for_lines

HUMAN = json.dumps({"render_mode": "human"})
BOGUS = json.dumps({"bogus_kwarg": 1})
#: PyBullet prints this on import (to the process's stderr, not through Python).
PYBULLET_BANNER = "pybullet build time"
#: A pid above Linux's largest (pid_max <= 2**22): the temporaries of a process that is gone.
DEAD_PID = 99_999_999
SUBPROCESS_TIMEOUT = 120
PER_COMMAND_TIMEOUT = 30
TINY_NETWORK = {"channels": [8, 16, 16], "features_dim": 64, "net_arch": {"pi": [64], "vf": [64]}}


def refused(argv: list[str], capsys, entry=main) -> str:
    """Run the CLI; it must exit with code 2 and exactly one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exc:
        entry(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (or ``root`` itself) by relative path, with its bytes."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A directory no file can be created in (chmod 0o555; as root, which ignores that, /proc)."""
    path = tmp_path / "read_only"
    path.mkdir()
    path.chmod(0o555)
    try:
        (path / "probe").touch()
    except OSError:
        yield path
    else:
        (path / "probe").unlink()
        if not Path("/proc").is_dir():
            pytest.skip("running as root without /proc: no read-only directory to try")
        yield Path("/proc")
    path.chmod(0o755)


@pytest.fixture(scope="module")
def demo_64(tmp_path_factory) -> str:
    """One expert episode with 64 px images (the conftest demos and checkpoint have 84 px)."""
    path = tmp_path_factory.mktemp("demo64") / "demos64.h5"
    config = CollectConfig(out=str(path), episodes=1, workers=0, seed=0, env_kwargs={"image_size": 64})
    collect_demos(config, progress=False)
    return str(path)


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory, demo_64) -> Path:
    """A train-bc run directory with the files train_bc leaves (policy.pt, last.pt,
    config.json, metrics.jsonl) and untrained tiny weights: these tests need its files and
    metadata, not a trained policy."""
    from vla_gym.agents.bc import BCConfig
    from vla_gym.agents.checkpoint import build_policy, save_checkpoint
    from vla_gym.data.format import env_args

    out = tmp_path_factory.mktemp("bc_run")
    config = BCConfig(data=demo_64, out=str(out), network=TINY_NETWORK, device="cpu")
    meta = {"env": env_args("VLAPick-v0"), "network": config.network, "bc": config.to_dict(), "step": 0,
            "epoch": 0, "batch_in_epoch": 0, "history": [], "best": {}}
    policy = build_policy(meta["env"], config.network, "cpu")
    for name in ("policy.pt", "last.pt"):
        save_checkpoint(out / name, policy, meta)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 1}) + "\n")
    return out


# --------------------------------------------------------------------------- bounded options
OPTION_CASES = [
    ("collect --seed -5 --out x.h5", "argument --seed: -5 is not allowed; must be an integer from 0 to 2147483647"),
    ("render --seed -1", "argument --seed: -1 is not allowed; must be an integer from 0 to"),
    ("evaluate --policy scripted --seed -1", "argument --seed: -1 is not allowed"),
    ("benchmark --policies scripted --seed -3", "argument --seed: -3 is not allowed"),
    ("collect --episodes 1000000000 --out x.h5",
     "argument --episodes: 1000000000 is not allowed; must be an integer from 1 to 100000"),
    ("evaluate --policy scripted --episodes 1000000000", "argument --episodes: 1000000000 is not allowed"),
    ("collect --workers 100000 --out x.h5", "argument --workers: 100000 is not allowed"),
    ("render --scale 100000", "argument --scale: 100000 is not allowed; must be an integer from 1 to 16"),
    ("render --image-size 100000", "argument --image-size: 100000 is not allowed; must be an integer from 16 to 512"),
    ("collect --noise-std nan --out x.h5", "argument --noise-std: nan is not allowed; must be a finite number >= 0"),
    ("collect --noise-std inf --out x.h5", "argument --noise-std: inf is not allowed; must be a finite number"),
    ("collect --valid-fraction 1 --out x.h5", "argument --valid-fraction: 1 is not allowed; must be a finite number >= 0 and < 1"),
    ("train-bc --data d.h5 --contrastive-coef inf", "argument --contrastive-coef: inf is not allowed"),
    ("train-bc --data d.h5 --lr nan", "argument --lr: nan is not allowed; must be a finite number > 0"),
    ("train-bc --data d.h5 --rollout-episodes 0",
     "argument --rollout-episodes: 0 is not allowed; must be an integer from 1 to 10000 (no rollouts: --rollout-every 0)"),
    ("train-ppo --critic-lr inf", "argument --critic-lr: inf is not allowed; must be a finite number > 0"),
    ("train-ppo --ent-coef nan", "argument --ent-coef: nan is not allowed"),
    ("train-ppo --bc-decay 2", "argument --bc-decay: 2 is not allowed; must be a finite number >= 0 and <= 1"),
    ("train-ppo --target-kl -1", "argument --target-kl: -1 is not allowed"),
    ("train-ppo --timesteps 1e9", "argument --timesteps: '1e9' is not an integer"),
    ("train-ppo --aux-epochs -1", "argument --aux-epochs: -1 is not allowed"),
    ("train-ppo --aux-epochs 2", "--aux-epochs 2 trains the trunk with the auxiliary losses alone and needs "
                                 "--trunk-lr-scale 0 (got 1)"),
]


@pytest.mark.parametrize("command, message", OPTION_CASES, ids=[c for c, _ in OPTION_CASES])
def test_out_of_range_options_are_one_line_before_any_work(command, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = refused(shlex.split(command), capsys)
    assert line.startswith(f"vla-gym {command.split()[0]}: error: ") and message in line
    assert os.listdir(tmp_path) == []


def test_train_agent_options_are_bounded_too(tmp_path, capsys):
    line = refused(["--seed", "-5", "--out", str(tmp_path / "a")], capsys, train_agent_main)
    assert "argument --seed: -5 is not allowed" in line
    assert "argument --eval-episodes: 0 is not allowed" in refused(["--eval-episodes", "0"], capsys, train_agent_main)


@pytest.mark.parametrize("command", ["collect --out x.h5", "train-bc --data d.h5", "train-ppo",
                                     "evaluate --policy scripted", "benchmark --policies scripted"])
def test_render_mode_is_refused_in_every_env_kwargs(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = refused([*shlex.split(command), "--env-kwargs", HUMAN], capsys)
    assert "argument --env-kwargs" in line and "render_mode is not allowed" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["collect --out x.h5", "train-ppo", "evaluate --policy scripted",
                                     "benchmark --policies scripted"])
def test_unknown_env_kwargs_are_refused_naming_the_option(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = refused([*shlex.split(command), "--env-kwargs", BOGUS], capsys)
    assert f"--env-kwargs {BOGUS} for VLAPick-v0: unknown vla_gym env kwargs ['bogus_kwarg']" in line
    assert os.listdir(tmp_path) == []


def test_train_bc_env_kwargs_without_env_are_checked_against_the_demo_file(demo_64, tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(["train-bc", "--data", demo_64, "--env-kwargs", BOGUS, "--out", str(out)], capsys)
    assert "--env-kwargs" in line and "unknown vla_gym env kwargs ['bogus_kwarg']" in line
    line = refused(["train-bc", "--data", demo_64, "--env-kwargs", '{"image_size": 84}', "--out", str(out),
                    "--device", "cpu"], capsys)
    assert "image_size: file 64 vs requested 84" in line
    assert not out.exists()


# --------------------------------------------------------------------------- paths
def _path_cases(tmp: Path, read_only: Path) -> list[tuple[list[str], str]]:
    folder, file = tmp / "folder", tmp / "file.txt"
    video_folder = tmp / "clip.mp4"
    return [
        (["collect", "--out", str(folder)], f"--out {str(folder)!r} is a directory; give the path of a file"),
        (["collect", "--out", str(read_only / "x" / "d.h5")], f"directory {str(read_only)!r} is not writable"),
        (["collect", "--out", str(file / "d.h5")], f"{str(file)!r} is a file, so no directory can be made under it"),
        (["evaluate", "--policy", "scripted", "--json", str(folder)], f"--json {str(folder)!r} is a directory"),
        (["evaluate", "--policy", "scripted", "--json", str(read_only / "r.json")], "is not writable"),
        (["evaluate", "--policy", "scripted", "--video", str(video_folder)], f"--video {str(video_folder)!r} is a directory"),
        (["evaluate", "--policy", "scripted", "--video", str(tmp / "v.avi")], "must end in '.mp4'"),
        (["render", "--out", str(folder)], f"--out {str(folder)!r} is a directory"),
        (["render", "--scale", "16", "--image-size", "512", "--out", str(tmp / "o.png")],
         "makes a 16384 px wide picture; the widest allowed is 4096 px"),
        (["train-bc", "--data", str(file), "--out", str(file)], f"--out {str(file)!r} is an existing file; give a directory"),
        (["train-bc", "--data", str(folder)], f"--data {str(folder)!r} is a directory without index.h5; give a demo file"),
        (["train-ppo", "--out", str(read_only / "run")], f"directory {str(read_only)!r} is not writable"),
        (["train-ppo", "--init", str(tmp / "none.pt")], f"--init {str(tmp / 'none.pt')!r} does not exist; give an existing file"),
        (["benchmark", "--policies", "scripted", "--out", str(file)], f"--out {str(file)!r} is an existing file"),
    ]


def test_bad_paths_are_refused_before_any_work(tmp_path, read_only_dir, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "clip.mp4").mkdir()
    (tmp_path / "file.txt").write_text("keep me")
    before = snapshot(tmp_path)
    for argv, message in _path_cases(tmp_path, read_only_dir):
        line = refused(argv, capsys)
        assert message in line, (argv, line)
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "file.txt", "folder", "read_only"]
    line = refused(["--out", str(tmp_path / "file.txt")], capsys, train_agent_main)
    assert "is an existing file; give a directory" in line


def test_train_ppo_resume_of_a_bc_run_and_mismatched_bc_data(bc_run, demo_64, tmp_path, capsys):
    before = snapshot(bc_run)
    line = refused(["train-ppo", "--resume", "--out", str(bc_run), "--device", "cpu"], capsys)
    assert f"--out {str(bc_run)!r} holds a train-bc run" in line and "--init" in line
    line = refused(["train-ppo", "--init", str(bc_run / "policy.pt"), "--bc-data", demo_64, "--bc-coef", "0.1",
                    "--out", str(tmp_path / "ppo"), "--device", "cpu"], capsys)
    assert f"--bc-data {demo_64!r} holds 64 px images but the policy of --init" in line and "takes 84 px" in line
    line = refused(["train-ppo", "--bc-data", demo_64, "--bc-coef", "0.1", "--out", str(tmp_path / "ppo")], capsys)
    assert "holds 64 px images but the policy of --env VLAPick-v0 takes 84 px" in line
    assert snapshot(bc_run) == before and not (tmp_path / "ppo").exists()


@pytest.mark.parametrize("name, content", [("agent_config.json", "{not json"), ("stages.json", "[1, 2"),
                                           ("stages.json", '{"bc": 3}')])
def test_corrupt_train_agent_files_are_named(name, content, tmp_path, capsys):
    out = tmp_path / "agent"
    out.mkdir()
    config = AgentConfig.from_preset("quick", out=str(out), device="auto", seed=0, progress=False)
    (out / "agent_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    (out / name).write_text(content)
    before = snapshot(out)
    line = refused(["--out", str(out), "--no-progress"], capsys, train_agent_main)
    assert line.startswith("train-agent: error: ") and f"{str(out / name)!r}" in line
    assert snapshot(out) == before


# --------------------------------------------------------------------------- run directories
def _stale_temporaries(parent: Path, name: str) -> list[Path]:
    """A file and a folder as a ``kill -9`` would leave them (their process is gone)."""
    made = [parent / f".{name}.{DEAD_PID}.abcd1234.tmp", parent / f".{name}.{DEAD_PID}.efgh5678.tmp"]
    made[0].write_bytes(b"half written")
    made[1].mkdir()
    (made[1] / "policy.pt").write_bytes(b"half a run")
    return made


@pytest.mark.parametrize("command", ["train-bc", "train-ppo"])
def test_an_earlier_run_is_refused_without_resume_or_overwrite(command, bc_run, demo_64, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    before = snapshot(run)
    stale = [*_stale_temporaries(tmp_path, "run"), *_stale_temporaries(run, "last.pt")]  # as kill -9 leaves them
    live = run / f".last.pt.{os.getpid()}.live0000.tmp"  # a process still writing it: not to be touched
    live.write_bytes(b"being written")
    extra = ["--data", demo_64] if command == "train-bc" else ["--init", str(bc_run / "policy.pt")]
    line = refused([command, *extra, "--out", str(run), "--device", "cpu"], capsys)
    assert f"--out {str(run)!r} holds an earlier run (policy.pt, last.pt, config.json" in line
    assert "pass --resume to continue it or --overwrite to replace it" in line
    line = refused([command, *extra, "--out", str(run), "--resume", "--overwrite", "--device", "cpu"], capsys)
    assert "--resume and --overwrite exclude each other" in line
    assert not any(path.exists() for path in stale)  # swept at the start
    assert live.read_bytes() == b"being written"
    live.unlink()
    assert snapshot(run) == before


def _fake_training(result, interrupt: bool, seen: dict[str, Path]):
    """A stand-in for train_bc / train_ppo that writes a run into ``config.out``."""

    def train(config):
        out = Path(config.out)
        seen["out"] = out
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict()))
        (out / "policy.pt").write_bytes(b"new policy")
        if interrupt:
            raise KeyboardInterrupt
        return result(out)

    return train


def _bc_result(out: Path):
    return bc_module.BCResult(str(out / "policy.pt"), str(out / "last.pt"), 1, 1, 1.0, 1.0, [], {"valid_loss": 1.0})


def _ppo_result(out: Path):
    return ppo_module.PPOResult(str(out / "policy.pt"), str(out / "last.pt"), 64, 1.0, 1.0, 0.0, [],
                                {"success_rate": 0.5, "timesteps": 64})


@pytest.mark.parametrize("command, module, result", [("train-bc", bc_module, _bc_result),
                                                     ("train-ppo", ppo_module, _ppo_result)])
@pytest.mark.parametrize("interrupt", [False, True], ids=["completes", "interrupted"])
def test_overwrite_builds_aside_and_swaps_only_when_complete(
    command, module, result, interrupt, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in (("policy.pt", b"old policy"), ("last.pt", b"old last"), ("metrics.jsonl", b"{}\n")):
        (run / name).write_bytes(data)
    (tmp_path / "demos.h5").write_bytes(b"unused by the stand-in")
    before = snapshot(run)
    seen: dict[str, Path] = {}
    monkeypatch.setattr(module, command.replace("-", "_"), _fake_training(result, interrupt, seen))
    extra = ["--data", str(tmp_path / "demos.h5")] if command == "train-bc" else []
    argv = [command, *extra, "--out", str(run), "--overwrite", "--device", "cpu", "--no-progress"]
    if interrupt:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 130
        assert capsys.readouterr().err == f"vla-gym {command}: interrupted (the earlier run in {run} is unchanged)\n"
        assert snapshot(run) == before
    else:
        assert main(argv) == 0
        assert snapshot(run).keys() == {"config.json", "policy.pt"}  # the old run's files are gone, not mixed
        assert (run / "policy.pt").read_bytes() == b"new policy"
        assert json.loads((run / "config.json").read_text())["out"] == str(run)
        assert f"{run / 'policy.pt'}:" in capsys.readouterr().out
    assert seen["out"].parent == tmp_path and seen["out"] != run  # built aside
    assert sorted(os.listdir(tmp_path)) == ["demos.h5", "run"]


# --------------------------------------------------------------------------- collect
def _demo_content(path: str | Path) -> dict[str, object]:
    """What a demo file holds (HDF5 bytes differ by timestamps): every array and attribute."""
    content: dict[str, object] = {}
    with h5py.File(path, "r") as handle:
        def visit(name, obj):
            content[f"{name}@attrs"] = {k: str(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                content[name] = np.asarray(obj[()]).tobytes()
        handle.visititems(visit)
    return content


def test_collect_refuses_to_replace_a_finished_file_without_overwrite(demo_64, tmp_path, capsys):
    out = tmp_path / "demos.h5"
    shutil.copy(demo_64, out)
    stale = _stale_temporaries(tmp_path, "demos.h5")
    before = out.read_bytes()
    base = ["collect", "--episodes", "1", "--workers", "0", "--out", str(out), "--no-progress"]
    line = refused(base, capsys)
    assert f"--out {str(out)!r} already exists" in line and "--overwrite" in line and "--resume" in line
    assert "already exists (a finished collection; --resume only continues" in refused([*base, "--resume"], capsys)
    assert out.read_bytes() == before and not any(path.exists() for path in stale)
    assert main([*base, "--overwrite"]) == 0
    with h5py.File(out, "r") as handle:
        assert sorted(handle["data"]) == ["demo_0"]
    assert sorted(os.listdir(tmp_path)) == ["demos.h5"]


def _start_collect(out: Path, episodes: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    argv = [sys.executable, "-m", "vla_gym.cli", "collect", "--episodes", str(episodes), "--workers", "0",
            "--out", str(out), "--no-progress"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_killed_collection_resumes_to_the_same_file(tmp_path, capsys):
    episodes = 6
    outs = {sig: tmp_path / f"{sig.name}.h5" for sig in (signal.SIGTERM, signal.SIGKILL)}
    processes = {sig: _start_collect(out, episodes) for sig, out in outs.items()}
    for sig, process in processes.items():
        wait_for_lines(partial_dir(outs[sig]) / ATTEMPTS_FILE, process, 1, SUBPROCESS_TIMEOUT)
        process.send_signal(sig)
    _, err = processes[signal.SIGTERM].communicate(timeout=SUBPROCESS_TIMEOUT)
    processes[signal.SIGKILL].communicate(timeout=SUBPROCESS_TIMEOUT)
    assert processes[signal.SIGTERM].returncode == 128 + signal.SIGTERM
    assert err.splitlines()[-1] == "vla-gym collect: terminated (continue with --resume)"
    assert processes[signal.SIGKILL].returncode == -signal.SIGKILL
    reference = tmp_path / "reference.h5"
    collect_demos(CollectConfig(out=str(reference), episodes=episodes, workers=0), progress=False)
    for out in outs.values():
        assert not out.exists() and (partial_dir(out) / ATTEMPTS_FILE).exists()
        (tmp_path / f".{out.name}.{DEAD_PID}.abcd1234.tmp").write_bytes(b"left by a kill -9")
        base = ["collect", "--episodes", str(episodes), "--workers", "0", "--out", str(out), "--no-progress"]
        assert "pass --resume to continue it or --overwrite to start over" in refused(base, capsys)
        assert main([*base, "--resume"]) == 0
        assert _demo_content(out) == _demo_content(reference)
        assert not partial_dir(out).exists()
    assert sorted(os.listdir(tmp_path)) == sorted([o.name for o in outs.values()] + ["reference.h5"])


def test_a_second_collection_into_the_same_output_is_refused(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "demos.h5"
    partial_dir(out).mkdir()
    with open(partial_dir(out) / LOCK_FILE, "w") as held:  # as a running collection holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        base = ["collect", "--episodes", "1", "--workers", "0", "--out", str(out), "--no-progress"]
        for flag in ("--resume", "--overwrite"):
            line = refused([*base, flag], capsys)
            assert f"another process is collecting into {str(partial_dir(out))!r} now" in line
    assert os.listdir(partial_dir(out)) == [LOCK_FILE] and not out.exists()


# --------------------------------------------------------------------------- benchmark
def test_default_labels_never_collide():
    labels = [e.label for e in resolve_policies(["random-2=random", "random", "random"])]
    assert labels == ["random-2", "random", "random-3"]
    labels = [e.label for e in resolve_policies(["random", "random", "random-2=scripted"])]
    assert labels == ["random", "random-3", "random-2"]
    with pytest.raises(ValueError, match=r"labels \['a'\] are given more than once"):
        resolve_policies(["a=random", "a=scripted"])


@pytest.mark.parametrize("policies", ["a|b=random", "x`=scripted"])
def test_labels_that_would_break_the_table_are_refused(policies, tmp_path, capsys):
    line = refused(["benchmark", "--policies", policies, "--out", str(tmp_path / "r")], capsys)
    assert "policy label" in line and "must not hold '|'" in line
    assert not (tmp_path / "r").exists()


def test_benchmark_never_wipes_an_earlier_benchmark(tmp_path, monkeypatch, capsys):
    out = tmp_path / "reports"
    base = ["benchmark", "--episodes", "1", "--splits", "train", "--workers", "0", "--out", str(out), "--no-progress"]
    assert main([*base, "--policies", "random-2=random,random,random"]) == 0
    table = [line for line in (out / MARKDOWN_FILE).read_text().splitlines() if line.startswith("| random")]
    assert [row.split("|")[1].strip() for row in table] == ["random-2", "random", "random-3"]
    before = snapshot(out)
    for other in (["--policies", "scripted"], ["--policies", "random-2=random,random,random", "--seed", "7"]):
        line = refused([*base, *other], capsys)
        assert f"--out {str(out)!r} holds a benchmark made with other arguments" in line and "--overwrite" in line
    fewer = [*base, "--policies", "random-2=random,random,random", "--splits", "object_test"]
    assert "holds 3 episodes outside the policies, splits and seeds asked for now" in refused(fewer, capsys)
    assert snapshot(out) == before

    real_results = benchmark_module._results

    def interrupted(*args, **kwargs):
        yield from ()
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark_module, "_results", interrupted)
    with pytest.raises(SystemExit) as exc:
        main([*base, "--policies", "scripted", "--overwrite"])
    assert exc.value.code == 130 and snapshot(out) == before and sorted(os.listdir(out)) == sorted(RUN_FILES)
    monkeypatch.setattr(benchmark_module, "_results", real_results)
    capsys.readouterr()
    assert main([*base, "--policies", "scripted", "--overwrite"]) == 0
    records = [json.loads(line) for line in (out / EPISODES_FILE).read_text().splitlines()]
    assert [r["policy"] for r in records] == ["scripted"]
    assert sorted(os.listdir(out)) == sorted(RUN_FILES)  # no staging directory left
    again = snapshot(out)
    assert main([*base, "--policies", "scripted"]) == 0  # the same arguments continue: nothing to run
    assert snapshot(out)[EPISODES_FILE] == again[EPISODES_FILE]


# --------------------------------------------------------------------------- no hang without a display
NO_HANG_SCRIPT = """
import contextlib, faulthandler, io, json, sys
import torch  # imported first, PyBullet's GUI used to hang without a display
from vla_gym.cli import main
results = {}
for argv in json.loads(sys.argv[1]):
    faulthandler.dump_traceback_later(%d, exit=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    faulthandler.cancel_dump_traceback_later()
    results[argv[0]] = [code, err.getvalue()]
print(json.dumps(results))
""" % PER_COMMAND_TIMEOUT


def test_no_command_hangs_on_render_mode_human_without_a_display(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    commands = [["collect", "--out", "x.h5"], ["train-bc", "--data", "d.h5"], ["train-ppo"],
                ["evaluate", "--policy", "scripted"], ["benchmark", "--policies", "scripted"]]
    argvs = [[*c, "--env-kwargs", HUMAN] for c in commands]
    run = subprocess.run([sys.executable, "-c", NO_HANG_SCRIPT, json.dumps(argvs)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout.splitlines()[-1])
    assert sorted(results) == sorted(c[0] for c in commands)
    for command, (code, err) in results.items():
        assert code == 2 and len(err.splitlines()) == 1 and "render_mode is not allowed" in err, (command, err)
    cli = subprocess.run([sys.executable, "-m", "vla_gym.cli", "collect", "--env-kwargs", HUMAN, "--out", "x.h5"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    lines = [line for line in cli.stderr.splitlines() if not line.startswith(PYBULLET_BANNER)]
    assert cli.returncode == 2 and len(lines) == 1 and "render_mode is not allowed" in lines[0]
    assert os.listdir(tmp_path) == []
