"""Shared by the benchmark scripts: the machine description and marked sections of RESULTS.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import tempfile
from pathlib import Path

NOT_INSTALLED = "not installed"
NEW_FILE_TITLE = "# Benchmark results"


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable); "
        f"{platform.system()} {platform.machine()}; "
        f"Python {platform.python_version()}, pybullet {package_version('pybullet')}, "
        f"torch {package_version('torch')}, gymnasium {package_version('gymnasium')}, "
        f"stable-baselines3 {package_version('stable-baselines3')}, panda-gym {package_version('panda-gym')}"
    )


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
