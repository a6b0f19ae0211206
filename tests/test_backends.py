"""Backends (local worker processes, Ray) and sharded demo collection: same seeds, same episodes."""

from __future__ import annotations

import math
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from vla_gym.backends import (
    BackendError,
    LocalBackend,
    RayNotInstalledError,
    check_ray_address,
    import_ray,
    make_backend,
)
from vla_gym.cli import main
from vla_gym.data import CollectConfig, DatasetError, DemoDataset, collect_demos
from vla_gym.data.collect import ATTEMPTS_FILE, INDEX_FILE, LOCK_FILE
from vla_gym.evaluation import run_evaluation

from tests.conftest import wait_for_lines
from tests.test_hostile_cli import refused

SUBPROCESS_TIMEOUT = 120


def demo_content(path: str | Path) -> dict[str, object]:
    """Every array and attribute of each episode (links into shards followed), the masks and
    the file's env: what a reader sees, whatever the layout."""
    from vla_gym.data.dataset import resolve_demo_path

    content: dict[str, object] = {}
    with h5py.File(resolve_demo_path(path), "r") as handle:
        data = handle["data"]
        content["env_args"] = data.attrs["env_args"]
        content["total"] = int(data.attrs["total"])
        for split in ("train", "valid"):
            content[f"mask/{split}"] = handle["mask"][split][()].tolist()
        for name in data:
            def visit(key, obj, name=name):
                if isinstance(obj, h5py.Dataset):
                    content[f"{name}/{key}"] = np.asarray(obj[()]).tobytes()
            content[f"{name}@attrs"] = {k: str(v) for k, v in data[name].attrs.items()}
            data[name].visititems(visit)
    return content


# --------------------------------------------------------------------------- the interface
@pytest.mark.parametrize("workers", [0, 2])
def test_local_backend_returns_every_result_in_order_or_as_finished(workers):
    items = list(range(-7, 8))
    with LocalBackend(workers) as backend:
        assert list(backend.imap(abs, items)) == [abs(i) for i in items]
        assert sorted(backend.imap_unordered(operator.neg, items, window=3)) == [(i, -x) for i, x in enumerate(items)]
        assert list(backend.imap(abs, [])) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_an_item_error_reaches_the_caller_as_raised(workers):
    with LocalBackend(workers) as backend, pytest.raises(ValueError, match="math domain error"):
        list(backend.imap(math.sqrt, [1.0, -1.0, 4.0]))


def test_a_dying_worker_fails_the_job_instead_of_hanging_it():
    from concurrent.futures.process import BrokenProcessPool

    start = time.monotonic()
    with LocalBackend(2) as backend, pytest.raises(BrokenProcessPool):
        list(backend.imap(abs, range(4), setup=os._exit, setup_args=(3,)))  # each worker dies on start
    with LocalBackend(2) as backend:  # and a job left early does not wait for the items still running
        results = backend.imap(time.sleep, [0, 30, 30, 30])
        assert next(results) is None
        results.close()
    assert time.monotonic() - start < 25


def test_the_window_bounds_the_items_read_ahead():
    read: list[int] = []

    def items():
        for i in range(10):
            read.append(i)
            yield i

    results = LocalBackend(0).imap(abs, items(), window=2)
    assert next(results) == 0 and len(read) <= 2
    assert list(results) == list(range(1, 10))


def test_bad_backend_arguments_are_refused_with_what_is_allowed():
    with pytest.raises(BackendError, match=r"unknown backend 'spark'; choose one of \['local', 'ray'\]"):
        make_backend("spark")
    with pytest.raises(BackendError, match="--ray-address needs --backend ray"):
        make_backend("local", 2, "auto")
    with pytest.raises(BackendError, match="workers must be an int >= 0"):
        LocalBackend(-1)
    for address in ("auto", "10.0.0.1:6379", "ray://head:10001", None):
        assert check_ray_address(address) == address
    for address in ("head", "head:port", ":6379", "head:0", "http://x"):
        with pytest.raises(BackendError, match="is not 'auto', 'HOST:PORT' or 'ray://HOST:PORT'"):
            check_ray_address(address)


def test_without_ray_the_ray_backend_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayNotInstalledError, match=r'pip install -e "\.\[ray\]"'):
        import_ray()
    for argv in (["collect", "--episodes", "1", "--out", str(tmp_path / "d.h5"), "--backend", "ray"],
                 ["evaluate", "--policy", "random", "--episodes", "1", "--backend", "ray"],
                 ["benchmark", "--policies", "random", "--out", str(tmp_path / "b"), "--backend", "ray"]):
        line = refused(argv, capsys)
        assert "--backend ray needs Ray" in line and 'pip install -e ".[ray]"' in line, line
    line = refused(["collect", "--episodes", "1", "--out", str(tmp_path / "d.h5"), "--ray-address", "auto"], capsys)
    assert "--ray-address 'auto' needs --backend ray" in line
    assert not any(tmp_path.iterdir())


def test_a_shipped_checkpoint_is_loaded_from_the_workers_copy(bc_checkpoint, tmp_path):
    """On Ray, checkpoints travel with the job: a worker needs no disk shared with the caller."""
    from vla_gym import evaluation
    from vla_gym.backends import local_copies, ship_files

    original = tmp_path / "policy.pt"
    original.write_bytes(Path(bc_checkpoint).read_bytes())
    files = ship_files([str(original), "random", str(tmp_path / "absent.pt")])
    assert list(files) == [str(original)]  # files only
    copy = Path(local_copies(files)[str(original)])
    assert copy.read_bytes() == original.read_bytes() and copy != original
    original.unlink()  # the worker's machine has no such file
    job = {"policy": str(original), "env_id": "VLAPick-v0", "env_kwargs": {}, "device": "cpu", "seed": 0,
           "swap_target": False, "target": None}
    evaluation._init_eval_worker(files)
    try:
        log = evaluation._evaluate_chunk({"job": job, "seeds": [5], "start": 0})
    finally:
        evaluation._close_eval_worker()
    assert [record["seed"] for record in log] == [5]


# --------------------------------------------------------------------------- shards
def test_a_shard_directory_reads_like_the_single_file(tmp_path):
    single, shards = tmp_path / "demos.h5", tmp_path / "shards"
    collect_demos(CollectConfig(out=str(single), episodes=5, workers=0, seed=3), progress=False)
    result = collect_demos(CollectConfig(out=str(shards), episodes=5, workers=2, seed=3, shards=True,
                                         shard_episodes=2), progress=False)
    assert result.episodes == 5
    files = sorted(p.name for p in shards.iterdir())
    assert INDEX_FILE in files and LOCK_FILE not in files
    assert len([f for f in files if f.startswith("shard_")]) == 3  # 5 attempts (the expert never failed) by 2
    assert demo_content(shards) == demo_content(single)
    for path in (shards, shards / INDEX_FILE):  # the directory or its index, wherever a demo file goes
        dataset = DemoDataset(path, "all")
        assert len(dataset.episodes) == 5 and dataset[len(dataset) - 1]["rgb"].shape == (84, 84, 3)


def _shard_dir(tmp_path) -> Path:
    out = tmp_path / "shards"
    collect_demos(CollectConfig(out=str(out), episodes=4, workers=0, seed=0, shards=True, shard_episodes=2),
                  progress=False)
    return out


def test_a_missing_or_corrupt_shard_is_named(tmp_path):
    out = _shard_dir(tmp_path)
    shard = out / "shard_00001.h5"
    saved = shard.read_bytes()
    shard.unlink()
    with pytest.raises(DatasetError, match="shard 'shard_00001.h5' is missing"):
        DemoDataset(out)
    shard.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(DatasetError, match=r"shard 'shard_00001.h5' is corrupt \(\d+ bytes, the index recorded"):
        DemoDataset(out)
    shard.write_bytes(b"\0" * len(saved))  # right size, not HDF5
    with pytest.raises(DatasetError, match="shard 'shard_00001.h5' is corrupt"):
        DemoDataset(out)
    shard.write_bytes(saved)
    assert len(DemoDataset(out, "all").episodes) == 4


def test_unfinished_and_foreign_directories_are_refused_with_the_fix(tmp_path, capsys):
    out = _shard_dir(tmp_path)
    (out / INDEX_FILE).unlink()
    with pytest.raises(DatasetError, match="holds an unfinished collection .* --resume"):
        DemoDataset(out)
    line = refused(["collect", "--episodes", "4", "--shards", "--out", str(out), "--workers", "0"], capsys)
    assert "holds an interrupted collection; pass --resume" in line
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"jpg")
    line = refused(["collect", "--episodes", "1", "--shards", "--out", str(foreign), "--overwrite"], capsys)
    assert "holds files that are not a vla_gym shard directory" in line
    assert os.listdir(foreign) == ["cat.jpg"]
    line = refused(["collect", "--episodes", "1", "--out", str(tmp_path / "d.h5"), "--shard-episodes", "5"], capsys)
    assert "--shard-episodes needs --shards" in line
    line = refused(["train-bc", "--data", str(foreign), "--out", str(tmp_path / "run")], capsys)
    assert "is a directory without index.h5" in line


def test_a_killed_sharded_collection_keeps_its_shards_and_resumes(tmp_path):
    out, reference = tmp_path / "shards", tmp_path / "reference.h5"
    base = ["collect", "--episodes", "6", "--workers", "0", "--shards", "--shard-episodes", "2", "--out", str(out),
            "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    process = subprocess.Popen([sys.executable, "-m", "vla_gym.cli", *base], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    wait_for_lines(out / ATTEMPTS_FILE, process, 1, SUBPROCESS_TIMEOUT)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=SUBPROCESS_TIMEOUT)
    kept = sorted(p.name for p in out.glob("shard_*.h5"))
    assert kept and not (out / INDEX_FILE).exists()
    before = {name: (out / name).read_bytes() for name in kept}
    assert main([*base, "--resume"]) == 0
    assert {name: (out / name).read_bytes() for name in kept} == before  # finished shards kept, not redone
    collect_demos(CollectConfig(out=str(reference), episodes=6, workers=0), progress=False)
    assert demo_content(out) == demo_content(reference)


# --------------------------------------------------------------------------- Ray
def test_an_unreachable_ray_address_is_refused_quickly(capsys):
    pytest.importorskip("ray", reason="the Ray backend needs the optional extra: pip install -e '.[ray]'")
    with socket_closed_port() as port:
        start = time.monotonic()
        line = refused(["evaluate", "--policy", "random", "--episodes", "1", "--backend", "ray",
                        "--ray-address", f"127.0.0.1:{port}"], capsys)
    assert f"cannot reach a Ray cluster at --ray-address '127.0.0.1:{port}'" in line and "ray start --head" in line
    assert time.monotonic() - start < 30


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs, shared by this module's Ray tests (the backends join it)."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs the optional extra: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_collects_the_same_episodes_as_the_local_backend(local_ray, tmp_path):
    local, remote = tmp_path / "local.h5", tmp_path / "ray"
    collect_demos(CollectConfig(out=str(local), episodes=4, workers=2, seed=11), progress=False)
    result = collect_demos(CollectConfig(out=str(remote), episodes=4, workers=2, seed=11, backend="ray",
                                         shards=True, shard_episodes=3), progress=False)
    assert result.episodes == 4 and local_ray.is_initialized()  # joined, not shut down
    assert demo_content(remote) == demo_content(local)


def test_ray_evaluates_and_benchmarks_the_same_episodes(local_ray, tmp_path, bc_checkpoint):
    from vla_gym.benchmark import BenchmarkConfig, run_benchmark

    for policy, kwargs in (("scripted", {}), ("random", {"swap_target": True}), (bc_checkpoint, {})):
        here = run_evaluation(policy, episodes=5, seed=40, progress=False, **kwargs)
        there = run_evaluation(policy, episodes=5, seed=40, progress=False, workers=2, backend="ray", **kwargs)
        assert there.episodes_log == here.episodes_log
    runs = {}
    for backend in ("local", "ray"):
        config = BenchmarkConfig(policies=["scripted", "random", f"bc={bc_checkpoint}"], out=str(tmp_path / backend),
                                 episodes=3,
                                 splits=["train", "objects_3"], workers=2, backend=backend, progress=False)
        runs[backend] = run_benchmark(config)["results"]
    assert runs["ray"] == runs["local"]


class socket_closed_port:
    """A local TCP port nothing listens on (bound then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None
