"""Demonstration data: expert collection into HDF5, the torch Dataset, and augmentation.

The torch-based parts are imported on first use, so collection workers start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from vla_gym.data.collect import CollectConfig, CollectResult, collect_demos
from vla_gym.data.format import DatasetError

_LAZY = {
    "DemoDataset": "vla_gym.data.dataset",
    "check_env_matches": "vla_gym.data.dataset",
    "demo_file_summary": "vla_gym.data.dataset",
    "open_demo_file": "vla_gym.data.dataset",
    "paraphrase_instruction": "vla_gym.data.dataset",
    "read_env_args": "vla_gym.data.dataset",
    "resolve_demo_path": "vla_gym.data.dataset",
}

__all__ = ["CollectConfig", "CollectResult", "DatasetError", "collect_demos", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla_gym.data' has no attribute {name!r}")
