"""What a run ran on: CPU, cores, GPU, platform and the versions of the packages that matter.

Shared by the benchmark scripts (:func:`machine_description`, one line for RESULTS.md) and
the train-agent report (:func:`hardware_dict`, JSON-ready).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

#: What :func:`package_version` returns for a distribution that is not installed.
NOT_INSTALLED = "not installed"
#: Where Linux lists the CPU model.
CPUINFO_PATH = Path("/proc/cpuinfo")
BYTES_PER_GIB = 1024**3


def package_version(dist: str) -> str:
    """Installed version of distribution ``dist`` (e.g. ``"stable-baselines3"``), or :data:`NOT_INSTALLED`."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``, else ``"unknown"``."""
    try:
        for line in CPUINFO_PATH.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def logical_cores() -> int | None:
    """Logical CPU cores of the machine (``os.cpu_count()``; None when unknown)."""
    return os.cpu_count()


def usable_cores() -> int | None:
    """Logical cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def gpu_description() -> str | None:
    """The CUDA devices torch sees, e.g. ``"NVIDIA H100 80GB HBM3 (79.1 GiB)"`` (several joined
    by ``"; "``), or None when torch is missing or CUDA is not available.
    """
    try:
        import torch  # lazily: the benchmark scripts describe the machine without needing torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(f"{props.name} ({props.total_memory / BYTES_PER_GIB:.1f} GiB)")
    return "; ".join(devices) or None


def machine_description() -> str:
    """One line: CPU model and cores, OS, Python and the versions of the packages that matter."""
    return (
        f"CPU: {cpu_model()}, {logical_cores()} logical cores ({usable_cores()} usable); "
        f"{platform.system()} {platform.machine()}; "
        f"Python {platform.python_version()}, pybullet {package_version('pybullet')}, "
        f"torch {package_version('torch')}, gymnasium {package_version('gymnasium')}, "
        f"stable-baselines3 {package_version('stable-baselines3')}, panda-gym {package_version('panda-gym')}"
    )


def hardware_dict() -> dict[str, Any]:
    """JSON-ready description of the machine.

    Keys: ``cpu`` (model name), ``logical_cores`` and ``usable_cores`` (int or None), ``gpu``
    (:func:`gpu_description`, str or None), ``platform`` (e.g. ``"Linux x86_64"``),
    ``python``, and the versions of ``torch``, ``stable_baselines3``, ``pybullet`` and
    ``gymnasium`` (:data:`NOT_INSTALLED` where missing).
    """
    return {
        "cpu": cpu_model(),
        "logical_cores": logical_cores(),
        "usable_cores": usable_cores(),
        "gpu": gpu_description(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "stable_baselines3": package_version("stable-baselines3"),
        "pybullet": package_version("pybullet"),
        "gymnasium": package_version("gymnasium"),
    }
