"""BC success against the number of demos per task, on seen and unseen objects (CLIPort's table).

Usage: python benchmarks/demo_scaling.py --demos 10,30,100,300 --splits train,object_test \\
           --work runs/demo_scaling --out benchmarks/RESULTS.md

For each N of ``--demos``: the scripted expert records N episodes of every task on
VLAMultiTask-v0 (``work/demos_<N>.h5``), and BC trains one policy on them for one budget of
gradient samples (``--bc-samples``; epochs = ceil(samples / training frames), 1 to
``--max-bc-epochs``, so the small sets are not under-trained). PPO then fine-tunes the
``--ppo-from`` BC policy (default 30 demos) on VLAMultiTask-v0 for ``--ppo-steps`` env
steps with the presets' PPO settings (``vla_gym.pipeline.PPO_SETTINGS``). Every policy is
evaluated on each task's own env id (``TASK_ENV_IDS``) in each split (``train``: seen,
``object_test``: unseen colour-shape goals), ``--episodes`` episodes per cell on the
benchmark's seeds (``BENCHMARK_SEED``+, deterministic actions).

The section of RESULTS.md has one table per split: rows the tasks and their mean, columns
the demo counts and the BC+PPO policy, each cell the success % with its 95 % Wilson
interval (the mean row: the mean over tasks with the interval of all their episodes
pooled); and ``demo_scaling.png`` beside RESULTS.md (mean success against demos per task,
log x, one line per split). Resumable cell by cell (see ``_suite_common``); ``--max-minutes``
stops after the running stage or cell, ``--only-table`` renders what is there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import _suite_common as suite_lib
from _suite_common import Cell, Suite, SuiteError

from vla_gym.agents.bc import BCConfig
from vla_gym.benchmark import BENCHMARK_SEED, SPLITS_BY_NAME

SECTION = "demo_scaling"
WORK = "runs/demo_scaling"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PLOT_FILE = "demo_scaling.png"
SUMMARY_FILE = "demo_scaling.json"
DEFAULT_DEMOS = "10,30,100,300"
DEFAULT_SPLITS = "train,object_test"
DEFAULT_PPO_FROM = 30
#: CLIPort's names of the two splits (seen / unseen objects).
SPLIT_TITLES = {"train": "Seen objects (train split)",
                "object_test": "Unseen objects (object_test: held-out colour-shape goals)"}
PLOT_SIZE_INCHES = (6.4, 4.0)
PLOT_DPI = 120


def bc_policy(demos: int) -> str:
    return f"bc_{demos}"


def ppo_policy(demos: int) -> str:
    return f"bc_{demos}+ppo"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", default=DEFAULT_DEMOS, help="comma-separated demos per task, one BC policy each")
    parser.add_argument("--splits", default=DEFAULT_SPLITS, help=f"comma-separated splits of {list(SPLITS_BY_NAME)}")
    parser.add_argument("--ppo-from", type=int, default=DEFAULT_PPO_FROM,
                        help="PPO fine-tunes the BC policy of this many demos per task (0: no PPO column)")
    parser.add_argument("--ppo-steps", type=int, default=suite_lib.DEFAULT_PPO_STEPS, help="PPO env steps")
    suite_lib.add_common_arguments(parser, WORK, RESULTS)
    args = parser.parse_args(argv)
    suite_lib.check_common_arguments(args)
    try:
        args.demos = sorted({int(x) for x in args.demos.split(",") if x.strip()})
    except ValueError:
        raise SuiteError(f"--demos must be comma-separated ints, got {args.demos!r}") from None
    if not args.demos or min(args.demos) < 1:
        raise SuiteError(f"--demos must be ints >= 1, got {args.demos}")
    if args.ppo_from and args.ppo_from not in args.demos:
        raise SuiteError(f"--ppo-from {args.ppo_from} is not one of --demos {args.demos} (or 0: no PPO)")
    args.splits = suite_lib.parse_names(args.splits, list(SPLITS_BY_NAME), "--splits")
    args.tasks = suite_lib.parse_names(args.tasks, suite_lib.TASKS, "--tasks")
    return args


def run_plan(suite: Suite, args: argparse.Namespace) -> list[Cell]:
    """Collect, train and evaluate what is not done (in order: each demo count's BC policy and
    its cells, then PPO and its cells); the expected cells."""
    expected: list[Cell] = []
    bc_ready = {}
    for demos in args.demos:
        collect = suite_lib.collect_stage(args.work, demos, args.tasks, args.seed, args.workers, not args.no_progress)
        bc = suite_lib.bc_stage(bc_policy(demos), args.work, collect.output, args)
        # A finished BC stage needs its demos no more (they may have been deleted).
        bc_ready[demos] = bc, suite.run_stage(bc, ready=suite.is_done(bc) or suite.run_stage(collect))
        expected += run_cells(suite, args, bc_policy(demos), bc_ready[demos])
    if args.ppo_from:
        start, start_ready = bc_ready[args.ppo_from]
        ppo = suite_lib.ppo_stage(f"ppo_{args.ppo_from}", args.work, start, args.tasks, args)
        expected += run_cells(suite, args, ppo_policy(args.ppo_from), (ppo, suite.run_stage(ppo, start_ready)))
    return expected


def run_cells(suite: Suite, args: argparse.Namespace, policy: str, stage_ready: tuple) -> list[Cell]:
    """Evaluate ``policy`` (its stage, and whether that is ready) on every task and split."""
    stage, ready = stage_ready
    cells = [suite_lib.make_cell(policy, task, split, stage, args.episodes) for task in args.tasks
             for split in args.splits]
    for cell in cells:
        suite.run_cell(cell, ready)
    return cells


def columns(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(policy, column header) of the tables, in order."""
    out = [(bc_policy(n), str(n)) for n in args.demos]
    return out + ([(ppo_policy(args.ppo_from), f"{args.ppo_from} + PPO")] if args.ppo_from else [])


def split_table(suite: Suite, args: argparse.Namespace, split: str) -> list[str]:
    """One split's table: rows the tasks and their mean, columns the policies."""
    cols = columns(args)
    rows = [[task, *(suite_lib.format_rate(suite.cells.get((policy, task, split))) for policy, _ in cols)]
            for task in args.tasks]
    rows.append(["**mean**", *(suite_lib.mean_over_tasks(suite.cells, policy, split, args.tasks)[1]
                               for policy, _ in cols)])
    title = SPLIT_TITLES.get(split, f"Split {split}")
    header = ["task / demos per task", *(h for _, h in cols)]
    return [f"### {title}", "", *suite_lib.markdown_table(header, rows), ""]


def budget(suite: Suite, args: argparse.Namespace, expected: list[Cell]) -> str:
    """The paragraph under the title: command, machine, budget, seeds, done and missing cells."""
    epochs = []
    for demos in args.demos:
        info = (suite.state.stage(bc_policy(demos)) or {}).get("info") or {}
        epochs.append(f"{demos}: {info['epochs']} epochs over {info['train_frames']} frames" if info else
                      f"{demos}: not trained yet")
    ppo = (f" BC+PPO: PPO from the {args.ppo_from}-demo BC policy on VLAMultiTask-v0 for {args.ppo_steps} env "
           f"steps, settings `{suite_lib.json_text(suite_lib.ppo_settings(args))}` (the presets' PPO_SETTINGS; "
           f"PPO keeps its best evaluation on its own seeds, 300000+)." if args.ppo_from else "")
    last = BENCHMARK_SEED + args.episodes - 1
    return (
        f"{suite_lib.provenance(suite.state, suite.command, args.device)}. Demos: the scripted expert, "
        f"VLAMultiTask-v0, N successful episodes of each task ({', '.join(args.tasks)}), seed {args.seed}. BC: "
        f"{args.bc_samples} gradient samples per policy (epochs = ceil(samples / training frames), 1 to "
        f"{args.max_bc_epochs}: {'; '.join(epochs)}), batch {BCConfig.batch_size}, no rollout checks.{ppo} Each cell: "
        f"{args.episodes} episodes on the task's own env id (seeds {BENCHMARK_SEED}-{last}, deterministic "
        f"actions, the same for every cell), success % with its 95 % Wilson interval; **mean**: the mean over the "
        f"tasks with the Wilson interval of all their episodes pooled. Training seed {args.seed} only (one seed "
        f"per cell). Cells {suite_lib.missing_summary(expected, suite.cells)}."
    )


def plot(suite: Suite, args: argparse.Namespace, path: Path) -> bool:
    """Mean success over tasks against demos per task (log x), one line per split with its
    pooled 95 % band, the BC+PPO policy as a marker; False (no file) when no point is there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=PLOT_SIZE_INCHES)
    drawn = False
    for index, split in enumerate(args.splits):
        colour = f"C{index}"  # the split's BC line and its BC+PPO marker
        points = [(n, suite_lib.mean_over_tasks(suite.cells, bc_policy(n), split, args.tasks)[0]) for n in args.demos]
        points = [(n, stat) for n, stat in points if stat is not None]
        label = SPLIT_TITLES.get(split, split).split(" (")[0]
        if points:
            xs = [n for n, _ in points]
            ax.plot(xs, [s["success_rate"] for _, s in points], marker="o", color=colour, label=f"BC, {label}")
            ax.fill_between(xs, [s["ci95"][0] for _, s in points], [s["ci95"][1] for _, s in points],
                            color=colour, alpha=0.2)
            drawn = True
        stat = suite_lib.mean_over_tasks(suite.cells, ppo_policy(args.ppo_from), split, args.tasks)[0] \
            if args.ppo_from else None
        if stat is not None:
            low, high = stat["ci95"]
            ax.errorbar([args.ppo_from], [stat["success_rate"]], yerr=[[stat["success_rate"] - low],
                        [high - stat["success_rate"]]], marker="s", linestyle="none", capsize=4, color=colour,
                        label=f"BC+PPO from {args.ppo_from}, {label}")
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_xticks(args.demos, [str(n) for n in args.demos])
        ax.set_xlabel("demos per task")
        ax.set_ylabel(f"success, mean over {len(args.tasks)} tasks")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return drawn


def summary(suite: Suite, args: argparse.Namespace) -> dict[str, Any]:
    """Per split and column: the mean over tasks (None if incomplete) and each task's numbers."""
    keys = ("episodes", "successes", "success_rate", "ci95")
    return {split: {header: {
        "mean": suite_lib.mean_over_tasks(suite.cells, policy, split, args.tasks)[0],
        "per_task": {task: {k: suite.cells[(policy, task, split)][k] for k in keys}
                     for task in args.tasks if (policy, task, split) in suite.cells},
    } for policy, header in columns(args)} for split in args.splits}


def render(suite: Suite, args: argparse.Namespace, expected: list[Cell]) -> str:
    """Write the RESULTS.md section, the plot beside it and the summary JSON in the work directory."""
    plot_path = args.out.parent / PLOT_FILE
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    has_plot = plot(suite, args, plot_path)
    body = [budget(suite, args, expected), ""]
    for split in args.splits:
        body += split_table(suite, args, split)
    if has_plot:
        body += [f"![success against demos per task]({PLOT_FILE})", ""]
    suite_lib.write_json(args.work / SUMMARY_FILE, summary(suite, args))
    return suite_lib.write_results(args.out, SECTION, "Demo scaling: success against demos per task, seen and unseen "
                                   "objects", body)


def main(argv: list[str] | None = None) -> int:
    return suite_lib.guarded(SECTION, lambda: _run(argv))


def _run(argv: list[str] | None) -> str:
    args = parse_args(argv)
    suite = suite_lib.open_suite(SECTION, args, argv)
    expected = run_plan(suite, args)
    suite.finish()
    return render(suite, args, expected)


if __name__ == "__main__":
    raise SystemExit(main())
