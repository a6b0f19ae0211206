"""``vla-gym export --format minari``: the Minari dataset holds the demo file's episodes
exactly, rebuilds its env, and bad input (no minari, a bad format or id, an existing
dataset, a file whose replay differs) is refused with one clear line and leaves nothing.

The round trips need the optional extra (``pip install -e ".[minari]"``) and skip without
it; the refusals run everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest

from vla_gym.cli import main
from vla_gym.data.format import OBS_KEYS, env_config_dict
from vla_gym.data.minari_export import (
    ExportError,
    MinariNotInstalledError,
    check_dataset_id,
    export_minari,
)
from vla_gym.envs import ENV_IDS
from vla_gym.envs.tabletop_env import VLATabletopEnv

MINARI_MIN_VERSION = "0.5.0"
NEEDS_MINARI = 'the Minari round trips need the optional extra: pip install -e ".[minari]"'
DATASET_ID = "vla_gym/pick/expert-v0"
ENV_KWARGS = {"image_size": 32}  # >= 32 px: the size Minari would JPEG-encode (lossy) if asked to
#: The episode the fixture marks as failed (as if the expert had failed it).
FAILED = "demo_1"


@pytest.fixture
def minari(monkeypatch, tmp_path):
    """The minari module, its datasets root set to a fresh folder (or the test is skipped)."""
    module = pytest.importorskip("minari", minversion=MINARI_MIN_VERSION, reason=NEEDS_MINARI)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return module


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    """Three expert episodes of VLAPick-v0 at 32 px (seeds 0-2), demo_1 marked failed."""
    from vla_gym.data import CollectConfig, collect_demos

    path = tmp_path_factory.mktemp("demos") / "demos.h5"
    collect_demos(CollectConfig(out=str(path), episodes=3, workers=0, seed=0, valid_fraction=0.0,
                                env_kwargs=ENV_KWARGS), progress=False)
    with h5py.File(path, "r+") as handle:
        handle["data"][FAILED].attrs["success"] = False
    return str(path)


def _read_demo(path: str, name: str) -> dict:
    with h5py.File(path, "r") as handle:
        demo = handle["data"][name]
        arrays = {f"obs/{k}": demo["obs"][k][()] for k in OBS_KEYS}
        arrays.update({k: demo[k][()] for k in ("actions", "executed_actions", "rewards", "dones")})
        return {"arrays": arrays, "seed": int(demo.attrs["seed"]), "env_args": json.loads(handle["data"].attrs["env_args"])}


def _final_observation(env_args: dict, seed: int, actions: np.ndarray) -> dict:
    """The observation after the last of ``actions``, from a replay of our own."""
    env = gym.make(env_args["env_name"], **env_args["env_kwargs"])
    try:
        obs, _ = env.reset(seed=seed)
        for action in actions:
            obs = env.step(action)[0]
        return obs
    finally:
        env.close()


def _assert_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    np.testing.assert_array_equal(a, b, err_msg=what)


def _assert_episode_matches(episode, demo: dict, name: str) -> None:
    """Every array of a Minari episode against the demo file's episode ``name``."""
    arrays, steps = demo["arrays"], len(demo["arrays"]["rewards"])
    assert len(episode) == steps
    final = _final_observation(demo["env_args"], demo["seed"], arrays["executed_actions"])
    for key in OBS_KEYS:
        observed = episode.observations[key]
        assert observed.shape[0] == steps + 1, f"{name} {key}: N + 1 observations"
        _assert_same(observed[:-1], arrays[f"obs/{key}"], f"{name} obs/{key}")
        _assert_same(observed[-1], final[key], f"{name} final obs/{key}")
    _assert_same(episode.actions, arrays["executed_actions"], f"{name} actions")
    _assert_same(episode.rewards, arrays["rewards"], f"{name} rewards")
    _assert_same(episode.infos["expert_action"][:-1], arrays["actions"], f"{name} expert_action")
    assert np.isnan(episode.infos["expert_action"][-1]).all()
    ended = episode.terminations | episode.truncations
    np.testing.assert_array_equal(ended, arrays["dones"].astype(bool), err_msg=f"{name} dones")
    assert not (episode.terminations & episode.truncations).any()
    assert episode.infos["is_success"].shape == (steps + 1,)


@pytest.mark.parametrize("include_failures", [False, True], ids=["successful", "all"])
def test_round_trip_is_exact(minari, demos, include_failures):
    result = export_minari(demos, DATASET_ID, include_failures=include_failures)
    names = ["demo_0", "demo_1", "demo_2"] if include_failures else ["demo_0", "demo_2"]
    assert (result.episodes, result.skipped_failures) == (len(names), 0 if include_failures else 1)
    dataset = minari.load_dataset(DATASET_ID)
    assert dataset.total_episodes == len(names)
    metadata = list(dataset.storage.get_episode_metadata(range(len(names))))
    assert [m["source_episode"] for m in metadata] == names
    assert [bool(m["success"]) for m in metadata] == [n != FAILED for n in names]
    episodes = list(dataset.iterate_episodes())
    for episode, name, meta in zip(episodes, names, metadata):
        demo = _read_demo(demos, name)
        assert meta["seed"] == demo["seed"]
        _assert_episode_matches(episode, demo, name)
    assert dataset.total_steps == result.steps == sum(len(e) for e in episodes)
    stored = dataset.storage.metadata
    assert stored.get("jpeg_encoding", False) is False  # Minari < 0.5.4 has no JPEG encoding
    assert os.path.abspath(demos) in stored["description"] and "0.2.0" in stored["description"]
    assert "ScriptedExpert" in stored["algorithm_name"]


def test_recover_environment_rebuilds_the_demo_env(minari, demos):
    export_minari(demos, DATASET_ID)
    dataset = minari.load_dataset(DATASET_ID)
    env_args = _read_demo(demos, "demo_0")["env_args"]
    env = dataset.recover_environment()
    try:
        assert isinstance(env.unwrapped, VLATabletopEnv)
        assert env.spec.id == env_args["env_name"] == "VLAPick-v0"
        assert env.spec.kwargs == {**ENV_IDS["VLAPick-v0"], **ENV_KWARGS}
        assert env_config_dict(env.spec.id, env.spec.kwargs) == env_args["env_config"]
        assert env.observation_space == dataset.observation_space
        first = next(dataset.iterate_episodes())
        obs, _ = env.reset(seed=int(next(iter(dataset.storage.get_episode_metadata([0])))["seed"]))
        for key in OBS_KEYS:
            _assert_same(obs[key], first.observations[key][0], f"reset obs/{key}")
    finally:
        env.close()


def _dataset_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_existing_dataset_needs_overwrite(minari, demos, tmp_path):
    root = tmp_path / "minari"
    export_minari(demos, DATASET_ID)
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        export_minari(demos, DATASET_ID, include_failures=True)
    assert minari.load_dataset(DATASET_ID).total_episodes == 2
    export_minari(demos, DATASET_ID, include_failures=True, overwrite=True)
    assert minari.load_dataset(DATASET_ID).total_episodes == 3
    assert [p for p in _dataset_files(root) if "tmp" in p or "replaced" in p] == []  # no staging left
    assert set(minari.list_local_datasets()) == {DATASET_ID}


def test_a_replay_that_differs_from_the_file_exports_nothing(minari, demos, tmp_path):
    """A file whose recorded frames the replay does not reproduce (here: one pixel changed)
    is refused; an earlier dataset of that id stays as it was, and nothing partial is left."""
    root = tmp_path / "minari"
    export_minari(demos, DATASET_ID)
    before = _dataset_files(root)
    changed = tmp_path / "changed.h5"
    shutil.copy(demos, changed)
    with h5py.File(changed, "r+") as handle:
        rgb = handle["data/demo_2/obs/rgb"]
        rgb[3, 0, 0, 0] = (int(rgb[3, 0, 0, 0]) + 1) % 256
    with pytest.raises(ExportError, match=r"replaying demo_2 .* obs/rgb values at step 3"):
        export_minari(changed, DATASET_ID, overwrite=True)
    with pytest.raises(ExportError):
        export_minari(changed, "vla_gym/pick/other-v0")
    assert _dataset_files(root) == before
    assert minari.load_dataset(DATASET_ID).total_episodes == 2


def test_cli_export(minari, demos, tmp_path, capsys):
    root = tmp_path / "elsewhere"
    argv = ["export", "--format", "minari", demos, "--name", "pick-v1", "--data-path", str(root), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 episodes" in out and "1 failed episode(s) left out" in out
    assert (root / "pick-v1" / "data").is_dir() and not (tmp_path / "minari" / "pick-v1").exists()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--overwrite" in err
    assert main([*argv, "--all-episodes", "--overwrite"]) == 0
    assert "3 episodes" in capsys.readouterr().out


# --- refusals, with or without minari ---------------------------------------------------------
def _export_fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_missing_minari_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` raises ImportError
    root = tmp_path / "minari"
    err = _export_fails(["export", "--format", "minari", "demos.h5", "--name", DATASET_ID,
                         "--data-path", str(root)], capsys)
    assert "optional package minari" in err and 'pip install "vla_gym[minari]"' in err
    assert 'pip install -e ".[minari]"' in err
    assert not root.exists()
    with pytest.raises(MinariNotInstalledError, match=r"vla_gym\[minari\]"):
        export_minari("demos.h5", DATASET_ID, data_path=root)


def test_bad_format_is_refused_with_the_choices(tmp_path, capsys):
    err = _export_fails(["export", "--format", "parquet", "demos.h5", "--name", DATASET_ID], capsys)
    assert "--format" in err and "invalid choice: 'parquet'" in err and "minari" in err


@pytest.mark.parametrize("dataset_id", ["expert", "vla_gym/pick/expert", "vla_gym//pick/expert-v0", "/expert-v0",
                                        "../expert-v0", "pick expert-v0", "expert-vx", "expert-v0/"])
def test_bad_dataset_id_is_refused(dataset_id, capsys):
    err = _export_fails(["export", "--format", "minari", "demos.h5", "--name", dataset_id], capsys)
    assert "argument --name" in err and "not a Minari dataset id" in err and "name-vN" in err
    with pytest.raises(ExportError, match="not a Minari dataset id"):
        export_minari("demos.h5", dataset_id)  # refused before minari is imported or the file read


@pytest.mark.parametrize("dataset_id, parts", [
    ("vla_gym/pick/expert-v0", ("vla_gym/pick", "expert", 0)),
    ("pick-expert-v12", (None, "pick-expert", 12)),
])
def test_good_dataset_ids(dataset_id, parts):
    assert check_dataset_id(dataset_id) == parts


def test_vla_gym_does_not_import_minari():
    code = ("import sys, vla_gym, vla_gym.data, vla_gym.cli, vla_gym.data.minari_export; "
            "assert 'minari' not in sys.modules, 'minari was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
