"""Policy checkpoints: the weights plus the full config as JSON, loaded without unpickling.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers and strings:
``format``, ``version``, ``meta`` (a JSON string: env args, network config, training
config, step, metrics) and ``policy`` (the state dict), plus training state in resumable
checkpoints. It is read with ``torch.load(..., weights_only=True)``, so a file can never
run code on load, and written to a temporary name then renamed, so it is never half written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vla_gym.agents.network import NetworkConfig, VLAActorCriticPolicy
from vla_gym.envs.spaces import make_action_space, make_observation_space
from vla_gym.fileio import atomic_path

CHECKPOINT_FORMAT = "vla_gym.policy"
CHECKPOINT_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, not a vla_gym policy, or made for another config."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when present, else CPU. Asking for CUDA without it is an error."""
    if isinstance(device, torch.device):
        return device
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES[1:]:
        raise ValueError(f"device={device!r} is not available; choose one of {DEVICES} (or cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def _constant(value: float):
    def schedule(_: float) -> float:
        return value

    return schedule


def build_policy(env_args: dict[str, Any], network: dict[str, Any] | NetworkConfig | None, device) -> VLAActorCriticPolicy:
    """A fresh :class:`VLAActorCriticPolicy` for the env described by ``env_args``."""
    if isinstance(network, NetworkConfig):
        network = network.to_dict()
    image_size = int(env_args["env_config"]["image_size"])
    policy = VLAActorCriticPolicy(
        make_observation_space(image_size), make_action_space(), _constant(0.0), network=network
    )
    return policy.to(resolve_device(device))


def save_checkpoint(path: str | os.PathLike, policy: torch.nn.Module, meta: dict[str, Any], **state: Any) -> Path:
    """Write ``policy``'s weights, ``meta`` (JSON-able) and extra ``state`` (tensors, numbers,
    optimizer state dicts) atomically to ``path``."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "meta": json.dumps(meta),
        "policy": policy.state_dict(),
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``); ``meta`` comes back parsed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types for a bad file)
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read as a vla_gym checkpoint (corrupt, truncated, or "
            f"holding objects other than tensors and plain data): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a vla_gym policy checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this vla_gym reads {CHECKPOINT_VERSION}"
        )
    payload["meta"] = json.loads(payload["meta"])
    return payload


def config_differences(found: Any, expected: Any, prefix: str = "") -> list[str]:
    """Where two JSON-like configs differ, as ``"field: checkpoint X vs requested Y"`` lines."""
    if isinstance(found, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(found) | set(expected)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in found:
                out.append(f"{name}: missing in the checkpoint, requested {expected[key]!r}")
            elif key not in expected:
                out.append(f"{name}: checkpoint has {found[key]!r}, unknown to the requested config")
            else:
                out.extend(config_differences(found[key], expected[key], name))
        return out
    norm = json.loads(json.dumps(found)), json.loads(json.dumps(expected))
    return [] if norm[0] == norm[1] else [f"{prefix}: checkpoint {found!r} vs requested {expected!r}"]


def resume_differences(saved: dict[str, Any], wanted: dict[str, Any], may_change: frozenset[str]) -> list[str]:
    """:func:`config_differences` of two run configs, leaving out the fields in ``may_change``."""
    return config_differences(
        {k: v for k, v in saved.items() if k not in may_change}, {k: v for k, v in wanted.items() if k not in may_change}
    )


def load_policy(
    path: str | os.PathLike, device: str | torch.device = "auto", network: NetworkConfig | dict | None = None
) -> VLAActorCriticPolicy:
    """Rebuild the policy saved at ``path``, in eval mode, with SB3's ``predict``.

    If ``network`` is given, it must equal the checkpoint's network config; otherwise a
    :class:`CheckpointError` names each field that differs.
    """
    device = resolve_device(device)
    payload = read_checkpoint(path, map_location=device)
    meta = payload["meta"]
    if network is not None:
        wanted = network.to_dict() if isinstance(network, NetworkConfig) else NetworkConfig(**network).to_dict()
        differ = config_differences(meta["network"], wanted, "network")
        if differ:
            raise CheckpointError(f"checkpoint {str(path)!r} was made with another network config: " + "; ".join(differ))
    policy = build_policy(meta["env"], meta["network"], device)
    try:
        policy.load_state_dict(payload["policy"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit its own network config: {err}") from err
    policy.set_training_mode(False)
    policy.checkpoint_meta = meta
    return policy
