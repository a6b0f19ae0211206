"""Copy the figures of a finished ``train-agent`` run (its report.json) into RESULTS.md.

Usage: train-agent --preset full --out runs/agent
       python benchmarks/train_agent_results.py --report runs/agent/report.json --out benchmarks/RESULTS.md

Writes the section ``train_agent_<preset>``: success rates with 95 % intervals of every
policy on both instruction splits, the acceptance checks, the PPO learning curve (the PNG
is copied next to RESULTS.md), and the wall clock of every stage. Nothing is re-measured:
the numbers are the report's, which the run measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from report import markers, write_section

from vla_gym.report import collapse_summary, success_cell

#: Acceptance targets of the full preset (issue 4).
TARGET_TRAIN_SUCCESS = 0.95
TARGET_QUICK_SECONDS = 10 * 60
TARGET_FULL_SECONDS = 90 * 60


def _cell(report: dict, policy: str, split: str) -> dict:
    return next(r for r in report["results"] if r["policy"] == policy and r["split"] == split)


def section(report: dict, report_path: Path, plot_name: str | None) -> str:
    preset = report["preset"]
    name = f"train_agent_{preset}"
    start_marker, end_marker = markers(name)
    hw = report["hardware"]
    lines = [
        start_marker,
        f"## train-agent --preset {preset}",
        "",
        f"- Date: {report['created']}",
        f"- Machine: {hw['cpu']}, {hw['logical_cores']} logical cores; GPU: {hw['gpu'] or 'none'}; "
        f"training device: {report['device']}; torch {hw['torch']}, stable-baselines3 {hw['stable_baselines3']}",
        f"- Command: `{report['commands'][0]}`; figures copied from `{report_path}` by "
        f"`python benchmarks/train_agent_results.py --report {report_path} --out benchmarks/RESULTS.md`",
        f"- Report seeds {report['eval']['seed_first']}-{report['eval']['seed_last']} "
        f"({report['eval']['episodes']} episodes per cell, deterministic actions), used by no training stage.",
        "",
        "| policy | train-split instructions | test-split instructions |",
        "|---|---|---|",
    ]
    policies = list(dict.fromkeys(r["policy"] for r in report["results"]))
    for policy in policies:
        lines.append(f"| {policy} | {success_cell(_cell(report, policy, 'train'))} | "
                     f"{success_cell(_cell(report, policy, 'test'))} |")
    curve, bc_level = report["learning_curve"], report["bc_level"]
    collapse = collapse_summary(curve, bc_level)
    ppo_train, bc_train = _cell(report, "bc+ppo", "train"), _cell(report, "bc", "train")
    ppo_test, bc_test = _cell(report, "bc+ppo", "test"), _cell(report, "bc", "test")
    random_train = _cell(report, "random", "train")
    limit = TARGET_QUICK_SECONDS if preset == "quick" else TARGET_FULL_SECONDS
    if preset == "full":
        verdict = "PASS" if ppo_train["success_rate"] >= TARGET_TRAIN_SUCCESS else "BELOW TARGET"
        target = f"target >= {TARGET_TRAIN_SUCCESS:.0%}: {verdict}"
    else:
        target = f"the >= {TARGET_TRAIN_SUCCESS:.0%} target is the full preset's"
    checks = [
        f"- BC+PPO train split {ppo_train['success_rate']:.1%} ({target})",
        f"- BC+PPO test split {ppo_test['success_rate']:.1%} vs BC {bc_test['success_rate']:.1%}: "
        f"{'not worse' if ppo_test['successes'] >= bc_test['successes'] else 'WORSE'}; train split vs BC "
        f"{bc_train['success_rate']:.1%}",
        f"- BC+PPO above random ({random_train['success_rate']:.1%}): "
        f"{'yes' if ppo_train['successes'] > random_train['successes'] else 'NO'}",
    ]
    if collapse:
        checks.append(
            f"- Learning curve ({len(curve)} evaluations of {curve[0]['episodes']} episodes on seeds 300000+): "
            f"BC level {bc_level:.1%}, lowest {collapse['min_success_rate']:.1%}, largest drop "
            f"{collapse['max_drop_points']:.1f} points: {'COLLAPSE' if collapse['collapsed'] else 'no collapse'} "
            f"(threshold {collapse['threshold_points']:g})"
        )
    total = report["total_seconds"]
    checks.append(f"- Wall clock {total / 60:.1f} min (limit {limit / 60:.0f} min): "
                  f"{'PASS' if total <= limit else 'OVER'}")
    lines += ["", *checks, ""]
    if plot_name:
        lines += [f"![PPO learning curve, preset {preset}]({plot_name})", ""]
    lines += ["| env steps | eval success | 95 % interval | mean length |", "|---:|---:|---:|---:|"]
    lines += [f"| {p['timesteps']} | {p['success_rate']:.1%} | {p['ci_low']:.1%}-{p['ci_high']:.1%} | "
              f"{p['mean_length']:.1f} |" for p in curve]
    lines += ["", "| stage | wall clock | summary |", "|---|---:|---|"]
    for stage, entry in report["stages"].items():
        lines.append(f"| {stage} | {entry['seconds'] / 60:.1f} min | {entry['summary']} |")
    lines.append(f"| total | {total / 60:.1f} min | |")
    lines.append(end_marker)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="report.json of a finished train-agent run")
    parser.add_argument("--out", type=Path, required=True, help="RESULTS.md to update")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    plot_name = None
    if report["files"].get("learning_curve"):
        plot_name = f"learning_curve_{report['preset']}.png"
        shutil.copyfile(args.report.parent / report["files"]["learning_curve"], args.out.parent / plot_name)
    write_section(args.out, section(report, args.report, plot_name), f"train_agent_{report['preset']}")
    print(f"{args.out}: section train_agent_{report['preset']} written")


if __name__ == "__main__":
    main()
