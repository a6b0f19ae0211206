"""Data-parallel BC (torchrun, DDP): two gloo processes on CPU take the same step as one process
on the same global batch; rank 0 alone writes the run, which resumes."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vla_gym.agents.bc import BCConfig, _batches, _BCTrainer, _NullWriter, train_bc
from vla_gym.agents.checkpoint import read_checkpoint
from vla_gym.agents.distributed import DistributedContext, distributed_context
from vla_gym.data.dataset import check_env_matches

TINY_NETWORK = {"channels": [8, 16, 16], "features_dim": 64, "net_arch": {"pi": [64], "vf": [64]}}
NO_AUGMENT = {"shift_pixels": 0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "depth_noise_std": 0.0}


def _config(demo_file: str, out: str, **overrides) -> dict:
    settings = dict(
        data=demo_file, out=out, epochs=1, batch_size=16, lr=1e-3, warmup_steps=0, network=TINY_NETWORK,
        augment=NO_AUGMENT, paraphrase_prob=0.0, rollout_every=0, checkpoint_every=0, amp=False, device="cpu",
        progress=False, seed=0,
    )
    settings.update(overrides)
    return settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _one_step(rank: int, world: int, port: int, settings: dict, out_file: str) -> None:
    """One optimiser step on the epoch's first global batch; rank 0 saves the weights and gradients."""
    _as_rank(rank, world, port)
    config = BCConfig(**settings)
    trainer = _BCTrainer(config, check_env_matches(config.data, None, None))
    try:
        shares = trainer.epoch_batches()[0]
        batch = next(iter(_batches(trainer.train_set, [shares[trainer.context.rank]], 0, 0)))
        trainer._train_step(batch, _NullWriter(), None, sum(len(share) for share in shares))
        if trainer.context.is_main:
            policy = trainer.policy
            grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
            weights = {n: p.detach().clone() for n, p in policy.named_parameters()}  # no aliases
            torch.save({"weights": weights, "grads": grads}, out_file)
    finally:
        trainer.close()


def _train(rank: int, world: int, port: int, settings: dict) -> None:
    _as_rank(rank, world, port)
    train_bc(BCConfig(**settings))


#: torch's AdamW default, which BC uses.
ADAM_EPS = 1e-8


def test_two_gloo_processes_take_the_single_process_step(demo_file, tmp_path, monkeypatch):
    settings = _config(demo_file, str(tmp_path / "unused"))
    mp.spawn(_one_step, args=(2, _free_port(), settings, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    _one_step(0, 1, _free_port(), settings, str(tmp_path / "single.pt"))
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    assert ddp["grads"].keys() == single["grads"].keys() and single["grads"]
    for name, grad in single["grads"].items():  # the all-reduced gradient is the global batch's
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The weights after the AdamW step. Adam's first step moves each weight by
    # lr * grad / (|grad| + eps), about lr * sign(grad), so where the gradient is only rounding
    # noise (e.g. the bias of a softmax score, which the softmax ignores, or exact zeros summed
    # in another order) the two runs may step opposite ways, and where it is within a few eps of
    # zero a 1 % difference between the runs moves the step by up to ~0.25 % of lr (measured:
    # 1.8e-6 for a gradient of 8e-9): there, both steps must stay within lr; everywhere else
    # the weights must agree.
    lr, compared, total = settings["lr"], 0, sum(g.numel() for g in single["grads"].values())
    for name, weight in single["weights"].items():
        grad = single["grads"].get(name)
        if grad is None:
            signal = torch.ones_like(weight, dtype=torch.bool)
        else:  # gradients equal, or agreeing to 1 % and well above Adam's eps: no step left to chance
            other = ddp["grads"][name]
            signal = (other == grad) | (((other - grad).abs() <= 0.01 * grad.abs()) & (grad.abs() >= 10 * ADAM_EPS))
        torch.testing.assert_close(ddp["weights"][name][signal], weight[signal], rtol=1e-5, atol=1e-6, msg=name)
        if grad is not None:
            compared += int(signal.sum())
            before = (weight + 0)[~signal]  # noise-only entries: bounded steps on both sides
            assert torch.all((ddp["weights"][name][~signal] - before).abs() <= 2.02 * lr), name
    assert compared >= 0.9 * total  # noise-only entries are the rare exception


def test_only_rank_zero_writes_and_the_run_resumes(demo_file, tmp_path):
    out = tmp_path / "bc"
    mp.spawn(_train, args=(2, _free_port(), _config(demo_file, str(out))), nprocs=2, join=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt", "metrics.jsonl", "policy.pt", "tb"]
    first = read_checkpoint(out / "last.pt")["meta"]
    assert first["epoch"] == 1 and first["step"] > 0
    mp.spawn(_train, args=(2, _free_port(), _config(demo_file, str(out), epochs=2, resume=True)), nprocs=2, join=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert read_checkpoint(out / "last.pt")["meta"]["step"] == 2 * first["step"]
    assert all(torch.isfinite(torch.tensor(r["valid_loss"])) for r in records)


def test_global_batch_must_split_evenly_over_the_processes(demo_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = BCConfig(**_config(demo_file, str(tmp_path / "bc")))
    with pytest.raises(ValueError, match="must divide evenly over the 3 processes"):
        _BCTrainer(config, check_env_matches(config.data, None, None))


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_context() == DistributedContext(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = distributed_context()
    assert context.enabled and not context.is_main and context.local_rank == 1
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        distributed_context()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="must be integers"):
        distributed_context()
