"""Demo collection into HDF5, the torch Dataset, and augmentation."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import TWO_TASK_KWARGS, TWO_TASKS, interrupt_on_call
from vla_gym.data import CollectConfig, DatasetError, DemoDataset, check_env_matches, collect_demos, open_demo_file
from vla_gym.data import collect as collect_module
from vla_gym.data.collect import split_by_task
from vla_gym.data.dataset import demo_file_summary
from vla_gym.data.augment import AugmentConfig, augment_batch, colour_jitter, random_shift
from vla_gym.data.dataset import collate_batch, paraphrase_instruction
from vla_gym.agents.network import words_of
from vla_gym.envs.language import decode_instruction, words_of_split
from vla_gym.envs.scene import PALETTE

FRAME_KEYS = {"rgb": (84, 84, 3), "depth": (84, 84, 1), "proprio": (8,), "instruction": (128,), "action": (4,)}


def test_file_layout_and_round_trip(demo_file):
    with h5py.File(demo_file) as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "VLAPick-v0"
        names = sorted(n for n in data if n.startswith("demo_"))
        assert len(names) == 6
        train = {n.decode() for n in f["mask/train"][()]}
        valid = {n.decode() for n in f["mask/valid"][()]}
        assert train | valid == set(names) and not train & valid and valid
        demo = data["demo_0"]
        n = demo.attrs["num_samples"]
        assert demo["obs/rgb"].shape == (n, 84, 84, 3) and demo["obs/rgb"].compression == "gzip"
        assert demo["obs/depth"].chunks == (1, 84, 84, 1)
        assert demo["actions"].shape == demo["executed_actions"].shape == (n, 4)
        assert demo["states/target_positions"].shape == (n, 3)
        assert demo["dones"][-1] == 1 and demo["dones"][:-1].sum() == 0
        assert demo["rewards"][-1] == 1.0 and demo.attrs["success"]
        assert decode_instruction(demo["obs/instruction"][0]) == demo.attrs["instruction"]
        seed, first_obs = int(demo.attrs["seed"]), {k: demo["obs"][k][0] for k in demo["obs"]}
        collector = json.loads(data.attrs["collector"])
        assert collector["noise_std"] == 0.3 and data.attrs["total"] == sum(data[m].attrs["num_samples"] for m in names)
    # The env rebuilt from the file's own description gives back the stored first frame.
    env = gym.make(env_args["env_name"], **env_args["env_kwargs"])
    obs, info = env.reset(seed=seed)
    env.close()
    for key, value in obs.items():
        np.testing.assert_array_equal(value, first_obs[key], err_msg=key)


def test_same_demos_whatever_the_number_of_workers(demo_file, tmp_path):
    out = tmp_path / "two_workers.h5"
    collect_demos(CollectConfig(out=str(out), episodes=3, workers=2, seed=0), progress=False)
    with h5py.File(demo_file) as a, h5py.File(out) as b:
        for i in range(3):
            for key in ("obs/rgb", "obs/depth", "obs/proprio", "actions", "executed_actions"):
                np.testing.assert_array_equal(a[f"data/demo_{i}/{key}"][()], b[f"data/demo_{i}/{key}"][()])


def test_dataset_items_and_dataloader_workers(demo_file):
    dataset = DemoDataset(demo_file, split="all")
    with h5py.File(demo_file) as f:
        assert len(dataset) == f["data"].attrs["total"]
        np.testing.assert_array_equal(dataset[1]["rgb"], f["data/demo_0/obs/rgb"][1])
        np.testing.assert_array_equal(dataset[1]["action"], f["data/demo_0/actions"][1])
    item = dataset[0]
    assert {k: v.shape for k, v in item.items() if k in FRAME_KEYS} == FRAME_KEYS
    assert 0 < item["return"] <= 1
    # Privileged label: the goal's offset from the end-effector (m); near zero once grasped.
    assert item["target_offset"].shape == (3,) and np.linalg.norm(item["target_offset"]) > 0.1
    assert np.linalg.norm(dataset[int(dataset.lengths[0]) - 1]["target_offset"]) < 0.03
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2, collate_fn=collate_batch)
    batch = next(iter(loader))
    assert {k: tuple(v.shape[1:]) for k, v in batch.items() if k in FRAME_KEYS} == FRAME_KEYS
    assert batch["rgb"].dtype == torch.uint8 and batch["action"].dtype == torch.float32
    assert batch["action"].shape[0] == 8
    # In-memory batches equal lazy ones.
    memory = DemoDataset(demo_file, split="all", in_memory=True)
    stacked = collate_batch(memory.__getitems__([0, 5, 9]))
    for key in FRAME_KEYS:
        np.testing.assert_array_equal(stacked[key][1].numpy(), dataset[5][key])


def test_splits_and_success_filter(demo_file, tmp_path):
    train, valid = DemoDataset(demo_file, "train"), DemoDataset(demo_file, "valid")
    assert set(train.episodes).isdisjoint(valid.episodes) and len(train.episodes) + len(valid.episodes) == 6
    edited = tmp_path / "edited.h5"
    edited.write_bytes(open(demo_file, "rb").read())
    with h5py.File(edited, "a") as f:
        f["data/demo_0"].attrs["success"] = False
    assert "demo_0" not in DemoDataset(edited, "all").episodes
    assert "demo_0" in DemoDataset(edited, "all", only_successful=False).episodes
    with pytest.raises(ValueError, match="split"):
        DemoDataset(demo_file, "test")


def test_missing_corrupt_and_mismatched_files(demo_file, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        DemoDataset(tmp_path / "nope.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        DemoDataset(garbage)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(open(demo_file, "rb").read()[: os.path.getsize(demo_file) // 2])
    with pytest.raises(DatasetError):
        DemoDataset(truncated)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(open(demo_file, "rb").read())
    with h5py.File(broken, "a") as f:
        del f["data/demo_1/actions"]
    with pytest.raises(DatasetError, match="demo_1/actions is missing"):
        open_demo_file(broken)
    with pytest.raises(DatasetError, match="image_size: file 84 vs requested 64"):
        check_env_matches(demo_file, "VLAPick-v0", {"image_size": 64})
    with pytest.raises(DatasetError, match="collected on 'VLAPick-v0', not 'VLAPickDense-v0'"):
        check_env_matches(demo_file, "VLAPickDense-v0", None)
    assert check_env_matches(demo_file, "VLAPick-v0", {"num_objects": [3, 5]})["env_name"] == "VLAPick-v0"


def test_interrupted_collection_keeps_the_previous_file(demo_file, tmp_path, monkeypatch):
    out = tmp_path / "demos.h5"
    out.write_bytes(open(demo_file, "rb").read())
    before = out.read_bytes()
    calls = []

    def interrupt(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(collect_module, "_write_episode", interrupt)
    with pytest.raises(KeyboardInterrupt):
        collect_demos(CollectConfig(out=str(out), episodes=4, workers=0), progress=False)
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["demos.h5"]  # no temporary file left behind


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"episodes": 0}, "episodes"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"env_id": "Nope-v0"}, "not a vla_gym env"),
        ({"env_kwargs": {"colour": "red"}}, "unknown vla_gym env kwargs"),
        ({"episodes": 4, "episodes_per_task": 2}, "episodes=4 and episodes_per_task=2 exclude each other"),
        ({"episodes_per_task": 0}, "episodes_per_task must be an int from 1 to 100000, got 0"),
        ({"env_id": "VLAMultiTask-v0", "episodes_per_task": 20_000}, "give at most 16666 per task"),
    ],
)
def test_bad_collect_config(kwargs, message, tmp_path):
    with pytest.raises((ValueError, TypeError), match=message):
        CollectConfig(out=str(tmp_path / "x.h5"), **kwargs)


def test_random_shift_moves_rgb_and_depth_together():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(16, 1, 20, 20)
    both, shift = random_shift(torch.cat([image, image * 2], dim=1), 4, generator)
    assert both.shape == (16, 2, 20, 20) and shift.shape == (16, 2)
    torch.testing.assert_close(both[:, 1], both[:, 0] * 2)
    assert not torch.equal(both[:, 0], image[:, 0])
    # The reported shift says where content went: pixel (x, y) is now at (x, y) + shift.
    for i in range(16):
        dx, dy = (int(v) for v in shift[i])
        torch.testing.assert_close(both[i, 0, 8 + dy, 8 + dx], image[i, 0, 8, 8])


def test_target_image_coordinates_follow_the_shift(demo_file):
    """The goal's image position (a label) lands on the goal's pixels, before and after shifting."""
    dataset = DemoDataset(demo_file, "all", in_memory=True)
    batch = collate_batch(dataset.__getitems__(np.asarray(dataset.starts[:-1])))  # first frames
    shifted = augment_batch(batch, AugmentConfig(brightness=0, contrast=0, saturation=0, depth_noise_std=0),
                            torch.Generator().manual_seed(3))
    for frames in (batch, shifted):
        for i, (colour, _) in enumerate(dataset.targets):
            col, row = ((frames["target_uv"][i].numpy() + 1) * 83 / 2).round().astype(int)
            pixel = frames["rgb"][i, row, col].float().numpy() / 255
            expected = np.array(PALETTE[colour][:3])
            cosine = pixel @ expected / (np.linalg.norm(pixel) * np.linalg.norm(expected))
            assert cosine > 0.95, (colour, pixel)


def test_destination_labels_follow_the_recorded_subgoal(balanced_file):
    """Each frame's destination items come from states/subgoal_destination_positions: pick's
    above the object, place's in the receptacle; lazy and in-memory reads agree, and the
    shift moves destination_uv as it moves target_uv."""
    lazy, memory = DemoDataset(balanced_file, "all"), DemoDataset(balanced_file, "all", in_memory=True)
    with h5py.File(balanced_file) as f:
        for episode, name in enumerate(lazy.episodes):
            demo = f["data"][name]
            destination = demo["states/subgoal_destination_positions"][()]
            proprio = demo["obs/proprio"][()]
            frames = collate_batch(memory.__getitems__(np.arange(lazy.starts[episode], lazy.starts[episode + 1])))
            np.testing.assert_allclose(frames["destination_offset"].numpy(), destination - proprio[:, :3], atol=1e-6)
            assert (frames["has_destination"].numpy() == 1).all()
            if lazy.tasks[episode] == "place":
                receptacle = demo["states/receptacle_positions"][()]
                assert np.abs(destination[:, :2] - receptacle[:, :2]).max() < 1e-5
            else:  # pick: straight above the object
                np.testing.assert_allclose(destination[:, :2], demo["states/target_positions"][:, :2], atol=1e-6)
            item = lazy[int(lazy.starts[episode]) + 3]
            for key in ("destination_offset", "destination_uv", "has_destination", "target_offset", "target_uv"):
                np.testing.assert_allclose(item[key], frames[key][3].numpy(), atol=1e-6)
    batch = collate_batch(memory.__getitems__(np.arange(8)))
    shifted = augment_batch(batch, AugmentConfig(shift_pixels=4), torch.Generator().manual_seed(0))
    moved = shifted["destination_uv"] - batch["destination_uv"]
    torch.testing.assert_close(moved, shifted["target_uv"] - batch["target_uv"])
    assert moved.abs().max() > 0


def test_files_without_subgoal_states_read_with_no_destination(demo_file, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(open(demo_file, "rb").read())
    with h5py.File(old, "a") as f:
        for name in f["data"]:
            for key in ("subgoal_object_positions", "subgoal_destination_positions"):
                del f[f"data/{name}/states/{key}"]
    for in_memory in (False, True):
        dataset = DemoDataset(old, "all", in_memory=in_memory)
        item = dataset[4]
        assert item["has_destination"] == 0 and not item["destination_offset"].any()
        assert not item["destination_uv"].any()
        with h5py.File(old) as f:
            target = f["data/demo_0/states/target_positions"][4]
        np.testing.assert_allclose(item["target_offset"], target - item["proprio"][:3], atol=1e-6)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of RGB (..., 3) floats in [0, 1]."""
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32).reshape(1, -1, 3), cv2.COLOR_RGB2HSV)[0, :, 0]


def test_colour_jitter_never_changes_hue():
    # Every palette colour, under shading from dark to lit, as one 2 x N image per shade.
    base = np.array([rgba[:3] for rgba in PALETTE.values()], dtype=np.float32)
    shades = np.concatenate([base * s for s in (0.3, 0.6, 0.9)])
    image = torch.from_numpy(np.repeat(shades[None], 64, 0)).permute(0, 2, 1)[..., None]  # (64, 3, N, 1)
    jittered = colour_jitter(image, 0.15, 0.15, 0.15, torch.Generator().manual_seed(0))
    assert not torch.allclose(jittered, image)
    before = _hue(image.permute(0, 2, 3, 1).numpy())
    after = _hue(jittered.permute(0, 2, 3, 1).numpy())
    difference = np.abs((after - before + 180) % 360 - 180)
    assert difference.max() < 0.5  # degrees; red and orange are 30 degrees apart


def test_augment_batch_keeps_shapes_and_scales():
    batch = {
        "rgb": torch.randint(0, 256, (4, 84, 84, 3), dtype=torch.uint8),
        "depth": torch.full((4, 84, 84, 1), 1.0),
        "proprio": torch.zeros(4, 8),
    }
    out = augment_batch(batch, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out["rgb"].shape == (4, 84, 84, 3) and out["depth"].shape == (4, 84, 84, 1)
    assert 0 <= float(out["rgb"].min()) and float(out["rgb"].max()) <= 255
    assert abs(float(out["depth"].mean()) - 1.0) < 0.01 and float(out["depth"].std()) > 0
    assert out["proprio"] is batch["proprio"]
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=1.5)


def test_paraphrase_keeps_the_goal_and_uses_train_words():
    rng = np.random.default_rng(0)
    train_words = words_of_split("train")
    texts = {paraphrase_instruction(rng, "purple", "sphere") for _ in range(200)}
    assert len(texts) > 20
    for text in texts:
        assert "purple" in text.split()
        assert set(words_of(text)) <= train_words | {"purple"}


@pytest.fixture(scope="module")
def multi_task_file(tmp_path_factory) -> str:
    """Expert episodes of VLAMultiTask-v0 (several tasks), collected in this process."""
    path = tmp_path_factory.mktemp("multi") / "multi.h5"
    collect_demos(CollectConfig(out=str(path), env_id="VLAMultiTask-v0", episodes=5, workers=0, seed=3), progress=False)
    return str(path)


def test_multi_task_file_records_each_episode_task_roles_and_positions(multi_task_file):
    from vla_gym.envs import TASKS

    with h5py.File(multi_task_file) as f:
        tasks = set()
        for name in (n for n in f["data"] if n.startswith("demo_")):
            demo = f["data"][name]
            task, roles = str(demo.attrs["task"]), json.loads(demo.attrs["roles"])
            tasks.add(task)
            assert task in TASKS and "target" in roles
            assert roles["target"] == {"colour": demo.attrs["target_colour"], "shape": demo.attrs["target_shape"]}
            n = demo.attrs["num_samples"]
            for role in roles:  # one position series per role
                assert demo[f"states/{role}_positions"].shape == (n, 3)
            paraphrases = json.loads(demo.attrs["paraphrases"])
            allowed = TASKS[task].words("train") | set(PALETTE)
            assert len(paraphrases) == 8 and all(set(re.findall(r"[a-z]+", p)) <= allowed for p in paraphrases)
            assert demo.attrs["subgoals_done"] == demo.attrs["num_subgoals"] >= 1
    assert len(tasks) >= 2


def test_dataset_filters_by_task_and_paraphrases_from_the_episode_task(multi_task_file):
    every = DemoDataset(multi_task_file, split="all")
    task = every.tasks[0]
    only = DemoDataset(multi_task_file, split="all", tasks=[task])
    assert set(only.tasks) == {task} and 0 < len(only) <= len(every)
    with pytest.raises(ValueError, match="tasks"):
        DemoDataset(multi_task_file, split="all", tasks=["juggle"])
    paraphrased = DemoDataset(multi_task_file, split="all", tasks=[task], paraphrase_prob=1.0, seed=0)
    with open_demo_file(multi_task_file) as handle:
        stored = json.loads(handle["data"][paraphrased.episodes[0]].attrs["paraphrases"])
    text = decode_instruction(paraphrased[0]["instruction"])
    assert any(set(text.split()) <= set(option.split()) for option in stored)  # one of them, words dropped


# --------------------------------------------------------------------------- balanced collection
def _episodes(path) -> list[tuple[str, int]]:
    """(task, seed) of each episode, in order."""
    with open_demo_file(path) as handle:
        data = handle["data"]
        return [(str(data[n].attrs["task"]), int(data[n].attrs["seed"])) for n in demo_file_summary(path).episodes]


def _masks_by_task(path) -> dict[str, dict[str, int]]:
    """How many episodes of each task each mask lists."""
    summary = demo_file_summary(path)
    tasks = dict(zip(summary.episodes, (task for task, _ in _episodes(path))))
    return {split: dict(sorted(Counter(tasks[n] for n in names).items())) for split, names in summary.masks.items()}


def test_balanced_collection_keeps_n_episodes_of_each_task(balanced_file):
    assert _episodes(balanced_file) == [("pick", 0), ("place", 1), ("pick", 2), ("place", 3)]  # round-robin
    with h5py.File(balanced_file) as f:
        collector = json.loads(f["data"].attrs["collector"])
    assert collector["balanced"] is True and collector["episodes_per_task"] == 2 and collector["episodes"] is None
    assert collector["episodes_by_task"] == {"pick": 2, "place": 2}
    assert _masks_by_task(balanced_file) == {"train": {"pick": 1, "place": 1}, "valid": {"pick": 1, "place": 1}}
    dataset = DemoDataset(balanced_file, "all")
    assert dataset.task_names == TWO_TASKS
    expected = np.repeat([TWO_TASKS.index(t) for t in dataset.tasks], dataset.lengths)
    np.testing.assert_array_equal(dataset.frame_tasks, expected)
    assert len(dataset.frame_tasks) == len(dataset)


def _failing_on(seeds: set[int], ran: list[int]):
    """``_record_episode`` with the expert failing on ``seeds``; the seeds run go to ``ran``."""
    real = collect_module._record_episode

    def record(attempt):
        episode = real(attempt)
        if not attempt.skip:
            ran.append(attempt.seed)
            episode["attrs"]["success"] = attempt.seed not in seeds
        return episode

    return record


def test_balanced_collection_retries_failures_and_resumes_to_the_same_file(tmp_path, monkeypatch):
    def config(name: str) -> CollectConfig:
        return CollectConfig(out=str(tmp_path / name), env_id="VLAMultiTask-v0", env_kwargs=TWO_TASK_KWARGS,
                             episodes_per_task=2, workers=0, seed=0)

    ran: list[int] = []
    monkeypatch.setattr(collect_module, "_record_episode", _failing_on({1}, ran))
    result = collect_demos(config("a.h5"), progress=False)
    # place fails at seed 1 and is retried at seed 5; pick is full after seed 2, so attempt 4 is
    # not kept (and, drawn after that was known, not even run).
    assert _episodes(tmp_path / "a.h5") == [("pick", 0), ("pick", 2), ("place", 3), ("place", 5)]
    assert (result.episodes, result.attempts, result.failures_dropped) == (4, 6, 2)
    assert 4 not in ran and "attempts not kept" in result.summary()
    assert _masks_by_task(tmp_path / "a.h5")["valid"] == {"pick": 1, "place": 1}
    # Interrupted (Ctrl-C on the third attempt), then resumed: the same file.
    monkeypatch.setattr(collect_module, "_record_episode", interrupt_on_call(_failing_on({1}, []), 3))
    with pytest.raises(KeyboardInterrupt):
        collect_demos(config("b.h5"), progress=False, keep_partial=True)
    monkeypatch.setattr(collect_module, "_record_episode", _failing_on({1}, []))
    collect_demos(config("b.h5"), progress=False, resume=True)
    assert demo_file_summary(tmp_path / "b.h5").fingerprint == demo_file_summary(tmp_path / "a.h5").fingerprint


def test_balanced_shards_in_worker_processes_match_the_single_file(balanced_file, tmp_path):
    out = tmp_path / "shards"
    collect_demos(CollectConfig(out=str(out), env_id="VLAMultiTask-v0", env_kwargs=TWO_TASK_KWARGS,
                                episodes_per_task=2, workers=2, seed=0, shards=True, shard_episodes=3), progress=False)
    assert demo_file_summary(out).fingerprint == demo_file_summary(balanced_file).fingerprint


def test_balanced_on_a_single_task_env_is_the_plain_collection(demo_file, tmp_path):
    out = tmp_path / "pick.h5"
    collect_demos(CollectConfig(out=str(out), episodes_per_task=6, workers=0, seed=0), progress=False)
    assert demo_file_summary(out).fingerprint == demo_file_summary(demo_file).fingerprint


@pytest.mark.parametrize(
    "tasks, fraction, valid",
    [
        (["a"] * 10 + ["b"] * 4 + ["c"], 0.2, {"a": 2, "b": 1}),  # a single episode stays in train
        (["a", "b"] * 5, 0.1, {"a": 1, "b": 1}),  # at least one of each task with two or more
        (["a", "b"] * 5, 0.0, {}),
        (["a", "b", "b"], 0.9, {"a": 1, "b": 1}),  # never all of two or more; a lone one is rounded
    ],
)
def test_masks_are_stratified_by_task(tasks, fraction, valid):
    train, chosen = split_by_task(tasks, fraction, seed=0)
    assert sorted(train + chosen) == list(range(len(tasks))) and train == sorted(train)
    assert dict(Counter(tasks[i] for i in chosen)) == valid


@pytest.mark.parametrize("episodes, fraction", [(6, 0.1), (10, 0.3), (2, 0.5), (1, 0.1)])
def test_a_single_task_split_is_the_unstratified_one(episodes, fraction):
    """Single-task files keep the split they had before stratification."""
    order = np.random.default_rng(7).permutation(episodes)
    n_valid = int(round(fraction * episodes))
    n_valid = min(max(n_valid, 1), episodes - 1) if episodes > 1 else n_valid
    assert split_by_task(["pick"] * episodes, fraction, seed=7)[1] == sorted(order[:n_valid].tolist())


def test_paraphrase_word_drops_keep_the_words_that_tell_tasks_apart():
    import numpy as np

    from vla_gym.data.dataset import drop_words, task_specific_words

    keep = task_specific_words({"pick", "stack", "push", "place"})
    assert {"stack", "on", "push", "zone", "into", "bowl"} <= keep
    assert not {"the", "cube", "red"} & keep  # every task uses them (colours are kept anyway)
    assert task_specific_words({"pick"}) == frozenset()
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = drop_words(rng, "stack the red cube on the blue cube", keep).split()
        assert {"stack", "red", "on", "blue"} <= set(words)
    dropped = {w for _ in range(200) for w in ["stack", "on"] if w not in drop_words(rng, "stack on red").split()}
    assert dropped == {"stack", "on"}  # without keep, any non-colour word may go
