"""``render_mode="human"`` opens PyBullet's GUI; it needs a display (or Xvfb).

PyBullet allows one GUI client per process, so the checks run in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = """
import gymnasium as gym, numpy as np, pybullet as p
import vla_gym
env = gym.make("VLAPick-v0", render_mode="human")
obs, _ = env.reset(seed=0)
assert env.unwrapped.sim.client.getConnectionInfo()["connectionMethod"] == p.GUI
assert env.render() is None
for _ in range(5):
    env.step(env.action_space.sample())
headless = gym.make("VLAPick-v0")
same = np.array_equal(env.reset(seed=0)[0]["rgb"], headless.reset(seed=0)[0]["rgb"])
env.close(); headless.close()
print("HUMAN_OK" if same else "HUMAN_DIFFERS")
"""

#: Gymnasium's full check_env, render modes included (it makes a "human" env per id).
FULL_CHECK = """
import warnings
import gymnasium as gym
from gymnasium.utils.env_checker import check_env
import vla_gym
from vla_gym.envs import ENV_IDS
warnings.simplefilter("ignore")
for env_id in sorted(ENV_IDS):
    env = gym.make(env_id)
    check_env(env.unwrapped)
    env.close()
    print("CHECKED", env_id)
"""


def _command(script: str) -> list[str] | None:
    if os.environ.get("DISPLAY"):
        return [sys.executable, "-c", script]
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1024x768x24", sys.executable, "-c", script]
    return None


@pytest.mark.skipif(_command(SCRIPT) is None, reason="no display and no xvfb-run to open PyBullet's GUI")
def test_human_render_mode_opens_the_gui_and_sees_the_same_scene():
    result = subprocess.run(_command(SCRIPT), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HUMAN_OK" in result.stdout


@pytest.mark.skipif(_command(FULL_CHECK) is None, reason="no display and no xvfb-run to open PyBullet's GUI")
def test_full_gymnasium_check_env_passes_for_every_id_under_a_display():
    from vla_gym.envs import ENV_IDS

    result = subprocess.run(_command(FULL_CHECK), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("CHECKED") == len(ENV_IDS)
