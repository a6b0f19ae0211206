"""``render_mode="human"`` without a display raises a Python exception saying what to do,
before PyBullet is asked for a GUI (which would end or hang the process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vla_gym.envs.display import DisplayUnavailableError, display_problem, require_display

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the X display check runs on Linux")


@linux_only
@pytest.mark.parametrize(
    "display, fragment",
    [(None, "not set"), ("", "not set"), (":4242", "no X server"), ("nonsense", "not of the form")],
)
def test_display_problem_names_the_cause(display, fragment):
    environ = {} if display is None else {"DISPLAY": display}
    assert fragment in display_problem(environ)


@linux_only
def test_require_display_message_says_what_to_do(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DisplayUnavailableError) as err:
        require_display()
    for hint in ("rgb_array", "DISPLAY", "xvfb-run"):
        assert hint in str(err.value)


HEADLESS = """
import sys
if sys.argv[1] == "torch":
    import torch  # with torch loaded first, PyBullet's GUI used to hang the process
import gymnasium as gym, vla_gym
from vla_gym.envs import DisplayUnavailableError
try:
    gym.make("{env_id}", render_mode="human")
except DisplayUnavailableError as err:
    print("RAISED", err)
"""


@linux_only
@pytest.mark.parametrize("first", ["torch", "nothing"])
@pytest.mark.parametrize("env_id", ["VLAPick-v0", "VLAMultiTask-v0"])
def test_human_mode_without_display_raises_in_seconds(first, env_id):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    result = subprocess.run(
        [sys.executable, "-c", HEADLESS.format(env_id=env_id), first],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RAISED" in result.stdout and "xvfb-run" in result.stdout
