"""Shared by the benchmark scripts: the machine description and marked sections of RESULTS.md."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from vla_gym.fileio import atomic_write_text
from vla_gym.hardware import NOT_INSTALLED, cpu_model, machine_description, package_version

NEW_FILE_TITLE = "# Benchmark results"

# NOT_INSTALLED, cpu_model, machine_description and package_version live in vla_gym.hardware;
# they are re-exported here for the benchmark scripts that import them from ``report``.
__all__ = [
    "NEW_FILE_TITLE",
    "NOT_INSTALLED",
    "command_line",
    "torch_run_line",
    "cpu_model",
    "machine_description",
    "markers",
    "package_version",
    "write_section",
]


def markers(name: str) -> tuple[str, str]:
    """The HTML comments that delimit the section a script owns in RESULTS.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: Path, section: str, name: str) -> None:
    """Put ``section`` (which starts and ends with :func:`markers` of ``name``) into ``path``:
    replace the marked block if present, else append it. Written atomically.
    """
    start_marker, end_marker = markers(name)
    path = Path(path)
    if path.exists():
        text = path.read_text()
        start, end = text.find(start_marker), text.find(end_marker)
        if start != -1 and end != -1 and end > start:
            text = text[:start] + section + text[end + len(end_marker) :]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = f"{NEW_FILE_TITLE}\n\n{section}\n"
    atomic_write_text(path, text)


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script: ``python <script> <args>``, shell-quoted."""
    args = argv if argv is not None else sys.argv[1:]
    return "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *args])


def torch_run_line(argv: list[str] | None = None) -> str:
    """The start of a section's provenance line: the command, date, machine, torch and threads."""
    import datetime as dt

    import torch

    return (f"`{command_line(argv)}` ({dt.date.today()}, {machine_description()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
