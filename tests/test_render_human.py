"""``render_mode="human"`` opens PyBullet's GUI; it needs a display (or Xvfb).

PyBullet allows one GUI client per process, so the check runs in a subprocess.
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


def _command() -> list[str] | None:
    if os.environ.get("DISPLAY"):
        return [sys.executable, "-c", SCRIPT]
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1024x768x24", sys.executable, "-c", SCRIPT]
    return None


@pytest.mark.skipif(_command() is None, reason="no display and no xvfb-run to open PyBullet's GUI")
def test_human_render_mode_opens_the_gui_and_sees_the_same_scene():
    result = subprocess.run(_command(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HUMAN_OK" in result.stdout
