"""Policy checkpoints: the weights plus the full config as JSON, loaded without unpickling.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers and strings:
``format``, ``version``, ``meta`` (a JSON string: env args, network config, training
config, step, metrics) and ``policy`` (the state dict), plus training state in resumable
checkpoints. It is read with ``torch.load(..., weights_only=True)``, so a file can never
run code on load, and written to a temporary name then renamed, so it is never half written.

The network config in ``meta`` records the word encoder's vocabulary (or the sentence
encoder's name and embedding size); a checkpoint saved before it did is read with
:data:`~vla_gym.agents.network.LEGACY_VOCABULARY` (:func:`with_recorded_vocabulary`).
:func:`check_task_vocabulary` says when a policy meets an env whose words it cannot read.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from vla_gym.agents.network import (
    LEGACY_VOCABULARY,
    UNK,
    WORD_ENCODER,
    NetworkConfig,
    VLAActorCriticPolicy,
    resolve_language_encoder,
)
from vla_gym.data.format import validate_env_args
from vla_gym.envs.spaces import make_action_space, make_observation_space
from vla_gym.fileio import atomic_path

CHECKPOINT_FORMAT = "vla_gym.policy"
#: 2: the NatureCNN-style trunk with FiLM and the cached conditioning (vla_gym 0.2).
CHECKPOINT_VERSION = 2
#: Versions this vla_gym recognises but cannot load, with why and what to do instead.
RETIRED_VERSIONS = {
    1: "it holds the first VLA network (a 4-layer conv trunk with instruction-to-pixel attention), whose "
       "weights do not fit today's faster network; retrain it with `vla-gym train-bc` (or `train-agent`) on "
       "the same demos, or load it with vla_gym 0.1, the last release with that network",
}
DEVICES = ("auto", "cpu", "cuda")
#: What every checkpoint's ``meta`` holds: the env it was made for and the network's sizes.
REQUIRED_META_KEYS = ("env", "network")
#: Largest policy a config or a checkpoint may ask for (parameters; ~200 MB of float32).
#: Counted on PyTorch's meta device, so nothing is allocated before the check.
MAX_POLICY_PARAMETERS = 50_000_000


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, not a vla_gym policy, or made for another config."""


class NonFiniteError(CheckpointError):
    """A checkpoint, read or about to be written, holding NaN or infinite values."""


class VocabularyWarning(UserWarning):
    """A policy's word vocabulary lacks words that an env's train-split instructions use."""


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
    """A fresh :class:`VLAActorCriticPolicy` for the env described by ``env_args``.

    ``ValueError`` if the env description is malformed or the policy would exceed
    :data:`MAX_POLICY_PARAMETERS` (checked before any weight is allocated).
    """
    config = network if isinstance(network, NetworkConfig) else NetworkConfig(**(network or {}))
    network = resolve_language_encoder(config).to_dict()  # loads a sentence encoder here, not on the meta device
    image_size = int(validate_env_args(env_args)["env_config"]["image_size"])

    def make() -> VLAActorCriticPolicy:
        spaces = make_observation_space(image_size), make_action_space()
        return VLAActorCriticPolicy(*spaces, _constant(0.0), network=network)

    with torch.device("meta"):
        count = sum(p.numel() for p in make().parameters())
    if count > MAX_POLICY_PARAMETERS:
        raise ValueError(
            f"a network of {count:,} parameters (image_size {image_size}, network {_sizes(network)}) exceeds the "
            f"limit of {MAX_POLICY_PARAMETERS:,}; use smaller channels, widths or images"
        )
    return make().to(resolve_device(device))


def _sizes(network: dict[str, Any]) -> dict[str, Any]:
    """A network config for a message: its vocabulary as a word count."""
    return {**network, "vocabulary": f"{len(network['vocabulary'])} words"}


def first_non_finite(payload: dict[str, Any]) -> str | None:
    """Name of the first tensor of a checkpoint payload (besides ``meta``) holding NaN or inf."""
    for key, value in payload.items():
        if key != "meta":
            bad = next(non_finite_tensors(value, str(key)), None)
            if bad is not None:
                return bad
    return None


def non_finite_tensors(value: Any, prefix: str = "") -> Iterator[str]:
    """Names (``policy['a.b']``, ``optimizer['state'][3]['exp_avg']``) of the floating-point
    tensors inside nested dicts, lists and tuples that hold NaN or inf."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            yield prefix
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_tensors(item, f"{prefix}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from non_finite_tensors(item, f"{prefix}[{i}]")


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
    bad = first_non_finite(payload)
    if bad is not None:  # never replace a good checkpoint with a poisoned one
        raise NonFiniteError(
            f"refusing to write checkpoint {str(path)!r}: {bad} holds NaN or inf, so training diverged "
            f"(lower the learning rates or loss weights); the previous file, if any, is kept"
        )
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
    if payload.get("version") in RETIRED_VERSIONS:
        version = payload["version"]
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {version} and cannot be loaded: {RETIRED_VERSIONS[version]}"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this vla_gym reads {CHECKPOINT_VERSION}"
        )
    payload["meta"] = _parse_meta(payload.get("meta"), str(path))
    if not isinstance(payload.get("policy"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no policy weights (its 'policy' entry is missing)")
    bad = first_non_finite(payload)
    if bad is not None:
        raise NonFiniteError(
            f"checkpoint {str(path)!r}: {bad} holds NaN or inf; it cannot be used (take an earlier checkpoint)"
        )
    return payload


def _parse_meta(text: Any, path: str) -> dict[str, Any]:
    """The checkpoint's ``meta`` JSON, checked: an object with :data:`REQUIRED_META_KEYS`, a
    valid env description and network sizes within bounds (before anything is built)."""
    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint {path!r} has no meta (the JSON description every vla_gym checkpoint holds)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path!r}: meta is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path!r}: meta must be a JSON object, got {type(meta).__name__}")
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path!r}: meta lacks {missing}; it cannot be rebuilt")
    try:
        validate_env_args(meta["env"])
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path!r}: meta['env'] {err}") from None
    try:
        if not isinstance(meta["network"], dict):
            raise ValueError(f"must be a JSON object, got {type(meta['network']).__name__}")
        meta["network"] = with_added_network_fields(with_recorded_vocabulary(meta["network"]))
        NetworkConfig(**meta["network"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path!r}: meta['network'] is not a valid network config: {err}") from None
    return meta


def with_recorded_vocabulary(network: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's network config with its word vocabulary: a checkpoint saved before
    the vocabulary was recorded (no ``vocabulary`` key, the word encoder) was trained with
    :data:`~vla_gym.agents.network.LEGACY_VOCABULARY`, not with today's default."""
    if "vocabulary" in network or network.get("language_encoder", WORD_ENCODER) != WORD_ENCODER:
        return network
    return {**network, "vocabulary": list(LEGACY_VOCABULARY)}


def missing_task_words(network: NetworkConfig | dict[str, Any], tasks: Iterable[str]) -> dict[str, list[str]]:
    """Task name -> the sorted train-split words of that task (of ``tasks``, names of
    :data:`~vla_gym.envs.tasks.TASKS`) that the word vocabulary of ``network`` lacks, for
    the tasks that lack any. Empty for a sentence encoder, which reads every word."""
    from vla_gym.envs.tasks import task_words

    config = network if isinstance(network, NetworkConfig) else NetworkConfig(**network)
    if config.language_encoder != WORD_ENCODER:
        return {}
    known = set(config.vocabulary)
    gaps = {task: sorted(task_words("train", [task]) - known) for task in tasks}
    return {task: words for task, words in gaps.items() if words}


def check_task_vocabulary(
    source: str, network: NetworkConfig | dict[str, Any], tasks: Iterable[str], *, env_name: str, strict: bool = False
) -> dict[str, list[str]]:
    """Say when the policy from ``source`` (a checkpoint path, for the message) cannot read
    words that the train-split instructions of ``tasks`` (the tasks of the env ``env_name``:
    ``env_args["env_config"]["tasks"]``) use; it reads them as ``<unk>``, so they steer
    nothing. A :class:`VocabularyWarning`, or with ``strict`` (for fine-tuning, where those
    words could never be learnt) a :class:`CheckpointError`; the message names each task and
    its missing words.

    Returns :func:`missing_task_words` (empty: nothing said).
    """
    gaps = missing_task_words(network, tasks)
    if gaps:
        lacks = "; ".join(f"task {task!r} lacks {words}" for task, words in gaps.items())
        message = (
            f"the policy {source!r} was trained with a word vocabulary that lacks words of {env_name}'s "
            f"instructions, which it reads as {UNK!r}: {lacks}; train a policy whose vocabulary holds them (the "
            f"default vocabulary covers every task's train words) or use a sentence encoder (--language-encoder)"
        )
        if strict:
            raise CheckpointError(message)
        warnings.warn(message, VocabularyWarning, stacklevel=2)
    return gaps


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
    if norm[0] == norm[1]:
        return []
    if all(isinstance(v, list) for v in norm) and max(map(len, norm)) > LONG_LIST:  # a vocabulary, say
        return [f"{prefix}: {_list_difference(*norm)}"]
    return [f"{prefix}: checkpoint {found!r} vs requested {expected!r}"]


#: Lists longer than this are described by their difference in config messages.
LONG_LIST = 8


def _list_difference(found: list, expected: list) -> str:
    """Where two unequal lists differ, in a line: their lengths and (lists of strings) the
    first items in one only."""
    if not all(isinstance(v, str) for v in [*found, *expected]):
        return f"checkpoint has {len(found)} items, requested {len(expected)}, not the same"
    found_set, expected_set = set(found), set(expected)
    extra = [v for v in found if v not in expected_set]
    missing = [v for v in expected if v not in found_set]
    return (
        f"checkpoint has {len(found)} items, requested {len(expected)} (only in the checkpoint: {extra[:LONG_LIST]}, "
        f"only requested: {missing[:LONG_LIST]}{', order differs' if not extra and not missing else ''})"
    )


#: Network config fields added after checkpoints were first written, with the value that
#: a checkpoint without the field behaves as (``vocabulary`` is not here: a checkpoint
#: without it used another vocabulary, see ``with_recorded_vocabulary``).
NETWORK_FIELDS_ADDED: dict[str, Any] = {"use_depth": True, "word_context": "bag", "destination_head": False, "fovea": 0}


#: Network config fields that vla_gym once wrote and no longer has, with the value under
#: which the network was the same as without them: a checkpoint holding that value loads (the
#: field dropped); another value is refused, as a network this version cannot build.
#: ``attention_depth``: an experimental option of commit 9672986, removed in 58942d3.
NETWORK_FIELDS_REMOVED: dict[str, Any] = {"attention_depth": False}


def with_added_network_fields(network: Any) -> Any:
    """A checkpoint's network config with the fields it predates (:data:`NETWORK_FIELDS_ADDED`)
    filled in and the removed fields it holds at their neutral value
    (:data:`NETWORK_FIELDS_REMOVED`) dropped; ``ValueError`` for a removed field that was on."""
    if not isinstance(network, dict):
        return network
    for name, neutral in NETWORK_FIELDS_REMOVED.items():
        if name in network and network[name] != neutral:
            raise ValueError(
                f"{name}={network[name]!r} is an option this version of vla_gym no longer has (only "
                f"{name}={neutral!r} loads); retrain the policy, or load it with the vla_gym version that wrote it"
            )
    kept = {k: v for k, v in network.items() if k not in NETWORK_FIELDS_REMOVED}
    return {**NETWORK_FIELDS_ADDED, **kept}


def resume_differences(saved: dict[str, Any], wanted: dict[str, Any], may_change: frozenset[str]) -> list[str]:
    """:func:`config_differences` of two run configs, leaving out the fields in ``may_change``
    (a saved network config gets the fields it predates)."""
    if isinstance(saved.get("network"), dict):
        saved = {**saved, "network": with_added_network_fields(saved["network"])}
    return config_differences(
        {k: v for k, v in saved.items() if k not in may_change}, {k: v for k, v in wanted.items() if k not in may_change}
    )


def check_training_state(
    path: str | os.PathLike,
    state: dict[str, Any],
    kind: str,
    config: dict[str, Any],
    *,
    meta_keys: tuple[str, ...],
    state_keys: tuple[str, ...],
    may_change: frozenset[str],
    remedy: str,
    guess: str | None = None,
    added: dict[str, Any] | None = None,
) -> None:
    """Check that ``state`` (a read ``last.pt``) is a ``kind`` ("bc", "ppo") training
    checkpoint made with the run config ``config`` up to the fields in ``may_change``;
    else :class:`CheckpointError`.

    Args:
        meta_keys, state_keys: what the meta and the payload of such a checkpoint hold; its
            run config is ``meta[kind]``, a dict.
        remedy: what to do instead, and ``guess``: what the file may be, for the message
            when ``state`` is not such a checkpoint.
        added: run-config fields added since checkpoints were first written, with the value
            that a checkpoint without the field ran with.
    """
    meta = state["meta"]
    missing = [k for k in meta_keys if k not in meta] + [k for k in state_keys if k not in state]
    if missing or not isinstance(meta[kind], dict):
        lacks = f"it lacks {missing or [kind]}" + (f"; {guess}" if guess else "")
        raise CheckpointError(
            f"cannot resume {str(path)!r}: it is not a {kind.upper()} training checkpoint ({lacks}); {remedy}"
        )
    differ = resume_differences({**(added or {}), **meta[kind]}, config, may_change)
    if differ:
        raise CheckpointError(f"cannot resume {str(path)!r} with another config: " + "; ".join(differ))


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
        differ = config_differences(with_added_network_fields(meta["network"]), wanted, "network")
        if differ:
            raise CheckpointError(f"checkpoint {str(path)!r} was made with another network config: " + "; ".join(differ))
    try:
        policy = build_policy(meta["env"], meta["network"], device)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} asks for a policy that cannot be built: {err}") from err
    try:
        policy.load_state_dict(payload["policy"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit its own network config: {err}") from err
    policy.set_training_mode(False)
    policy.checkpoint_meta = meta
    return policy
