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

from vla_gym.report import collapse_summary, mean_over_tasks, success_cell

#: Acceptance targets (issue 12): the quick preset within 10 min with BC+PPO >= 85 % and >= 20
#: points above BC (intervals apart); the full preset within 15 min, BC+PPO not below BC on any
#: split (within intervals) and >= 97 % on the camera-jitter split.
TARGET_QUICK_SUCCESS, TARGET_QUICK_GAIN = 0.85, 0.20
TARGET_CAMERA_SUCCESS = 0.97
TARGET_QUICK_SECONDS = 10 * 60
TARGET_FULL_SECONDS = 15 * 60


#: Acceptance targets of the multitask preset (issue 13).
TARGET_MULTITASK_SECONDS = 45 * 60
TARGET_MT_TRAIN_MEAN, TARGET_MT_TEST_MEAN, TARGET_MT_TASK_FLOOR = 0.90, 0.80, 0.70
TARGET_MT_CAMERA_MEAN, TARGET_MT_SWITCHED, TARGET_MT_PICK = 0.90, 0.80, 0.98
TARGET_MT_SUBGOALS = 1.7
TARGET_MT_BC_WEAK, TARGET_MT_GAIN = 0.80, 0.10


def _cell(report: dict, policy: str, split: str, task: str | None = None) -> dict:
    return next(r for r in report["results"]
                if r["policy"] == policy and r["split"] == split and r.get("task") == task)


SPLIT_TITLES = {"train": "train-split instructions", "test": "test-split instructions", "camera_jitter": "camera jitter",
                "object_test": "object test", "switched_goal": "switched goal"}


def _quick_check(report: dict) -> str:
    ppo, bc = _cell(report, "bc+ppo", "train"), _cell(report, "bc", "train")
    gain = ppo["success_rate"] - bc["success_rate"]
    ok = ppo["success_rate"] >= TARGET_QUICK_SUCCESS and gain >= TARGET_QUICK_GAIN and ppo["ci_low"] > bc["ci_high"]
    return (f"- BC+PPO {ppo['success_rate']:.1%} vs BC {bc['success_rate']:.1%} on the train split: "
            f"{gain * 100:+.1f} points (target >= {TARGET_QUICK_SUCCESS:.0%} and >= {TARGET_QUICK_GAIN * 100:.0f} "
            f"points above BC, intervals apart): {'PASS' if ok else 'BELOW TARGET'}")


def _full_check(report: dict, splits: list[str]) -> str:
    parts = []
    for split in splits:
        ppo, bc = _cell(report, "bc+ppo", split), _cell(report, "bc", split)
        parts.append(f"{split} {ppo['success_rate']:.1%} vs {bc['success_rate']:.1%} "
                     f"({'ok' if ppo['ci_high'] >= bc['success_rate'] else 'WORSE'})")
    out = "- BC+PPO vs BC, not worse within the interval: " + "; ".join(parts)
    if "camera_jitter" in splits:
        camera = _cell(report, "bc+ppo", "camera_jitter")["success_rate"]
        out += (f"\n- BC+PPO camera jitter {camera:.1%} (target >= {TARGET_CAMERA_SUCCESS:.0%}): "
                f"{'PASS' if camera >= TARGET_CAMERA_SUCCESS else 'BELOW TARGET'}")
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "BELOW TARGET"


def _mean(report: dict, policy: str, split: str) -> float | None:
    """The report's mean over tasks of ``policy`` on ``split`` (None if it has no such cell)."""
    means = report.get("mean_over_tasks") or mean_over_tasks(report["results"])  # reports from before the key
    return next((m["mean_success_rate"] for m in means if m["policy"] == policy and m["split"] == split), None)


def _multitask_table(report: dict, splits: list[str]) -> list[str]:
    """Rows: each task (then the mean) x policy; columns: the splits."""
    tasks = report["eval"]["tasks"]
    policies = list(dict.fromkeys(r["policy"] for r in report["results"]))
    lines = ["| task | policy | " + " | ".join(SPLIT_TITLES.get(x, x) for x in splits) + " |",
             "|---|---|" + "---|" * len(splits)]
    for task in tasks:
        for policy in policies:
            cells = []
            for split in splits:
                cell = _cell(report, policy, split, task)
                extra = (f", subgoals {cell['mean_subgoals_done']:.2f}/{cell['num_subgoals']:.2f}"
                         if cell.get("num_subgoals", 1) > 1 else "")
                cells.append(success_cell(cell) + extra)
            lines.append(f"| {task} | {policy} | " + " | ".join(cells) + " |")
    for policy in policies:
        lines.append(f"| **mean** | {policy} | " + " | ".join(f"{_mean(report, policy, x):.1%}" for x in splits) + " |")
    return lines


def _multitask_checks(report: dict, splits: list[str]) -> list[str]:
    """The issue's targets for the multitask preset, each with the figure measured."""
    tasks, final = report["eval"]["tasks"], "bc+ppo"
    out = []
    train = _mean(report, final, "train")
    floor = min(_cell(report, final, "train", t)["success_rate"] for t in tasks)
    out.append(f"- BC+PPO mean over tasks, train split {train:.1%} (target >= {TARGET_MT_TRAIN_MEAN:.0%}): "
               f"{_verdict(train >= TARGET_MT_TRAIN_MEAN)}; lowest task {floor:.1%} (target >= "
               f"{TARGET_MT_TASK_FLOOR:.0%}): {_verdict(floor >= TARGET_MT_TASK_FLOOR)}")
    for split in ("test", "object_test"):
        if split in splits:
            value = _mean(report, final, split)
            out.append(f"- BC+PPO mean over tasks, {split} {value:.1%} (target >= {TARGET_MT_TEST_MEAN:.0%}): "
                       f"{_verdict(value >= TARGET_MT_TEST_MEAN)}")
    if "camera_jitter" in splits:
        value = _mean(report, final, "camera_jitter")
        out.append(f"- BC+PPO mean over tasks, camera jitter {value:.1%} (target >= {TARGET_MT_CAMERA_MEAN:.0%}): "
                   f"{_verdict(value >= TARGET_MT_CAMERA_MEAN)}")
    if "switched_goal" in splits:
        low = min(_cell(report, final, "switched_goal", t)["success_rate"] for t in tasks)
        out.append(f"- Switched goal (instruction-blind check), lowest task {low:.1%} (target >= "
                   f"{TARGET_MT_SWITCHED:.0%} on every task): {_verdict(low >= TARGET_MT_SWITCHED)}")
    if "pick" in tasks:
        pick = _cell(report, final, "train", "pick")["success_rate"]
        out.append(f"- The multi-task policy on VLAPick-v0 (train split) {pick:.1%} (target >= {TARGET_MT_PICK:.0%}): "
                   f"{_verdict(pick >= TARGET_MT_PICK)}")
    if "rearrange" in tasks:
        cell = _cell(report, final, "train", "rearrange")
        out.append(f"- VLARearrange-v0 subgoals done {cell['mean_subgoals_done']:.2f} of {cell['num_subgoals']:.2f} "
                   f"on average (target >= {TARGET_MT_SUBGOALS}): "
                   f"{_verdict(cell['mean_subgoals_done'] >= TARGET_MT_SUBGOALS)}")
    return out + _multitask_gain_checks(report, splits)


def _multitask_gain_checks(report: dict, splits: list[str]) -> list[str]:
    """PPO >= 10 points above BC where BC < 80 %, and never below BC's interval."""
    weak, worse = [], []
    for task in report["eval"]["tasks"]:
        for split in splits:
            bc, ppo = _cell(report, "bc", split, task), _cell(report, "bc+ppo", split, task)
            gain = ppo["success_rate"] - bc["success_rate"]
            if split == "train" and bc["success_rate"] < TARGET_MT_BC_WEAK:
                weak.append(f"{task} {bc['success_rate']:.0%} -> {ppo['success_rate']:.0%} ({gain * 100:+.0f})")
                weak[-1] += "" if gain >= TARGET_MT_GAIN else " BELOW"
            if ppo["ci_high"] < bc["success_rate"]:
                worse.append(f"{task}/{split} {bc['success_rate']:.0%} -> {ppo['success_rate']:.0%}")
    ok = all(not w.endswith("BELOW") for w in weak)
    return [
        f"- PPO on tasks where BC is below {TARGET_MT_BC_WEAK:.0%} (train split; target >= "
        f"{TARGET_MT_GAIN * 100:.0f} points): {'; '.join(weak) or 'no such task'}: {_verdict(ok)}",
        f"- BC+PPO significantly below BC (its interval's top under BC's rate) in: {'; '.join(worse) or 'no cell'}: "
        f"{_verdict(not worse)}",
    ]


def section(report: dict, report_path: Path, plot_name: str | None) -> str:
    preset = report["preset"]
    name = f"train_agent_{preset}"
    start_marker, end_marker = markers(name)
    hw = report["hardware"]
    splits = report["eval"]["splits"]
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
    ]
    multitask = bool(report["eval"].get("tasks"))
    if multitask:
        lines += _multitask_table(report, splits)
    else:
        lines += ["| policy | " + " | ".join(SPLIT_TITLES.get(x, x) for x in splits) + " |",
                  "|---|" + "---|" * len(splits)]
        for policy in dict.fromkeys(r["policy"] for r in report["results"]):
            lines.append(f"| {policy} | " + " | ".join(success_cell(_cell(report, policy, x)) for x in splits) + " |")
    curve, bc_level = report["learning_curve"], report["bc_level"]
    collapse = collapse_summary(curve, bc_level)
    limit = {"quick": TARGET_QUICK_SECONDS, "multitask": TARGET_MULTITASK_SECONDS}.get(preset, TARGET_FULL_SECONDS)
    if multitask:
        checks = _multitask_checks(report, splits)
    else:
        checks = [_quick_check(report) if preset == "quick" else _full_check(report, splits)]
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
