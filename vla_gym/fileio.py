"""Atomic file writes: write under a temporary name in the same folder, then rename.

An interrupted write leaves the previous file (or none). A temporary name is
``.<target name>.<pid>.<random>.tmp[<suffix>]``: an exception, Ctrl-C or SIGTERM (which
the CLIs turn into an exception) removes it on the way out; after a ``kill -9``,
:func:`sweep_stale_temps` removes the temporaries of that target whose process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: mkstemp creates files 0o600; what vla_gym saves is for everyone to read.
FILE_MODE = 0o644
#: Every temporary name ends with this (before an optional format suffix such as ``.mp4``).
TEMP_MARK = ".tmp"


def temp_prefix(path: str | os.PathLike) -> str:
    """``.<name>.<pid>.``: the start of this process's temporary names for ``path``."""
    return f".{Path(path).name}.{os.getpid()}."


def make_temp_file(path: str | os.PathLike, suffix: str = "") -> Path:
    """Create an empty temporary file beside ``path`` (``suffix`` after ``.tmp``: writers that
    pick a format from the name need it); the caller renames or removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_MARK + suffix)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly, rename it to ``path``.

    ``suffix`` ends the temporary name (writers that pick a format from it need the right one).
    """
    path = Path(path)
    tmp = make_temp_file(path, suffix if suffix != TEMP_MARK else "")
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line (a metrics log: a cut-off last line loses one record)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files and folders of ``path`` (see the module docstring) left by processes
    that are gone; names without a pid (older vla_gym versions) count as stale."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(?:(?P<pid>\d+)\.)?[a-z0-9_]+{re.escape(TEMP_MARK)}(?:\.[A-Za-z0-9]+)?$"
    )
    stale = []
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not (match["pid"] and _process_alive(int(match["pid"]))):
            stale.append(entry)
    return sorted(stale)


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_temps` of ``path``; returns what was removed."""
    removed = []
    for entry in stale_temps(path):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed
