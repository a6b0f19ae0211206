"""Which part of a weak BC policy holds it back: more BC epochs on chosen parts of the network.

Usage: python benchmarks/weak_start_parts.py --init runs/bc_weak_policy.pt --data demos.h5 \
           --epochs 3 --episodes 50 --work runs/weak_start_parts --out benchmarks/RESULTS.md

Every variant continues BC from the same checkpoint (``--init``) on its demos for ``--epochs``
epochs (``train_bc``'s schedule, no warm-up) and then measures success on ``--episodes``
rollout episodes (seeds 10000000+, deterministic). The variants differ in what is trained:

* ``heads``: the trunk frozen, the heads by BC's loss;
* ``aux trunk``: the trunk by BC's two privileged auxiliary losses alone (goal offset, attention),
  the heads frozen;
* ``aux trunk + BC heads``: the trunk by the auxiliary losses alone, the heads by BC's action
  and value losses on detached features;
* ``all``: the whole network by BC's loss (auxiliary losses included).

A variant's cell is kept in ``--work`` (its BC run directory), so an interrupted run resumes
variant by variant. This is a diagnostic: the variants patch ``train_bc``'s policy builder and
loss in this process only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from report import command_line, markers, write_section
from vla_gym.agents import bc
from vla_gym.agents.checkpoint import read_checkpoint
from vla_gym.agents.privileged import auxiliary_losses
from vla_gym.data.format import OBS_KEYS
from vla_gym.evaluation import wilson_interval

VARIANTS = ("heads", "aux trunk", "aux trunk + BC heads", "all")
SECTION = "weak_start_parts"
ROLLOUT_SEED_NOTE = "seeds 10000000+"


def _builder(init: str, freeze_trunk: bool):
    original = bc.build_policy

    def build(env_args, network, device):
        policy = original(env_args, network, device)
        policy.load_state_dict(read_checkpoint(init, map_location="cpu")["policy"])
        if freeze_trunk:
            policy.features_extractor.requires_grad_(False)
        return policy

    return build


def _split_losses(action_weight: float):
    """BC's losses with the trunk trained only by the auxiliary losses; the heads by the
    action and value losses (weight ``action_weight``: 0 leaves them untrained)."""

    def forward(self, batch, per_frame: bool = False):
        obs = {k: batch[k] for k in OBS_KEYS}
        policy, extractor = self.policy, self.policy.features_extractor
        with extractor.keeping_auxiliary():
            features = policy.extract_features(obs)
        offset_loss, where_loss = auxiliary_losses(extractor.pop_auxiliary(), batch["target_offset"], batch["target_uv"])
        latent_pi, latent_vf = policy.mlp_extractor(features.detach())
        distribution = policy._get_action_dist_from_latent(latent_pi)
        actions = batch["action"].float()
        nll = -distribution.log_prob(actions).mean() / actions.shape[1]
        value_loss = F.mse_loss(policy.value_net(latent_vf).squeeze(-1), batch["return"].float())
        loss = (action_weight * (nll + self.config.value_coef * value_loss) + self.config.target_coef * offset_loss
                + self.config.attention_coef * where_loss)
        mse = F.mse_loss(distribution.distribution.mean.detach(), actions)
        return {"nll": nll, "value_loss": value_loss, "target_loss": offset_loss, "attention_loss": where_loss,
                "action_mse": mse, "loss": loss}

    return forward


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    out = Path(args.work) / variant.replace(" ", "_").replace("+", "and")
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    original_build, original_forward = bc.build_policy, bc._Losses.forward
    bc.build_policy = _builder(args.init, freeze_trunk=variant == "heads")
    if variant.startswith("aux trunk"):
        bc._Losses.forward = _split_losses(1.0 if "BC heads" in variant else 0.0)
    try:
        result = bc.train_bc(bc.BCConfig(
            data=args.data, out=str(out), epochs=args.epochs, rollout_every=args.epochs, rollout_episodes=args.episodes,
            warmup_steps=0, progress=False, seed=args.seed,
            network=read_checkpoint(args.init)["meta"]["network"],  # the start's own (vocabulary included)
        ))
    finally:
        bc.build_policy, bc._Losses.forward = original_build, original_forward
    last = result.history[-1]
    record = {"variant": variant, "success_rate": last["rollout_success_rate"], "episodes": args.episodes,
              "valid_target_loss": last["valid_target_loss"], "valid_action_mse": last["valid_action_mse"]}
    done.write_text(json.dumps(record) + "\n")
    return record


def _start_success(start: dict) -> str:
    """The start's own rollout success, or that its BC ran without rollout checks."""
    rate = start.get("rollout_success_rate")
    return "no rollout checks (`--rollout-every 0`)" if rate is None else f"rollout success {rate:.0%}"


def section(records: list[dict], start: dict, args: argparse.Namespace) -> str:
    begin, end = markers(SECTION)
    lines = [begin, "## What a weak BC start lacks: more BC epochs on parts of the network", "",
             f"`{command_line()}`. Start: `{args.init}` (its last BC epoch: valid goal-offset loss "
             f"{start['valid_target_loss']:.4f}, {_start_success(start)}). Each row: "
             f"{args.epochs} more epochs of BC on `{args.data}` training only what the row names, then "
             f"{args.episodes} rollout episodes ({ROLLOUT_SEED_NOTE}, deterministic) with the 95 % Wilson interval.", "",
             "| what the extra epochs train | valid goal-offset loss | valid action MSE | success |",
             "|---|---:|---:|---:|"]
    for r in records:
        successes = round(r["success_rate"] * r["episodes"])
        low, high = wilson_interval(successes, r["episodes"])
        lines.append(f"| {r['variant']} | {r['valid_target_loss']:.4f} | {r['valid_action_mse']:.4f} | "
                     f"{r['success_rate']:.0%} ({low:.0%}-{high:.0%}) |")
    return "\n".join(lines + ["", end])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="the weak BC policy.pt")
    parser.add_argument("--data", required=True, help="demo file to continue BC on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=50, help="rollout episodes per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {VARIANTS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/weak_start_parts", help="one BC run directory per variant")
    parser.add_argument("--out", default=None, help="RESULTS.md to write the section into")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    start = read_checkpoint(args.init)["meta"]["history"][-1]
    records = []
    for variant in variants:
        records.append(run_variant(variant, args))
        print(json.dumps(records[-1]), flush=True)
    text = section(records, start, args)
    print(text)
    if args.out:
        write_section(Path(args.out), text, SECTION)


if __name__ == "__main__":
    main()
