"""Ablations of the VLA agent at one reduced budget: what PPO, depth, a contrastive loss and a
pretrained sentence encoder each change, on the train and held-out splits.

Usage: python benchmarks/ablations.py --work runs/ablations --out benchmarks/RESULTS.md \\
           [--encoder /path/to/all-MiniLM-L6-v2]

Every row trains on the same demos (``--demos-per-task`` episodes of each task on
VLAMultiTask-v0, or ``--data``) with the same BC budget in gradient samples and the same
short PPO stage (the presets' PPO settings, ``--ppo-steps``):

* ``full``: the word encoder, depth, no contrastive loss, BC then PPO (the reference);
* ``no PPO``: the full row's BC policy alone;
* ``no depth``: ``NetworkConfig(use_depth=False)``, BC then PPO;
* ``+ contrastive``: ``BCConfig(contrastive_coef=0.1)``, BC then PPO;
* ``pretrained encoder``: ``NetworkConfig(language_encoder=--encoder)``, BC then PPO; run only
  when ``--encoder`` names a sentence-transformers model that loads from the local disk
  (nothing is downloaded: the Hugging Face libraries are put offline), else listed as not run.

Each policy is evaluated on each task's own env id in each split (``--splits``, default
train, instruction_test, object_test), ``--episodes`` episodes per task on the benchmark's
seeds. A table cell is the mean over the tasks with the 95 % Wilson interval of all their
episodes pooled; the per-task numbers are in ``<work>/ablations.json`` and the cell files.
Resumable cell by cell (see ``_suite_common``); ``--max-minutes`` stops after the running
stage or cell, ``--only-table`` renders what is there.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _suite_common as suite_lib
from _suite_common import Cell, Stage, Suite, SuiteError

from vla_gym.benchmark import BENCHMARK_SEED, SPLITS_BY_NAME

SECTION = "ablations"
WORK = "runs/ablations"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SUMMARY_FILE = "ablations.json"
DEFAULT_DEMOS_PER_TASK = 100
DEFAULT_PPO_STEPS = 8192
DEFAULT_SPLITS = "train,instruction_test,object_test"
CONTRASTIVE_COEF = 0.1
NO_ENCODER = "not run: no local sentence-transformers weights (pass --encoder PATH)"


@dataclass(frozen=True)
class Row:
    """One ablation: its label, cell name (``slug``), BC stage (rows may share one), what it
    changes from the defaults, and whether PPO follows BC."""

    label: str
    slug: str
    bc: str
    description: str
    network: dict[str, Any] = field(default_factory=dict)
    contrastive_coef: float = 0.0
    ppo: bool = True


ENCODER_SLUG = "pretrained_encoder"
ROWS = (
    Row("full", "full", "full",
        "word encoder reading word order (`gru`), depth, no contrastive loss; BC + PPO"),
    Row("no PPO", "no_ppo", "full", "the full row's BC policy, no PPO", ppo=False),
    Row("no depth", "no_depth", "no_depth", "RGB only (`use_depth=False`); BC + PPO", network={"use_depth": False}),
    Row("order-free words", "bag_words", "bag_words", "the order-free word encoder (`word_context=\"bag\"`); BC + PPO",
        network={"word_context": "bag"}),
    Row("+ destination read-out", "destination", "destination",
        "BC also supervises where the object must go (`destination_head=True`); BC + PPO",
        network={"destination_head": True}),
    Row("+ contrastive", "contrastive", "contrastive", f"InfoNCE loss, `contrastive_coef={CONTRASTIVE_COEF}`; BC + PPO",
        contrastive_coef=CONTRASTIVE_COEF),
    Row("pretrained encoder", ENCODER_SLUG, ENCODER_SLUG, "frozen sentence-transformers encoder; BC + PPO"),
)
ROWS_BY_NAME = {**{row.slug: row for row in ROWS}, **{row.label: row for row in ROWS}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos-per-task", type=int, default=DEFAULT_DEMOS_PER_TASK,
                        help="demos of each task to collect (ignored with --data)")
    parser.add_argument("--data", type=Path, default=None,
                        help="train on this VLAMultiTask-v0 demo file instead of collecting (e.g. demo_scaling's)")
    parser.add_argument("--rows", default=",".join(row.slug for row in ROWS),
                        help=f"comma-separated rows of {[row.slug for row in ROWS]}")
    parser.add_argument("--splits", default=DEFAULT_SPLITS, help=f"comma-separated splits of {list(SPLITS_BY_NAME)}")
    parser.add_argument("--ppo-steps", type=int, default=DEFAULT_PPO_STEPS, help="PPO env steps of every PPO row")
    parser.add_argument("--encoder", default=None,
                        help="local sentence-transformers model directory (or cached name), for the "
                             "pretrained-encoder row")
    suite_lib.add_common_arguments(parser, WORK, RESULTS)
    args = parser.parse_args(argv)
    suite_lib.check_common_arguments(args)
    if args.demos_per_task < 1:
        raise SuiteError(f"--demos-per-task must be >= 1, got {args.demos_per_task}")
    args.rows = [ROWS_BY_NAME[name] for name in suite_lib.parse_names(args.rows, list(ROWS_BY_NAME), "--rows")]
    args.splits = suite_lib.parse_names(args.splits, list(SPLITS_BY_NAME), "--splits")
    args.tasks = suite_lib.parse_names(args.tasks, suite_lib.TASKS, "--tasks")
    if args.data is not None and not args.only_table and not args.data.exists():
        raise SuiteError(f"--data {str(args.data)!r} does not exist")
    return args


def encoder_problem(args: argparse.Namespace) -> str | None:
    """Why the pretrained-encoder row cannot run (None: it can). The model must load from the
    local disk; with ``--only-table`` it is not loaded (its cells are shown if present)."""
    if args.encoder is None:
        return NO_ENCODER
    if args.only_table:
        return None
    suite_lib.offline_hub()
    from vla_gym.agents.network import load_sentence_model

    try:
        load_sentence_model(args.encoder)
    except (ImportError, ValueError, OSError) as err:
        return f"not run: --encoder {args.encoder!r} did not load from the local disk ({err})"
    return None


def row_network(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    return {"language_encoder": args.encoder} if row.slug == ENCODER_SLUG else dict(row.network)


def run_plan(suite: Suite, args: argparse.Namespace, not_run: dict[str, str]) -> list[Cell]:
    """Train and evaluate each row that is not done (collecting the demos once, when a BC
    stage first needs them); the expected cells. Rows that cannot run go to ``not_run``."""
    collect = suite_lib.collect_stage(args.work, args.demos_per_task, args.tasks, args.seed, args.workers,
                                      not args.no_progress)
    data = args.data if args.data is not None else collect.output
    data_ready: list[bool] = []

    def demos() -> bool:
        if not data_ready:
            data_ready.append(args.data is not None or suite.run_stage(collect))
        return data_ready[0]

    bc_stages: dict[str, tuple[Stage, bool]] = {}
    expected: list[Cell] = []
    for row in args.rows:
        if row.slug == ENCODER_SLUG and row.slug in not_run:
            continue
        if row.bc not in bc_stages:
            bc = suite_lib.bc_stage(f"bc_{row.bc}", args.work, data, args, row_network(row, args), row.contrastive_coef)
            bc_stages[row.bc] = bc, suite.run_stage(bc, ready=suite.is_done(bc) or demos())
        stage, ready = bc_stages[row.bc]
        if row.ppo:
            stage = suite_lib.ppo_stage(f"ppo_{row.slug}", args.work, stage, args.tasks, args)
            ready = suite.run_stage(stage, ready)
        cells = [suite_lib.make_cell(row.slug, task, split, stage, args.episodes)
                 for split in args.splits for task in args.tasks]
        for cell in cells:
            suite.run_cell(cell, ready)
        expected += cells
    return expected


def table(suite: Suite, args: argparse.Namespace, not_run: dict[str, str]) -> list[str]:
    """Rows the ablations, columns the splits: mean over tasks with the pooled interval."""
    header = ["row", "what changes", *(SPLITS_BY_NAME[split].label for split in args.splits)]
    rows = []
    for row in args.rows:
        if row.slug in not_run:
            rows.append([row.label, row.description, not_run[row.slug], *([""] * (len(args.splits) - 1))])
            continue
        means = (suite_lib.mean_over_tasks(suite.cells, row.slug, split, args.tasks)[1] for split in args.splits)
        rows.append([row.label, row.description, *means])
    return suite_lib.markdown_table(header, rows, text_columns=2)


def budget(suite: Suite, args: argparse.Namespace, expected: list[Cell]) -> str:
    """The paragraph above the table: command, machine, the one budget, seeds, done and missing cells."""
    records = [suite.state.stage(f"bc_{row.bc}") or {} for row in args.rows]
    info = next((r["info"] for r in records if r.get("info")), {})  # the same budget and data in every row
    epochs = f"{info['epochs']} epochs over {info['train_frames']} training frames" if info else "epochs not known yet"
    data = (f"`{args.data}`" if args.data is not None else
            f"{args.demos_per_task} scripted-expert demos of each task on VLAMultiTask-v0 (seed {args.seed})")
    last = BENCHMARK_SEED + args.episodes - 1
    return (
        f"{suite_lib.provenance(suite.state, suite.command, args.device)}. One budget for every row: demos {data}, "
        f"tasks {', '.join(args.tasks)}; BC {args.bc_samples} gradient samples ({epochs}; epochs = ceil(samples / "
        f"training frames), at most {args.max_bc_epochs}), no rollout checks; PPO {args.ppo_steps} env steps on "
        f"VLAMultiTask-v0 with the presets' PPO settings `{suite_lib.json_text(suite_lib.ppo_settings(args))}` "
        f"(PPO keeps its best evaluation on its own seeds, 300000+). Evaluation: {args.episodes} episodes per task "
        f"and split on each task's own env id (seeds {BENCHMARK_SEED}-{last}, deterministic actions); a cell is the "
        f"mean over the {len(args.tasks)} tasks with the 95 % Wilson interval of all "
        f"{args.episodes * len(args.tasks)} episodes pooled (per task: `{SUMMARY_FILE}` in the work directory). "
        f"Training seed {args.seed} only. Cells {suite_lib.missing_summary(expected, suite.cells)}."
    )


def summary(suite: Suite, args: argparse.Namespace, not_run: dict[str, str]) -> dict[str, Any]:
    """Per row and split: the mean over tasks (None if incomplete) and each task's numbers."""
    keys = ("episodes", "successes", "success_rate", "ci95")
    out: dict[str, Any] = {"not_run": not_run, "rows": {}}
    for row in args.rows:
        out["rows"][row.label] = {split: {
            "mean": suite_lib.mean_over_tasks(suite.cells, row.slug, split, args.tasks)[0],
            "per_task": {task: {k: suite.cells[(row.slug, task, split)][k] for k in keys}
                         for task in args.tasks if (row.slug, task, split) in suite.cells},
        } for split in args.splits}
    return out


def main(argv: list[str] | None = None) -> int:
    return suite_lib.guarded(SECTION, lambda: _run(argv))


def _run(argv: list[str] | None) -> str:
    args = parse_args(argv)
    suite = suite_lib.open_suite(SECTION, args, argv)
    wanted = {row.slug for row in args.rows}
    problem = encoder_problem(args) if ENCODER_SLUG in wanted else None
    not_run = {ENCODER_SLUG: problem} if problem else {}
    expected = run_plan(suite, args, not_run)
    suite.finish()
    for slug, reason in not_run.items():
        print(f"[{SECTION}] row {ROWS_BY_NAME[slug].label}: {reason}")
    suite_lib.write_json(args.work / SUMMARY_FILE, summary(suite, args, not_run))
    body = [budget(suite, args, expected), "", *table(suite, args, not_run), ""]
    return suite_lib.write_results(args.out, SECTION, "Ablations at one reduced budget", body)


if __name__ == "__main__":
    raise SystemExit(main())
