"""Agents: the VLA actor-critic network, behaviour cloning, PPO, checkpoints; and, for
convenience, the scripted expert (:class:`vla_gym.envs.experts.ScriptedExpert`).

The torch-based parts are imported on first use, so ``from vla_gym.agents import
ScriptedExpert`` stays light for demo-collection workers.
"""

from __future__ import annotations

import importlib
from typing import Any

from vla_gym.envs.experts import ScriptedExpert

_LAZY = {
    "BCConfig": "vla_gym.agents.bc",
    "BCResult": "vla_gym.agents.bc",
    "train_bc": "vla_gym.agents.bc",
    "CheckpointError": "vla_gym.agents.checkpoint",
    "NonFiniteError": "vla_gym.agents.checkpoint",
    "load_policy": "vla_gym.agents.checkpoint",
    "NetworkConfig": "vla_gym.agents.network",
    "VLAActorCriticPolicy": "vla_gym.agents.network",
    "VLAFeaturesExtractor": "vla_gym.agents.network",
    "info_nce": "vla_gym.agents.network",
    "PPOConfig": "vla_gym.agents.ppo",
    "PPOResult": "vla_gym.agents.ppo",
    "VLAPPO": "vla_gym.agents.ppo",
    "train_ppo": "vla_gym.agents.ppo",
}

__all__ = ["ScriptedExpert", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla_gym.agents' has no attribute {name!r}")
