"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.envs import ENV_IDS

ALL_ENV_IDS = sorted(ENV_IDS)


@pytest.fixture(params=ALL_ENV_IDS)
def env_id(request) -> str:
    return request.param


@pytest.fixture
def make_env():
    """Factory that closes every env it made when the test ends."""
    made: list[gym.Env] = []

    def _make(env_id: str = "VLAPick-v0", **kwargs) -> gym.Env:
        env = gym.make(env_id, **kwargs)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()


def assert_obs_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"observation key {key!r} differs")


def interrupt_on_call(func, call: int):
    """``func`` wrapped to raise ``KeyboardInterrupt`` (as Ctrl-C would) on its ``call``-th
    call (counted from 1), and to pass every other call through."""
    calls = 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            raise KeyboardInterrupt
        return func(*args, **kwargs)

    return wrapped


def wait_for_lines(path, process, count: int, timeout: float = 120.0) -> None:
    """Wait until the text file ``path`` has ``count`` lines (a subprocess writing it, e.g. a
    collection's attempts log); fail, killing ``process``, if it ends or ``timeout`` passes first."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if Path(path).exists() and len(Path(path).read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"{path} did not get {count} line(s) in time: {process.communicate()[1][-2000:]}")


@pytest.fixture(scope="session")
def demo_file(tmp_path_factory) -> str:
    """Six expert episodes of VLAPick-v0 (seeds 0-5), collected in this process."""
    from vla_gym.data import CollectConfig, collect_demos

    path = tmp_path_factory.mktemp("demos") / "demos.h5"
    collect_demos(CollectConfig(out=str(path), episodes=6, workers=0, seed=0), progress=False)
    return str(path)


@pytest.fixture(scope="session")
def bc_checkpoint(demo_file, tmp_path_factory) -> str:
    """A small BC policy (two epochs on ``demo_file``): the starting point of PPO tests."""
    from vla_gym.agents.bc import BCConfig, train_bc

    out = tmp_path_factory.mktemp("bc")
    config = BCConfig(
        data=demo_file, out=str(out), epochs=2, batch_size=32, lr=3e-3, warmup_steps=2, network={"channels": [8, 16, 16], "features_dim": 64, "net_arch": {"pi": [64], "vf": [64]}},
        rollout_every=0, checkpoint_every=0, device="cpu", progress=False, seed=0,
    )
    return train_bc(config).policy_path


#: The two quick tasks of the multi-task fixtures, and its env kwargs.
TWO_TASKS = ("pick", "place")
TWO_TASK_KWARGS = {"tasks": list(TWO_TASKS)}


@pytest.fixture(scope="session")
def balanced_file(tmp_path_factory) -> str:
    """A balanced VLAMultiTask-v0 collection over :data:`TWO_TASKS`: two episodes of each
    (seeds 0-3, tasks alternating), one of each in mask/valid."""
    from vla_gym.data import CollectConfig, collect_demos

    path = tmp_path_factory.mktemp("balanced") / "balanced.h5"
    collect_demos(CollectConfig(out=str(path), env_id="VLAMultiTask-v0", env_kwargs=TWO_TASK_KWARGS,
                                episodes_per_task=2, workers=0, seed=0), progress=False)
    return str(path)
