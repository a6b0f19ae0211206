"""Output paths and run directories: checked before any work starts, never silently mixed.

* :func:`check_output_file` / :func:`check_output_dir`: a path the job will write is of the
  right kind (a file is not a directory, and the other way round) and its directory can be
  written to, so a long job does not lose its result to a traceback at the end.
* :func:`claim_run_directory`: ``train-bc``, ``train-ppo`` and the other run-directory
  writers refuse an earlier run unless told to continue it (``resume``) or replace it
  (``overwrite``); they never mix two runs' files.
* :func:`staged_directory`: ``overwrite`` builds the new run in a temporary directory beside
  the old one and swaps it in when complete (atomically, with ``renameat2(RENAME_EXCHANGE)``
  on Linux); an interrupted replacement leaves the earlier run as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from vla_gym.fileio import TEMP_MARK, sweep_stale_temps, temp_prefix

#: What marks a directory as holding a training run (``train-bc`` and ``train-ppo``).
RUN_FILES = ("policy.pt", "last.pt", "config.json", "metrics.jsonl", "tb")
#: ``renameat2`` arguments: the current directory for relative paths, and "swap both".
AT_FDCWD = -100
RENAME_EXCHANGE = 2
#: Mode of a staged run directory (``mkdtemp`` makes 0o700), as ``mkdir`` would make it.
DIR_MODE = 0o755
#: Suffix of the old run moved aside while a swap without ``RENAME_EXCHANGE`` is under way.
ASIDE_MARK = ".aside"


class OutputError(ValueError):
    """An output path or run directory that the job must not (or cannot) write."""


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_directory(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, since ``os.access`` says yes to root
    on read-only mounts and pseudo file systems)."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".vla_gym-write-probe.")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _check_creatable(path: Path, option: str) -> None:
    """The directories ``path`` needs exist or can be made, and the first existing one is writable."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(f"{option} {str(path)!r}: {str(base)!r} is a file, so no directory can be made under it")
    if not _writable_directory(base):
        raise OutputError(f"{option} {str(path)!r}: directory {str(base)!r} is not writable; choose a writable place")


def check_output_file(path: str | os.PathLike | None, option: str) -> Path | None:
    """Refuse an output *file* path that is a directory or lies in an unwritable place."""
    if path is None:
        return None
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a directory; give the path of a file to write")
    _check_creatable(path, option)
    return path


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Refuse an output *directory* path that is a file or lies in an unwritable place."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is an existing file; give a directory")
    if path.is_dir():
        if not _writable_directory(path):
            raise OutputError(f"{option} {str(path)!r}: the directory is not writable; choose a writable place")
    else:
        _check_creatable(path, option)
    return path


def run_files(out: Path, markers: Sequence[str] = RUN_FILES) -> list[str]:
    """The run markers present in ``out`` (empty when it is no run)."""
    return [name for name in markers if (out / name).exists()] if out.is_dir() else []


def claim_run_directory(
    out: str | os.PathLike, option: str, resume: bool, overwrite: bool, markers: Sequence[str] = RUN_FILES
) -> bool:
    """Check that a job may write its run into ``out``; returns whether it must be staged
    (``overwrite`` of an existing run: build elsewhere, then :func:`swap_directory`).

    An earlier run there is refused unless ``resume`` (continue it) or ``overwrite``
    (replace it) is given; the two exclude each other.
    """
    out = check_output_dir(out, option)
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other: --resume continues the run in "
                          f"{str(out)!r}, --overwrite replaces it")
    restore_aside(out)
    sweep_stale_temps(out)  # half-built runs of killed --overwrite jobs
    for name in markers:  # checkpoints and logs of killed jobs, cut mid-write
        sweep_stale_temps(out / name)
    found = run_files(out, markers)
    if found and not (resume or overwrite):
        raise OutputError(
            f"{option} {str(out)!r} holds an earlier run ({', '.join(found)}); pass --resume to continue it "
            f"or --overwrite to replace it, or choose another {option}"
        )
    return bool(found) and overwrite


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot swap {str(a)!r} and {str(b)!r}: {os.strerror(code)}")


def _aside_path(final: Path) -> Path:
    return final.parent / f"{temp_prefix(final)}{ASIDE_MARK.lstrip('.')}"


def swap_directory(build: Path, final: Path) -> None:
    """Put the complete directory ``build`` at ``final``; the previous ``final`` is deleted."""
    if not final.exists():
        os.rename(build, final)
        return
    if _exchange(build, final):
        shutil.rmtree(build)  # now the old run
        return
    aside = _aside_path(final)  # restored by restore_aside if the process dies in between
    os.rename(final, aside)
    os.rename(build, final)
    shutil.rmtree(aside)


def restore_aside(final: str | os.PathLike) -> None:
    """Undo a swap that a killed process left half done: the old run back at ``final``."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return
    for entry in sorted(final.parent.glob(f".{final.name}.*{ASIDE_MARK}")):
        os.rename(entry, final)
        return


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; when the block ends cleanly it
    replaces ``final``. On an exception (Ctrl-C and SIGTERM included) it is removed and
    ``final`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final), suffix=TEMP_MARK))
    try:
        os.chmod(build, DIR_MODE)  # mkdtemp makes it 0o700; a run directory is for everyone to read
        yield build
        swap_directory(build, final)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_files(directory: str | os.PathLike, names: Sequence[str], stem: str) -> Iterator[Path]:
    """Yield an empty temporary directory inside ``directory`` (named after ``stem``); when the
    block ends cleanly, each of ``names`` written there replaces its namesake in ``directory``
    (one atomic rename each; a name not written is removed). On an exception nothing changes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=directory, prefix=temp_prefix(directory / stem), suffix=TEMP_MARK))
    try:
        yield build
        for name in names:
            if (build / name).exists():
                os.replace(build / name, directory / name)
            else:
                (directory / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
