"""Hostile inputs to the library: broken demo files, booby-trapped and oversized checkpoints,
non-finite configs, bad env input. Each case asserts the typed exception and its message;
BC resume is checked bit for bit."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from tests.conftest import interrupt_on_call
from vla_gym.agents import bc as bc_module
from vla_gym.agents.bc import BCConfig, train_bc
from vla_gym.agents.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    NonFiniteError,
    build_policy,
    load_policy,
    read_checkpoint,
    save_checkpoint,
)
from vla_gym.agents.ppo import VLAPPO, PPOConfig, train_ppo
from vla_gym.data import DemoDataset
from vla_gym.data.dataset import demo_file_summary
from vla_gym.data.format import DatasetError, env_args

TINY = {
    "channels": [4, 8, 8], "features_dim": 16, "net_arch": {"pi": [16], "vf": [16]}, "word_dim": 8,
    "language_dim": 8, "proprio_dim": 8, "contrastive_dim": 8,
}
NO_AUGMENT = {"shift_pixels": 0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "depth_noise_std": 0.0}


def tiny_bc(data: str, out: Path, **overrides) -> BCConfig:
    settings = dict(
        data=data, out=str(out), epochs=2, batch_size=16, lr=3e-3, warmup_steps=2, network=TINY, rollout_every=0,
        checkpoint_every=0, device="cpu", progress=False, paraphrase_prob=0.5, seed=3,
    )
    settings.update(overrides)
    return BCConfig(**settings)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The networks here are tiny: one thread is faster than several on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def demo_copy(demo_file, tmp_path) -> Path:
    copy = tmp_path / "demos.h5"
    shutil.copy(demo_file, copy)
    return copy


# --- demo files -----------------------------------------------------------------------------
def _set_attr(key: str, attr: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[key].attrs[attr] = value
    return edit


def _del_attr(key: str, attr: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[key].attrs[attr]
    return edit


def _replace(key: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        old = f[key][()]
        del f[key]
        f.create_dataset(key, data=make(old))
    return edit


def _env_args_edit(change: Callable[[dict], object]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f["data"].attrs["env_args"] = json.dumps(change(json.loads(f["data"].attrs["env_args"])))
    return edit


def _set_value(key: str, index: tuple, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[key][index] = value
    return edit


def _mask(split: str, names: Callable[[h5py.File], list[bytes]]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        new = np.array(names(f), dtype="S")
        del f["mask"][split]
        f["mask"].create_dataset(split, data=new)
    return edit


BAD_DEMO_FILES = {
    "episode without success": (_del_attr("data/demo_0", "success"), r"data/demo_0.attrs lacks \['success'\]"),
    "episode without target_colour": (
        _del_attr("data/demo_2", "target_colour"), r"data/demo_2.attrs lacks \['target_colour'\]"),
    "unknown target colour": (
        _set_attr("data/demo_1", "target_colour", "mauve"), r"data/demo_1.attrs\['target_colour'\] is 'mauve'"),
    "env_args from another env": (
        _env_args_edit(lambda a: {**a, "env_name": "Lift"}), r"env_args'\] names env 'Lift', which is not a vla_gym"),
    "env_args a JSON list": (_env_args_edit(lambda a: [a]), r"env_args'\] must be a JSON object .* got list"),
    "env_args a JSON string": (_env_args_edit(lambda a: "VLAPick-v0"), r"env_args'\] must be a JSON object"),
    "env_kwargs a JSON list": (
        _env_args_edit(lambda a: {**a, "env_kwargs": [1]}), r"env_kwargs must be a JSON object, got list"),
    "env_args bad JSON": (_set_attr("data", "env_args", "{not json"), r"env_args'\] is not valid JSON"),
    "image_size 100000": (
        _env_args_edit(lambda a: {**a, "env_config": {**a["env_config"], "image_size": 100000}}),
        r"env_config image_size 100000 must be an int from 16 to 512"),
    "64 px frames in an 84 px file": (
        _replace("data/demo_1/obs/rgb", lambda a: np.zeros((len(a), 64, 64, 3), np.uint8)),
        r"data/demo_1/obs/rgb has shape \(\d+, 64, 64, 3\); expected \(\d+, 84, 84, 3\)"),
    "7-D actions": (
        _replace("data/demo_0/actions", lambda a: np.zeros((len(a), 7), np.float32)),
        r"data/demo_0/actions has shape \(\d+, 7\); expected \(\d+, 4\)"),
    "NaN action": (
        _set_value("data/demo_0/actions", (3, 1), math.nan),
        r"data/demo_0/actions holds NaN or inf \(first at step 3\)"),
    "inf proprio": (
        _set_value("data/demo_4/obs/proprio", (2, 0), math.inf),
        r"data/demo_4/obs/proprio holds NaN or inf \(first at step 2\)"),
    "rgb stored as float64 = 300": (
        _replace("data/demo_0/obs/rgb", lambda a: np.full(a.shape, 300.0)),
        r"data/demo_0/obs/rgb has dtype float64; expected unsigned int of 1 byte"),
    "dones of 7": (_set_value("data/demo_0/dones", (0,), 7), r"data/demo_0/dones must hold only 0 and 1"),
    "mask/train with a repeated entry": (
        _mask("train", lambda f: [*f["mask/train"][()], f["mask/train"][0]]),
        r"mask/train lists episodes more than once: \['demo_0'\]"),
    "mask/train equal to mask/valid": (
        _mask("train", lambda f: list(f["mask/valid"][()])), r"mask/train shares 1 episode\(s\) with mask/valid"),
    "mask naming a missing episode": (
        _mask("valid", lambda f: [b"demo_99"]), r"mask/valid names episodes that are not there: \['demo_99'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_DEMO_FILES))
def test_bad_demo_file_is_refused_naming_file_and_key(demo_copy, case):
    edit, message = BAD_DEMO_FILES[case]
    with h5py.File(demo_copy, "a") as f:
        edit(f)
    with pytest.raises(DatasetError, match=message) as err:
        DemoDataset(demo_copy, "all", only_successful=False)
    assert str(demo_copy) in str(err.value) and "\n" not in str(err.value)


def _flip_chunk(path: Path, key: str, step: int) -> None:
    """Overwrite bytes in the middle of one frame's compressed chunk (a bit-flipped disk block)."""
    with h5py.File(path, "r") as f:
        dataset = f[key]
        info = dataset.id.get_chunk_info_by_coord((step,) + (0,) * (dataset.ndim - 1))
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + info.size // 2)
        handle.write(b"\xa5" * 8)


def test_bit_flipped_chunk_is_a_dataset_error_on_every_read_path(demo_copy, tmp_path):
    _flip_chunk(demo_copy, "data/demo_0/obs/rgb", 0)
    lazy = DemoDataset(demo_copy, "all")  # the sampled frames are intact: opening succeeds
    with pytest.raises(DatasetError, match=r"data/demo_0/obs/rgb cannot be read at step 0 .*filter returned failure"):
        lazy[0]
    with pytest.raises(DatasetError, match=r"data/demo_0/obs/rgb cannot be read .*filter returned failure"):
        DemoDataset(demo_copy, "all", in_memory=True)
    # Met mid-training in a lazily read file, in a DataLoader worker: one line naming the key.
    config = tiny_bc(str(demo_copy), tmp_path / "run", in_memory=False, num_workers=1, paraphrase_prob=0.0)
    with pytest.raises(DatasetError, match=r"^demo file .*data/demo_0/obs/rgb cannot be read at step 0") as err:
        train_bc(config)
    assert "\n" not in str(err.value)


def test_bit_flipped_sampled_chunk_is_refused_on_open(demo_copy):
    with h5py.File(demo_copy, "r") as f:
        middle = len(f["data/demo_2/obs/rgb"]) // 2
    _flip_chunk(demo_copy, "data/demo_2/obs/rgb", middle)
    with pytest.raises(DatasetError, match=rf"data/demo_2/obs/rgb cannot be read at step {middle}"):
        DemoDataset(demo_copy, "all")


def test_non_finite_depth_is_refused_when_read(demo_copy):
    with h5py.File(demo_copy, "a") as f:
        f["data/demo_0/obs/depth"][1, 5, 5, 0] = math.inf
    with pytest.raises(DatasetError, match=r"data/demo_0/obs/depth at step 1 holds depth inf m"):
        DemoDataset(demo_copy, "all")[1]
    with pytest.raises(DatasetError, match=r"data/demo_0/obs/depth holds depth inf m"):
        DemoDataset(demo_copy, "all", in_memory=True)


def test_content_fingerprint_follows_content_not_file_identity(demo_file, demo_copy, tmp_path):
    original = demo_file_summary(demo_file).fingerprint
    assert demo_file_summary(demo_copy).fingerprint == original  # another inode and mtime, same demos
    os.utime(demo_copy, (1, 1))
    assert demo_file_summary(demo_copy).fingerprint == original
    with h5py.File(demo_copy, "a") as f:
        f["data/demo_3/actions"][0, 0] += 1e-3  # same size, a different label
    assert demo_file_summary(demo_copy).fingerprint != original


def test_bc_resume_after_the_demo_file_was_replaced_is_refused(demo_copy, tmp_path):
    out = tmp_path / "run"
    train_bc(tiny_bc(str(demo_copy), out, epochs=1))
    before = (out / "last.pt").read_bytes()
    stat = os.stat(demo_copy)
    with h5py.File(demo_copy, "a") as f:
        f["data/demo_1/actions"][2, 3] *= -1
    os.utime(demo_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only content differs
    with pytest.raises(CheckpointError, match=r"the demo file .* changed since that checkpoint was written"):
        train_bc(tiny_bc(str(demo_copy), out, epochs=2, resume=True))
    assert (out / "last.pt").read_bytes() == before


# --- BC resume ------------------------------------------------------------------------------
def _weights(path: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["policy"]


def _assert_identical(a: str, b: str) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"weights differ: {differ[:3]}"


def test_bc_resume_to_more_epochs_is_bit_identical(demo_file, tmp_path):
    # A constant LR after warm-up, so the schedule itself does not depend on `epochs`.
    config = dict(min_lr_ratio=1.0, augment={**NO_AUGMENT, "shift_pixels": 2, "brightness": 0.1})
    straight = train_bc(tiny_bc(demo_file, tmp_path / "straight", epochs=2, **config))
    train_bc(tiny_bc(demo_file, tmp_path / "halves", epochs=1, **config))
    resumed = train_bc(tiny_bc(demo_file, tmp_path / "halves", epochs=2, resume=True, **config))
    assert resumed.steps == straight.steps
    _assert_identical(straight.last_path, resumed.last_path)

    def metrics(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in record.items() if k != "samples_per_second"} for record in history]

    assert metrics(resumed.history) == metrics(straight.history)


def test_bc_interrupted_mid_epoch_resumes_bit_identical(demo_file, tmp_path, monkeypatch):
    straight = train_bc(tiny_bc(demo_file, tmp_path / "straight", epochs=2))
    real = bc_module.augment_batch
    monkeypatch.setattr(bc_module, "augment_batch", interrupt_on_call(real, 5))  # on the fifth batch
    with pytest.raises(KeyboardInterrupt):
        train_bc(tiny_bc(demo_file, tmp_path / "cut", epochs=2))
    monkeypatch.setattr(bc_module, "augment_batch", real)
    np.random.seed(12345)  # the resumed process's global RNGs start elsewhere: the checkpoint restores them
    resumed = train_bc(tiny_bc(demo_file, tmp_path / "cut", epochs=2, resume=True))
    _assert_identical(straight.last_path, resumed.last_path)


# --- checkpoints ----------------------------------------------------------------------------
@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    policy = build_policy(env_args("VLAPick-v0"), TINY, "cpu")
    meta = {"env": env_args("VLAPick-v0"), "network": policy.features_extractor.config.to_dict()}
    return save_checkpoint(tmp_path / "tiny.pt", policy, meta)


def _rewrite(path: Path, change: Callable[[dict], None]) -> Path:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def _meta_edit(change: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(payload: dict) -> None:
        meta = json.loads(payload["meta"])
        change(meta)
        payload["meta"] = json.dumps(meta)
    return edit


def _network(**fields) -> Callable[[dict], None]:
    return _meta_edit(lambda meta: meta["network"].update(fields))


def _huge_images(meta: dict) -> None:
    meta["env"] = env_args("VLAPick-v0", {"image_size": 512})
    meta["network"].update(channels=[512] * 3)


BAD_CHECKPOINTS = {
    "meta missing": (lambda p: p.pop("meta"), CheckpointError, r"has no meta"),
    "meta bad JSON": (lambda p: p.update(meta="{oops"), CheckpointError, r"meta is not valid JSON"),
    "meta a list": (lambda p: p.update(meta="[]"), CheckpointError, r"meta must be a JSON object, got list"),
    "meta without env": (_meta_edit(lambda m: m.pop("env")), CheckpointError, r"meta lacks \['env'\]"),
    "env of another project": (
        _meta_edit(lambda m: m["env"].update(env_name="Lift")), CheckpointError, r"names env 'Lift'"),
    "image_size 100000": (
        _meta_edit(lambda m: m["env"]["env_config"].update(image_size=100000)), CheckpointError,
        r"meta\['env'\] env_config image_size 100000 must be an int from 16 to 512"),
    "huge channels": (
        _network(channels=[100000] * 3), CheckpointError, r"meta\['network'\] .*channels must be an int in \[1, 512\]"),
    "huge MLP": (
        _network(net_arch={"pi": [10**9], "vf": [64]}), CheckpointError,
        r"net_arch\['pi'\] must be an int in \[1, 4096\], got 1000000000"),
    "too many parameters in all": (
        _meta_edit(_huge_images), CheckpointError, r"parameters .* exceeds the limit of 50,000,000"),
    "NaN weights": (
        lambda p: next(iter(p["policy"].values())).fill_(math.nan), NonFiniteError,
        r"policy\['.*'\] holds NaN or inf; it cannot be used"),
    "no policy": (lambda p: p.pop("policy"), CheckpointError, r"holds no policy weights"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused_before_allocation(tiny_checkpoint, case):
    change, error, message = BAD_CHECKPOINTS[case]
    _rewrite(tiny_checkpoint, change)
    with pytest.raises(error, match=message) as err:
        load_policy(tiny_checkpoint, device="cpu")
    assert str(tiny_checkpoint) in str(err.value) and "\n" not in str(err.value)


class RunsShellCommand:
    """A pickle that would run a command on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_booby_trapped_pickle_is_refused_and_never_runs(tmp_path):
    marker, trapped = tmp_path / "pwned", tmp_path / "trapped.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": "{}",
                "policy": {"w": RunsShellCommand(marker)}}, trapped)
    with pytest.raises(CheckpointError, match="cannot be read as a vla_gym checkpoint"):
        load_policy(trapped, device="cpu")
    assert not marker.exists()


def test_non_finite_weights_are_never_saved(tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, device="cpu")
    before = tiny_checkpoint.read_bytes()
    with torch.no_grad():
        policy.log_std.fill_(math.inf)
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint .*policy\['log_std'\] holds NaN or inf"):
        save_checkpoint(tiny_checkpoint, policy, policy.checkpoint_meta)
    assert tiny_checkpoint.read_bytes() == before


def test_diverged_ppo_raises_and_keeps_a_finite_last_checkpoint(tmp_path, monkeypatch):
    def diverge(self) -> None:
        with torch.no_grad():
            self.policy.value_net.weight.fill_(math.nan)

    monkeypatch.setattr(VLAPPO, "_warm_up_critic", diverge)
    config = PPOConfig(out=str(tmp_path / "ppo"), network=TINY, n_envs=1, n_steps=32, batch_size=32, timesteps=32,
                       vec_env="dummy", eval_episodes=1, device="cpu", progress=False)
    with pytest.raises(NonFiniteError, match=r"PPO diverged: after update 0, policy\['value_net.weight'\] holds NaN"):
        train_ppo(config)
    saved = read_checkpoint(tmp_path / "ppo" / "last.pt")  # written before the update, still finite
    assert saved["meta"]["timesteps"] == 0


def test_ppo_resume_of_a_bc_run_directory_is_refused(demo_file, tmp_path):
    bc = train_bc(tiny_bc(demo_file, tmp_path / "bc", epochs=1))
    config = PPOConfig(init=bc.policy_path, out=str(tmp_path / "bc"), resume=True, n_envs=1, n_steps=64,
                       batch_size=64, timesteps=64, vec_env="dummy", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"is not a PPO training checkpoint .*lacks \['ppo'"):
        train_ppo(config)


# --- configs --------------------------------------------------------------------------------
BAD_PPO = {
    "critic_lr inf": ({"critic_lr": math.inf}, r"critic_lr must be a finite number > 0.0, got inf"),
    "lr nan": ({"lr": math.nan}, r"lr must be a finite number > 0.0, got nan"),
    "ent_coef nan": ({"ent_coef": math.nan}, r"ent_coef must be a finite number >= 0.0, got nan"),
    "vf_coef inf": ({"vf_coef": math.inf}, r"vf_coef must be a finite number >= 0.0, got inf"),
    "gae_lambda nan": ({"gae_lambda": math.nan}, r"gae_lambda must be a finite number in \[0.0, 1.0\], got nan"),
    "target_kl inf": ({"target_kl": math.inf}, r"target_kl must be > 0 or None, got inf"),
    "n_steps a string": ({"n_steps": "64"}, r"n_steps must be an int in \[1, 1000000\], got '64'"),
    "n_envs 10**6": ({"n_envs": 10**6}, r"n_envs must be an int in \[1, 256\]"),
    "rollout too large": ({"n_steps": 1_000_000, "n_envs": 8, "batch_size": 64}, r"GiB; the limit is 16 GiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_PPO))
def test_bad_ppo_config_is_refused(tmp_path, case):
    overrides, message = BAD_PPO[case]
    with pytest.raises(ValueError, match=message):
        PPOConfig(out=str(tmp_path), **overrides)


BAD_BC = {
    "contrastive_coef inf": ({"contrastive_coef": math.inf}, r"contrastive_coef must be a finite number >= 0.0"),
    "lr nan": ({"lr": math.nan}, r"lr must be a finite number > 0.0, got nan"),
    "paraphrase_prob nan": ({"paraphrase_prob": math.nan}, r"paraphrase_prob must be a finite number in \[0.0, 1.0\]"),
    "batch_size 10**9": ({"batch_size": 10**9}, r"batch_size must be an int in \[1, 65536\]"),
    "rollouts of no episode": ({"rollout_every": 1, "rollout_episodes": 0}, r"rollout_episodes must be >= 1 when"),
    "augment brightness nan": ({"augment": {"brightness": math.nan}}, r"brightness must be a finite number"),
    "network log_std_init inf": ({"network": {"log_std_init": math.inf}}, r"log_std_init must be a finite number"),
}


@pytest.mark.parametrize("case", sorted(BAD_BC))
def test_bad_bc_config_is_refused(demo_file, tmp_path, case):
    overrides, message = BAD_BC[case]
    with pytest.raises(ValueError, match=message):
        tiny_bc(demo_file, tmp_path, **overrides)


# --- env input ------------------------------------------------------------------------------
BAD_ACTIONS = {
    "strings": ["1", "0", "0", "0"],
    "string array": np.array(["1", "0", "0", "0"]),
    "bytes": [b"1", b"0", b"0", b"0"],
    "complex array": np.array([1 + 2j, 0, 0, 0]),
    "complex list": [0.5j, 0.0, 0.0, 0.0],
    "one string": "abcd",
    "None": None,
}


@pytest.mark.parametrize("case", sorted(BAD_ACTIONS))
def test_bad_action_types_are_refused(make_env, case):
    env = make_env("VLAPick-v0", num_objects=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be 4 finite real numbers \(dx, dy, dz, grip\)"):
        env.unwrapped.step(BAD_ACTIONS[case])


@pytest.mark.parametrize("value", ["34", (2.9, 5.9), 3.7, None, True, (2, "5"), (5, 2), 7])
def test_bad_num_objects_are_refused(value):
    with pytest.raises(ValueError, match=r"num_objects=.* must be an int or a \(min, max\) pair of ints with 2 <= "):
        gym.make("VLAPick-v0", num_objects=value)


@pytest.mark.parametrize("call", ["step", "reset"])
def test_step_and_reset_after_close_say_so(call):
    env = gym.make("VLAPick-v0", num_objects=2)
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match=rf"{call}\(\) on a closed env; make a new one with gym.make"):
        env.unwrapped.step(np.zeros(4, np.float32)) if call == "step" else env.unwrapped.reset(seed=1)


# --- the periodic sim rebuild ----------------------------------------------------------------
def _expert_episode(env: gym.Env, seed: int) -> list[dict[str, np.ndarray]]:
    from vla_gym.envs.experts import ScriptedExpert

    policy = ScriptedExpert(env, noise_std=0.3, seed=seed)
    obs, _ = env.reset(seed=seed)
    frames, done = [obs], False
    while not done:
        obs, _, terminated, truncated, _ = env.step(policy.predict(obs, deterministic=False)[0])
        frames.append(obs)
        done = terminated or truncated
    return frames


def test_sim_rebuild_leaves_every_frame_unchanged(make_env, monkeypatch):
    from vla_gym.envs import tabletop_env

    monkeypatch.setattr(tabletop_env, "SIM_REBUILD_EVERY", 2)
    lived = make_env("VLAPick-v0")
    sim, rebuilds = lived.unwrapped.sim, []
    reconnect = sim.reconnect
    monkeypatch.setattr(sim, "reconnect", lambda: (rebuilds.append(1), reconnect()))
    for seed in (1, 2, 3, 4):
        rebuilt = _expert_episode(lived, seed)
        fresh = _expert_episode(make_env("VLAPick-v0"), seed)
        assert len(rebuilt) == len(fresh)
        for a, b in zip(rebuilt, fresh):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"seed {seed}: {key} differs")
    assert len(rebuilds) == 2  # at the second and the fourth reset


# --- memory ---------------------------------------------------------------------------------
#: Resets of the short memory check, and the RSS growth it allows after the first 500: one
#: rebuild period keeps at most ~256 resets' worth (~1 MB); without the rebuild 1500 resets
#: keep ~5 MB.
MEMORY_RESETS = 2000
MAX_GROWTH_BYTES = 2 * 2**20


@pytest.mark.slow
def test_memory_stays_flat_over_many_resets():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reset_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--worker", "--resets", str(MEMORY_RESETS)],
        capture_output=True, text=True, timeout=900, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rss_end"] - result["rss_warm"] < MAX_GROWTH_BYTES, result
    assert result["growth"] < 0.05, result
