"""Is there a display for PyBullet's GUI? Checked before PyBullet is asked for one.

Without a display PyBullet's GUI client ends the whole process (exit code 1, no Python
exception) or, once some libraries are loaded, hangs; so the env asks first.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

X11_SOCKET_DIR = Path("/tmp/.X11-unix")
X11_TCP_BASE_PORT = 6000
CONNECT_TIMEOUT = 2.0  # s, for a display on another host

HOW_TO = (
    'use render_mode="rgb_array" (frames from env.render()), set DISPLAY to a running X server, '
    "or run the program under xvfb-run (Debian: apt-get install xvfb)"
)


class DisplayUnavailableError(RuntimeError):
    """``render_mode="human"`` was asked for where no display can be reached."""


def display_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why no X display can be reached (None when one can, or off Linux, where PyBullet
    opens its own window). Reads ``DISPLAY`` from ``environ`` (default ``os.environ``)."""
    if not sys.platform.startswith("linux"):
        return None
    display = (os.environ if environ is None else environ).get("DISPLAY", "")
    if not display:
        return "DISPLAY is not set"
    match = re.fullmatch(r"(?P<host>[^:]*):(?P<number>\d+)(\.\d+)?", display)
    if match is None:
        return f"DISPLAY={display!r} is not of the form [host]:number[.screen]"
    host, number = match["host"], int(match["number"])
    if host in ("", "unix"):
        if not (X11_SOCKET_DIR / f"X{number}").exists():
            return f"DISPLAY={display!r} but no X server listens at {X11_SOCKET_DIR / f'X{number}'}"
        return None
    try:
        with socket.create_connection((host, X11_TCP_BASE_PORT + number), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as error:
        return f"DISPLAY={display!r} but its X server cannot be reached ({error})"


def require_display() -> None:
    """Raise :class:`DisplayUnavailableError`, saying what to do, when no display is reachable."""
    problem = display_problem()
    if problem is not None:
        raise DisplayUnavailableError(f'render_mode="human" needs a display: {problem}. Instead, {HOW_TO}.')
