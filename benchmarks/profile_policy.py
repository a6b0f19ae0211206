"""Where the VLA actor-critic spends its time, module by module (torch.profiler), and where the
PPO loop spends its wall time (cProfile).

Usage: python benchmarks/profile_policy.py --repeats 10 --ppo-timesteps 2048 --out benchmarks/RESULTS.md

The policy is built as ``benchmarks/network_speed.py`` builds it (PPO's construction, random
weights: the compute does not depend on them) and profiled on CPU in three uses:

* ``forward b128``: ``policy(obs)`` on 128 observations under ``torch.inference_mode``, as
  a rollout calls it (the instruction conditioning comes from its per-instruction cache);
* ``train b128``: a BC-style train step on 128 observations (``evaluate_actions``, action
  NLL plus value MSE, ``backward``, Adam step), split into its forward, backward and
  optimizer phases;
* ``predict``: SB3's ``policy.predict`` on one observation (numpy in, numpy out).

Every named submodule gets forward pre/post hooks that open and close a
``torch.profiler.record_function`` range named after it; the parts the features extractor
runs as functions, not as module calls (the first conv layer and the proprio MLP, whose
input scaling is folded into their weights; the tokenizer; the conditioning cache; the
rgb + depth stacking), and a few of SB3's policy methods are wrapped in ranges too. A
module's *own* time is its range's time less the ranges nested in it; the own times of all
rows add up to the profiled step ("rest" rows: what runs outside every labelled range).
Backward time is attributed to modules through the autograd sequence number that links
each backward node (``autograd::engine::evaluate_function: ...``) to the forward op that
created it; the top backward aten ops are listed with their input shapes.

The PPO part runs ``train_ppo`` (``--ppo-timesteps`` env steps, 4 ``SubprocVecEnv``
workers, rollouts of 256 steps per env, no critic warm-up, evaluation of one episode at the
start and the end) under cProfile and splits its wall time into env stepping, the policy's
forward passes in rollouts, the rest of rollout collection, the PPO update, evaluation,
checkpoint writes and set-up. Both profilers add overhead (the unprofiled ms per step are
given next to the profiled ones); the shares are what to read. Threads: torch's default for
the machine (``--threads`` to set; on a machine shared with other jobs, one thread avoids
the stalls of threads waiting for each other, which inflate the small ops most).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from network_speed import build, forward_fn, observations, predict_fn
from report import markers, torch_run_line, write_section
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from torch.profiler import ProfilerActivity, record_function

from vla_gym.agents.ppo import PPOConfig, VLAPPO, _EvalAndCheckpoint, _Trainer, train_ppo

SECTION = "profile_policy"
BATCH = 128
WARMUP = 3
TOP_OPS = 10
BACKWARD_NODE = "autograd::engine::evaluate_function: "
ACCUMULATE_GRAD = BACKWARD_NODE + "torch::autograd::AccumulateGrad"
PHASES = ("train: forward + loss", "train: backward", "train: optimizer")
#: Parts the features extractor and the policy run as plain functions: attribute -> range name.
EXTRACTOR_METHODS = {
    "_images": "features_extractor.images (rgb and depth as channels-last views)",
    "_condition": "features_extractor.conditioning (cached without grad)",
    "tokenizer": "features_extractor.tokenizer",
    "_first_conv": "features_extractor.convs.0 (scaling folded in)",
    "_proprio": "features_extractor.proprio (standardisation folded in)",
}
POLICY_METHODS = {
    "obs_to_tensor": "policy.obs_to_tensor",
    "extract_features": "policy.extract_features (incl. preprocess_obs)",
    "_get_action_dist_from_latent": "policy.action distribution",
}


# --- labelling the policy -------------------------------------------------------------------

def module_labels(policy: ActorCriticPolicy) -> Iterator[tuple[str, nn.Module]]:
    """The submodules to label: the extractor's children (ModuleLists item by item), the MLPs, the heads."""
    extractor = policy.features_extractor
    yield "features_extractor", extractor
    for name, child in extractor.named_children():
        items = enumerate(child) if isinstance(child, nn.ModuleList) else [(None, child)]
        for i, module in items:
            if not isinstance(module, nn.Identity):
                yield f"features_extractor.{name}" + ("" if i is None else f".{i}"), module
    yield "mlp_extractor.policy_net", policy.mlp_extractor.policy_net
    yield "mlp_extractor.value_net", policy.mlp_extractor.value_net
    yield "action_net", policy.action_net
    yield "value_net", policy.value_net


def hook_range(module: nn.Module, name: str) -> None:
    """Open a ``record_function(name)`` range before ``module``'s forward, close it after."""
    open_ranges: list[record_function] = []

    def enter(*_: Any) -> None:
        open_ranges.append(record_function(name).__enter__())

    def leave(*_: Any) -> None:  # returns None: the module's output is kept
        open_ranges.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def wrap_range(owner: Any, attribute: str, name: str) -> None:
    """Replace ``owner.attribute`` (a callable) by one that runs it inside ``record_function(name)``."""
    fn = getattr(owner, attribute)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)

    setattr(owner, attribute, run)


def instrument(policy: ActorCriticPolicy) -> set[str]:
    """Label the policy's parts for the profiler; returns the range names."""
    names = set()
    for name, module in module_labels(policy):
        hook_range(module, name)
        names.add(name)
    for owner, methods in ((policy.features_extractor, EXTRACTOR_METHODS), (policy, POLICY_METHODS)):
        for attribute, name in methods.items():
            wrap_range(owner, attribute, name)
            names.add(name)
    return names


# --- the profiled calls ---------------------------------------------------------------------

def train_step(policy: ActorCriticPolicy) -> Callable[[], None]:
    """network_speed's BC-style train step, its phases in named ranges."""
    obs, _ = policy.obs_to_tensor(observations("vla", BATCH))
    actions, returns = torch.rand(BATCH, 4) * 2 - 1, torch.rand(BATCH)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4)

    def run() -> None:
        policy.set_training_mode(True)
        with record_function(PHASES[0]):
            values, log_prob, _ = policy.evaluate_actions(obs, actions)
            loss = -log_prob.mean() + 0.5 * (values.flatten() - returns).square().mean()
        with record_function(PHASES[1]):
            loss.backward()
        with record_function(PHASES[2]):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def benchmarks(policy: ActorCriticPolicy) -> dict[str, Callable[[], None]]:
    policy.set_training_mode(False)
    return {
        f"forward b{BATCH}": forward_fn(policy, BATCH, "vla"),
        f"train b{BATCH}": train_step(policy),
        "predict": predict_fn(policy, "vla"),
    }


def seconds_per_call(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(WARMUP):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def profile(fn: Callable[[], None], repeats: int, step: str) -> list:
    """The profiler's events of ``repeats`` calls of ``fn``, each in a range named ``step``."""
    for _ in range(WARMUP):
        fn()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            with record_function(step):
                fn()
    return list(prof.events())


# --- reading the events ---------------------------------------------------------------------

def ranges_below(event, names: set[str]) -> Iterator:
    """The outermost events named in ``names`` nested in ``event``."""
    for child in event.cpu_children:
        if child.name in names:
            yield child
        else:
            yield from ranges_below(child, names)


def enclosing_range(event, names: set[str]) -> str | None:
    parent = event.cpu_parent
    while parent is not None and parent.name not in names:
        parent = parent.cpu_parent
    return None if parent is None else parent.name


def depth(event, names: set[str]) -> int:
    parent, levels = event.cpu_parent, 0
    while parent is not None:
        levels += parent.name in names
        parent = parent.cpu_parent
    return levels


def range_times(events: list, names: set[str]) -> dict[str, dict[str, float]]:
    """Per range name, in order of first start: calls, total and own CPU us, nesting depth."""
    rows: dict[str, dict[str, float]] = {}
    for event in sorted((e for e in events if e.name in names), key=lambda e: e.time_range.start):
        nested = sum(e.cpu_time_total for e in ranges_below(event, names))
        row = rows.setdefault(event.name, {"calls": 0, "total": 0.0, "own": 0.0, "depth": depth(event, names)})
        row["calls"] += 1
        row["total"] += event.cpu_time_total
        row["own"] += event.cpu_time_total - nested
    return rows


def descendants(roots: Iterable) -> Iterator:
    for event in roots:
        yield from event.cpu_children
        yield from descendants(event.cpu_children)


def top_ops(roots: list, shapes: bool) -> list[tuple[str, int, float]]:
    """aten ops nested in ``roots`` by self CPU time: (name [shapes], calls, self us)."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for event in descendants(roots):
        if event.name.startswith("aten::"):
            key = f"{event.name} {[s for s in event.input_shapes if s]}" if shapes else event.name
            totals[key][0] += 1
            totals[key][1] += event.self_cpu_time_total
    return sorted(((k, n, us) for k, (n, us) in totals.items()), key=lambda row: -row[2])[:TOP_OPS]


def backward_by_module(events: list, names: set[str], phase: str) -> dict[str, float]:
    """Backward CPU us per module: each backward node goes to the range its forward op ran in."""
    owner = {e.sequence_nr: enclosing_range(e, names) for e in events
             if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_NODE) and e.name.startswith("aten::")}
    times: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name == ACCUMULATE_GRAD:
            times["AccumulateGrad (gradients into .grad)"] += event.cpu_time_total
        elif event.name.startswith(BACKWARD_NODE):
            label = owner.get(event.sequence_nr)
            label = label if label in names and label not in PHASES else "rest (loss, distribution, log-std)"
            times[label] += event.cpu_time_total
    total = sum(e.cpu_time_total for e in events if e.name == phase)
    times["rest (engine, outside the nodes)"] = total - sum(times.values())
    return dict(times)


# --- tables ---------------------------------------------------------------------------------

def ms(us: float, repeats: int) -> str:
    return f"{us / repeats / 1e3:.3f}"


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole > 0 else "-"


def range_table(rows: dict[str, dict[str, float]], step: str, repeats: int) -> list[str]:
    """Rows in order of first start, indented by nesting; own shares add up to 100 %."""
    total = rows[step]["total"]
    lines = ["| module | calls/step | ms/step incl. nested | own ms/step | own share |", "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        label = f"rest of `{step}` (outside labelled ranges)" if name == step else name
        lines.append(f"| {'· ' * int(row['depth'])}{label} | {row['calls'] / repeats:g} | {ms(row['total'], repeats)} "
                     f"| {ms(row['own'], repeats)} | {share(row['own'], total)} |")
    return lines


def ops_table(ops: list[tuple[str, int, float]], total: float, repeats: int, of: str) -> list[str]:
    lines = [f"| aten op | calls/step | self ms/step | share of {of} |", "|---|---:|---:|---:|"]
    lines += [f"| `{name}` | {n / repeats:g} | {ms(us, repeats)} | {share(us, total)} |" for name, n, us in ops]
    return lines


def backward_table(times: dict[str, float], repeats: int) -> list[str]:
    total = sum(times.values())
    lines = ["| module (forward range of the node) | ms/step | share of backward |", "|---|---:|---:|"]
    for name, us in sorted(times.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {ms(us, repeats)} | {share(us, total)} |")
    return lines


def backward_report(events: list, names: set[str], repeats: int) -> list[str]:
    phase = PHASES[1]
    roots = [e for e in events if e.name == phase]
    total = sum(e.cpu_time_total for e in roots)
    return [f"Backward ({ms(total, repeats)} ms/step) by module (the forward range of each backward node's op):", "",
            *backward_table(backward_by_module(events, names, phase), repeats), "",
            "Top aten ops in the backward pass, by input shapes:", "",
            *ops_table(top_ops(roots, shapes=True), total, repeats, "backward"), ""]


def step_report(step: str, events: list, names: set[str], repeats: int, unprofiled: float) -> list[str]:
    """Markdown lines for one profiled use of the policy."""
    names = names | set(PHASES) | {step}
    rows = range_times(events, names)
    total = rows[step]["total"]
    print(f"{step}: {unprofiled * 1e3:.2f} ms/step unprofiled, {total / repeats / 1e3:.2f} profiled", flush=True)
    lines = [f"### `{step}`: {unprofiled * 1e3:.2f} ms per step unprofiled, {total / repeats / 1e3:.2f} ms profiled",
             "", *range_table(rows, step, repeats), ""]
    if step.startswith("train"):
        return lines + backward_report(events, names, repeats)
    steps = [e for e in events if e.name == step]
    return lines + [f"Top aten ops of `{step}`:", "", *ops_table(top_ops(steps, shapes=False), total, repeats, "step"), ""]


def policy_report(repeats: int) -> list[str]:
    """Time the three uses of the policy unprofiled, then profile them labelled; Markdown lines."""
    policy = build("vla")
    unprofiled = {name: seconds_per_call(fn, repeats) for name, fn in benchmarks(policy).items()}
    names = instrument(policy)
    lines: list[str] = []
    for step, fn in benchmarks(policy).items():
        lines += step_report(step, profile(fn, repeats, step), names, repeats, unprofiled[step])
    return lines


# --- the PPO loop under cProfile ------------------------------------------------------------

def code_key(fn: Callable) -> tuple[str, int, str]:
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def cumulative(stats: pstats.Stats, fn: Callable, caller: Callable | None = None) -> float:
    """Seconds spent in ``fn`` and what it called (only in calls from ``caller``, if given)."""
    entry = stats.stats.get(code_key(fn))  # type: ignore[attr-defined]
    if entry is None:
        return 0.0
    return entry[3] if caller is None else entry[4].get(code_key(caller), (0, 0, 0, 0.0))[3]


def profile_ppo(timesteps: int) -> tuple[pstats.Stats, float]:
    """cProfile stats and wall seconds of one short ``train_ppo`` run."""
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            init=None, out=tmp, timesteps=timesteps, n_envs=4, vec_env="subproc", n_steps=256, batch_size=256,
            critic_warmup_rollouts=0, eval_every=0, eval_episodes=1, device="cpu", progress=False,
        )
        start = time.perf_counter()
        profiler.enable()
        try:
            train_ppo(config)
        finally:
            profiler.disable()
        wall = time.perf_counter() - start
    return pstats.Stats(profiler), wall


def ppo_parts(stats: pstats.Stats, wall: float) -> dict[str, float]:
    """Non-overlapping parts of the run's wall time, in seconds."""
    env = cumulative(stats, VecEnv.step, OnPolicyAlgorithm.collect_rollouts)
    forward = cumulative(stats, ActorCriticPolicy.forward)  # only rollouts call it (the update: evaluate_actions)
    rollout_callbacks = cumulative(stats, _EvalAndCheckpoint._on_rollout_start)  # evaluations, checkpoints
    parts = {
        "env stepping (VecEnv.step: SubprocVecEnv step_async + step_wait)": env,
        "policy forward in rollouts (`policy(obs)`)": forward,
        "rest of rollout collection (tensors, buffer, GAE, callbacks)":
            cumulative(stats, OnPolicyAlgorithm.collect_rollouts) - env - forward - rollout_callbacks,
        "PPO update (`VLAPPO.train`)": cumulative(stats, VLAPPO.train),
        "evaluation (`_Trainer.evaluate`, incl. policy.pt)": cumulative(stats, _Trainer.evaluate),
        "checkpoint writes (`_Trainer.save_last`)": cumulative(stats, _Trainer.save_last),
        "set-up (`_Trainer.__init__`: workers, model)": cumulative(stats, _Trainer.__init__),
        "teardown (`_Trainer.close`)": cumulative(stats, _Trainer.close),
    }
    parts["other"] = wall - sum(parts.values())
    return parts


def ppo_report(timesteps: int) -> list[str]:
    stats, wall = profile_ppo(timesteps)
    print(f"PPO, {timesteps} env steps: {wall:.1f} s wall under cProfile", flush=True)
    lines = [f"### PPO loop: `train_ppo`, {timesteps} env steps, {wall:.1f} s wall under cProfile", "",
             "| part | s | share of wall time |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.2f} | {share(seconds, wall)} |" for name, seconds in ppo_parts(stats, wall).items()]
    top = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:TOP_OPS]  # type: ignore[attr-defined]
    lines += ["", "Top functions by own time (cProfile tottime):", "",
              "| function | calls | own s | share of wall time |", "|---|---:|---:|---:|"]
    for (path, line, name), (_, calls, own, _, _) in top:
        where = f" ({Path(path).name}:{line})" if line else ""  # built-ins have no file
        lines.append(f"| `{name}`{where} | {calls} | {own:.2f} | {share(own, wall)} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="profiled iterations per measurement")
    parser.add_argument("--ppo-timesteps", type=int, default=2048, help="env steps of the PPO run (0: skip it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.ppo_timesteps < 0:
        parser.error("--repeats must be >= 1 and --ppo-timesteps >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = policy_report(args.repeats)
    if args.ppo_timesteps:
        lines += ppo_report(args.ppo_timesteps)
    print("\n".join(lines))
    if args.out:
        start, end = markers(SECTION)
        section = "\n".join([
            start, "## Profile: the VLA policy module by module, and the PPO loop", "",
            f"{torch_run_line(argv)}; {args.repeats} profiled steps per table, CPU). "
            "Own time: a range's time less the labelled ranges nested in it (the own shares add up to 100 %).",
            "", *lines, end,
        ])
        write_section(args.out, section, SECTION)


if __name__ == "__main__":
    main()
