"""The train-agent report: report.json, report.md and a learning-curve PNG.

The ``train-agent`` pipeline (demos -> BC -> PPO -> evaluation) gathers everything it
measured into one plain dict (schema in :func:`validate_report`); :func:`write_report`
writes it as ``report.json`` and, rendered by :func:`render_markdown`, as ``report.md``;
:func:`plot_learning_curve` draws the PPO eval success rate against env steps as a PNG
that ``report.md`` embeds. :func:`collapse_summary` says whether PPO fine-tuning fell
more than :data:`COLLAPSE_THRESHOLD_POINTS` below the BC level it started from.

Fractions (success rates, interval bounds) are stored in [0, 1] and printed in percent
with one decimal. Plotting uses matplotlib's Agg canvas on a ``Figure`` object (no
pyplot, no ``matplotlib.use``), so it leaves any configured backend alone.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vla_gym.evaluation import JSON_INDENT, json_default
from vla_gym.fileio import atomic_write_bytes, atomic_write_text

#: PPO has collapsed when its eval success falls more than this many percentage points
#: below the BC level (the eval success at PPO step 0).
COLLAPSE_THRESHOLD_POINTS = 10.0
#: Drops are rounded to this many decimals so float noise (e.g. 0.6 - 0.5) does not
#: decide a collapse that lies exactly on the threshold.
DROP_DECIMALS = 6
PERCENT = 100.0

REPORT_JSON_FILE = "report.json"
REPORT_MARKDOWN_FILE = "report.md"
LEARNING_CURVE_FILE = "learning_curve.png"
DEFAULT_TITLE = "vla_gym train-agent report"
DEFAULT_CURVE_TITLE = "PPO fine-tuning: eval success rate"

FIGURE_SIZE_INCHES = (7.0, 4.5)  # width, height
FIGURE_DPI = 120  # PNG pixels per inch: 840 x 540 px
Y_LIMITS_PERCENT = (0.0, 105.0)
INTERVAL_ALPHA = 0.2  # opacity of the shaded 95 % interval band
GRID_ALPHA = 0.4
CURVE_COLOUR = "tab:blue"
BC_LEVEL_COLOUR = "tab:green"
THRESHOLD_COLOUR = "tab:red"

#: Rows of the success-rate table come in this order; other policies follow, sorted.
POLICY_ORDER = ("scripted", "random", "bc", "bc+ppo")
#: Rows of the wall-clock table come in this order; other stages follow, sorted.
STAGE_ORDER = ("demos", "grounding", "bc", "ppo", "evaluation")
MISSING_CELL = "n/a"

REQUIRED_KEYS = (
    "title",
    "preset",
    "created",
    "env_id",
    "env_kwargs",
    "hardware",
    "device",
    "eval",
    "results",
    "learning_curve",
    "bc_level",
    "collapse",
    "stages",
    "total_seconds",
    "files",
    "commands",
)
EVAL_KEYS = ("episodes", "seed_first", "seed_last", "splits")
RESULT_KEYS = (
    "policy",
    "split",
    "episodes",
    "successes",
    "success_rate",
    "ci_low",
    "ci_high",
    "mean_length",
    "source",
)
CURVE_KEYS = ("timesteps", "success_rate", "ci_low", "ci_high")
STAGE_KEYS = ("seconds", "skipped", "summary")
FILE_KEYS = ("learning_curve", "video", "demos", "bc_policy", "ppo_policy")
COLLAPSE_KEYS = ("min_success_rate", "max_drop_points", "threshold_points", "collapsed")
FRACTION_KEYS = ("success_rate", "ci_low", "ci_high")


# --------------------------------------------------------------------------- checks


def _require_keys(mapping: Any, keys: Iterable[str], where: str) -> None:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(mapping).__name__}: {mapping!r}")
    for key in keys:
        if key not in mapping:
            raise ValueError(f"{where} is missing key {key!r}; required keys: {', '.join(keys)}")


def _check_fraction(value: Any, where: str) -> float:
    """``value`` as a float in [0, 1]; ValueError naming ``where`` otherwise (NaN included)."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}={value!r} must be a number in [0, 1]") from None
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{where}={value!r} is outside [0, 1] (fractions, not percent)")
    return fraction


def _check_curve(curve: Sequence[Mapping[str, Any]], allow_empty: bool) -> None:
    if not allow_empty and len(curve) == 0:
        raise ValueError(f"learning curve is empty: need at least one point with keys {', '.join(CURVE_KEYS)}")
    for index, point in enumerate(curve):
        where = f"learning_curve[{index}]"
        _require_keys(point, CURVE_KEYS, where)
        for key in FRACTION_KEYS:
            _check_fraction(point[key], f"{where}[{key!r}]")


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first missing key or out-of-range fraction of ``report``.

    Schema (``notes`` and ``mean_over_tasks`` are the optional top-level keys)::

        title: str; preset: str ("quick", "full", ...); created: ISO-8601 str
        env_id: str; env_kwargs: dict
        hardware: vla_gym.hardware.hardware_dict(); device: "cpu" | "cuda" (training)
        eval: {episodes: int per cell, seed_first: int, seed_last: int, splits: [str]}
        results: [{policy, split, episodes, successes, success_rate, ci_low, ci_high,
                   mean_length (env steps), source}]   fractions in [0, 1], 95 % Wilson;
                 on a multi-task run also task, mean_subgoals_done, num_subgoals
        mean_over_tasks: [{policy, split, tasks, mean_success_rate, min_success_rate}]  optional
        learning_curve: [{timesteps (env steps), success_rate, ci_low, ci_high,
                          mean_length (optional)}]     may be empty
        bc_level: float in [0, 1] | None               eval success at PPO step 0
        collapse: collapse_summary(...) | None
        stages: {name: {seconds: float, skipped: bool, summary: str}}
        total_seconds: float
        files: {learning_curve, video, demos, bc_policy, ppo_policy}: str | None
        commands: [str]                                 reproduce the run
        notes: [str]                                    optional
    """
    _require_keys(report, REQUIRED_KEYS, "report")
    _require_keys(report["eval"], EVAL_KEYS, "report['eval']")
    for index, result in enumerate(report["results"]):
        where = f"report['results'][{index}]"
        _require_keys(result, RESULT_KEYS, where)
        for key in FRACTION_KEYS:
            _check_fraction(result[key], f"{where}[{key!r}]")
        if not 0 <= result["successes"] <= result["episodes"]:
            raise ValueError(
                f"{where}: successes={result['successes']!r} must lie in [0, episodes={result['episodes']!r}]"
            )
    _check_curve(report["learning_curve"], allow_empty=True)
    if report["bc_level"] is not None:
        _check_fraction(report["bc_level"], "report['bc_level']")
    if report["collapse"] is not None:
        _require_keys(report["collapse"], COLLAPSE_KEYS, "report['collapse']")
    _require_keys(report["stages"], (), "report['stages']")
    for name, stage in report["stages"].items():
        _require_keys(stage, STAGE_KEYS, f"report['stages'][{name!r}]")
    _require_keys(report["files"], FILE_KEYS, "report['files']")


# --------------------------------------------------------------------------- numbers


def collapse_summary(
    curve: Sequence[Mapping[str, Any]],
    bc_level: float | None,
    threshold_points: float = COLLAPSE_THRESHOLD_POINTS,
) -> dict[str, Any] | None:
    """Did PPO fall more than ``threshold_points`` percentage points below the BC level?

    Args:
        curve: learning-curve points with ``success_rate`` in [0, 1].
        bc_level: eval success rate in [0, 1] at PPO step 0.
        threshold_points: the allowed drop, percentage points.

    Returns:
        None when ``curve`` is empty or ``bc_level`` is None; else ``min_success_rate``
        (lowest ``success_rate`` on the curve, [0, 1]), ``max_drop_points``
        (``max(0, 100 * (bc_level - min_success_rate))``, rounded to
        :data:`DROP_DECIMALS`), ``threshold_points`` and ``collapsed``
        (``max_drop_points > threshold_points``).
    """
    if bc_level is None or len(curve) == 0:
        return None
    _check_curve(curve, allow_empty=False)
    bc = _check_fraction(bc_level, "bc_level")
    lowest = min(float(point["success_rate"]) for point in curve)
    drop = round(max(0.0, PERCENT * (bc - lowest)), DROP_DECIMALS)
    return {
        "min_success_rate": lowest,
        "max_drop_points": drop,
        "threshold_points": float(threshold_points),
        "collapsed": drop > threshold_points,
    }


def format_percent(fraction: float) -> str:
    """0.965 -> ``"96.5 %"``."""
    return f"{PERCENT * fraction:.1f} %"


def format_interval(low: float, high: float) -> str:
    """(0.93, 0.983) -> ``"93.0-98.3"`` (percent)."""
    return f"{PERCENT * low:.1f}-{PERCENT * high:.1f}"


def _minutes_seconds(seconds: float) -> str:
    """125.4 -> ``"2:05"`` (minutes are not wrapped into hours)."""
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
    """``names`` without repeats: those in ``order`` first, in that order, then the rest sorted."""
    unique = set(names)
    return [name for name in order if name in unique] + sorted(unique - set(order))


# --------------------------------------------------------------------------- figure


def plot_learning_curve(
    curve: Sequence[Mapping[str, Any]],
    bc_level: float | None,
    path: str | os.PathLike,
    title: str = DEFAULT_CURVE_TITLE,
) -> Path:
    """Draw eval success rate (%) against env steps and write it to ``path`` as PNG, atomically.

    Args:
        curve: points with ``timesteps`` (env steps), ``success_rate``, ``ci_low`` and
            ``ci_high`` (fractions in [0, 1]; the interval is the 95 % Wilson one), drawn
            as markers joined by a line over a shaded interval band.
        bc_level: eval success rate in [0, 1] at PPO step 0, drawn as a dashed line, with
            the collapse threshold (:data:`COLLAPSE_THRESHOLD_POINTS` below it) dotted;
            None draws neither.
        path: where the PNG goes (parents are created).
        title: the figure title.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: the curve is empty, a point lacks a key, or a fraction lies outside [0, 1].
    """
    _check_curve(curve, allow_empty=False)
    if bc_level is not None:
        _check_fraction(bc_level, "bc_level")
    points = sorted(curve, key=lambda point: point["timesteps"])
    steps = [int(point["timesteps"]) for point in points]
    rate = [PERCENT * float(point["success_rate"]) for point in points]
    low = [PERCENT * float(point["ci_low"]) for point in points]
    high = [PERCENT * float(point["ci_high"]) for point in points]

    fig = Figure(figsize=FIGURE_SIZE_INCHES)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(steps, low, high, color=CURVE_COLOUR, alpha=INTERVAL_ALPHA, label="95 % interval (Wilson)")
    ax.plot(steps, rate, marker="o", color=CURVE_COLOUR, label="eval success rate")
    if bc_level is not None:
        bc = PERCENT * float(bc_level)
        ax.axhline(bc, linestyle="--", color=BC_LEVEL_COLOUR, label=f"BC level ({bc:.1f} %)")
        ax.axhline(
            bc - COLLAPSE_THRESHOLD_POINTS,
            linestyle=":",
            color=THRESHOLD_COLOUR,
            label=f"BC level - {COLLAPSE_THRESHOLD_POINTS:g} points (collapse threshold)",
        )
    ax.set_ylim(*Y_LIMITS_PERCENT)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval success rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=GRID_ALPHA)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return atomic_write_bytes(Path(path), buffer.getvalue())


# --------------------------------------------------------------------------- markdown


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Markdown table lines; ``align`` holds ``"l"`` or ``"r"`` per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def success_cell(result: Mapping[str, Any]) -> str:
    """One success-table cell, e.g. ``"96.5 % (93.0-98.3) · 193/200, len 23.1"``."""
    return (
        f"{format_percent(result['success_rate'])} ({format_interval(result['ci_low'], result['ci_high'])}) · "
        f"{result['successes']}/{result['episodes']}, len {float(result['mean_length']):.1f}"
    )


def _success_table(results: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> list[str]:
    """Policy x split table of ``results`` (one task's rows, or a one-task run's)."""
    policies = _ordered((r["policy"] for r in results), POLICY_ORDER)
    by_cell = {(r["policy"], r["split"]): r for r in results}
    rows = []
    for policy in policies:
        cells = [success_cell(by_cell[policy, split]) if (policy, split) in by_cell else MISSING_CELL for split in splits]
        sources = dict.fromkeys(str(r["source"]) for r in results if r["policy"] == policy)
        rows.append([policy, *cells, ", ".join(f"`{source}`" for source in sources)])
    if not rows:
        return ["No policy was evaluated."]
    return _table(["policy", *splits, "source"], ["l", *("l" for _ in splits), "l"], rows)


def mean_over_tasks(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per policy and split, the mean of the per-task success rates and the lowest one, over
    the result rows that name a task (empty for single-task rows): the report's
    ``mean_over_tasks``, which every reader of a multi-task report uses."""
    cells: dict[tuple[str, str], list[float]] = {}
    for row in results:
        if row.get("task") is not None:
            cells.setdefault((row["policy"], row["split"]), []).append(float(row["success_rate"]))
    return [
        {"policy": policy, "split": split, "tasks": len(rates), "mean_success_rate": sum(rates) / len(rates),
         "min_success_rate": min(rates)}
        for (policy, split), rates in cells.items()
    ]


def _task_blocks(results: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> list[str]:
    """A multi-task report: the mean over tasks, then a table per task (and, for tasks of
    several subgoals, the mean number done: CALVIN's measure)."""
    tasks = list(dict.fromkeys(r["task"] for r in results))
    policies = _ordered((r["policy"] for r in results), POLICY_ORDER)
    means = {(m["policy"], m["split"]): m for m in mean_over_tasks(results)}
    mean_rows = [
        [policy, *(f"{format_percent(m['mean_success_rate'])} (lowest {format_percent(m['min_success_rate'])})"
                   if (m := means.get((policy, split))) else MISSING_CELL for split in splits)]
        for policy in policies
    ]
    lines = [f"### Mean over the {len(tasks)} tasks", "",
             *_table(["policy", *splits], ["l", *("l" for _ in splits)], mean_rows)]
    for task in tasks:
        rows = [r for r in results if r["task"] == task]
        lines += ["", f"### {task}", "", *_success_table(rows, splits)]
        if any(float(r.get("num_subgoals", 1)) > 1 for r in rows):
            by_cell = {(r["policy"], r["split"]): r for r in rows}
            sub_rows = [
                [policy, *(f"{by_cell[policy, s]['mean_subgoals_done']:.2f} / {by_cell[policy, s]['num_subgoals']:.2f}"
                           if (policy, s) in by_cell else MISSING_CELL for s in splits)]
                for policy in _ordered((r["policy"] for r in rows), POLICY_ORDER)
            ]
            lines += ["", f"Subgoals done / subgoals per episode ({task}, means):", "",
                      *_table(["policy", *splits], ["l", *("r" for _ in splits)], sub_rows)]
    return lines


def _success_section(report: Mapping[str, Any]) -> list[str]:
    results = report["results"]
    evaluation = report["eval"]
    splits = list(dict.fromkeys([*evaluation["splits"], *(r["split"] for r in results)]))
    lines = ["## Success rates", ""]
    if any(r.get("task") is not None for r in results):
        lines += _task_blocks(results, splits)
        per = "task, policy and split"
    else:
        lines += _success_table(results, splits)
        per = "cell"
    lines += [
        "",
        f"Success rate with its 95 % Wilson interval · successes/episodes, mean episode length in env steps. "
        f"Episodes {evaluation['episodes']} per {per}, seeds {evaluation['seed_first']}-{evaluation['seed_last']}, "
        "deterministic actions, same seeds for every policy.",
    ]
    return lines


def _curve_section(report: Mapping[str, Any]) -> list[str]:
    curve, bc_level = report["learning_curve"], report["bc_level"]
    lines = ["## PPO learning curve", ""]
    if not curve:
        return lines + ["No learning curve: PPO was not evaluated during training."]
    image = report["files"]["learning_curve"]
    if image:
        lines += [f"![learning curve]({image})", ""]
    collapse = report["collapse"] or collapse_summary(curve, bc_level)
    if bc_level is None or collapse is None:
        lines.append("No BC level (no evaluation at PPO step 0), so no collapse check.")
    else:
        threshold = float(collapse["threshold_points"])
        verdict = "COLLAPSE" if collapse["collapsed"] else "no collapse"
        lines.append(
            f"BC level (eval success at PPO step 0): {format_percent(bc_level)}. "
            f"Lowest eval success during PPO: {format_percent(collapse['min_success_rate'])}; "
            f"biggest drop below the BC level: {float(collapse['max_drop_points']):.1f} points: "
            f"**{verdict}** (threshold {threshold:g} points)."
        )
    rows = [
        [
            point["timesteps"],
            format_percent(point["success_rate"]),
            format_interval(point["ci_low"], point["ci_high"]),
            f"{float(point['mean_length']):.1f}" if point.get("mean_length") is not None else MISSING_CELL,
        ]
        for point in curve
    ]
    lines.append("")
    lines += _table(["env steps", "success", "95 % interval", "mean length"], ["r", "r", "r", "r"], rows)
    return lines


def _final_policy_section(report: Mapping[str, Any]) -> list[str]:
    files = report["files"]
    video = files["video"]
    lines = ["## Final policy", ""]
    lines.append(f"Video: [{video}]({video})" if video else "No video was recorded.")
    lines += [
        "",
        f"- demos: `{files['demos']}`",
        f"- BC policy: `{files['bc_policy']}`",
        f"- PPO policy: `{files['ppo_policy']}`",
    ]
    return lines


def _wall_clock_section(report: Mapping[str, Any]) -> list[str]:
    stages = report["stages"]
    rows = []
    for name in _ordered(stages, STAGE_ORDER):
        stage = stages[name]
        seconds = float(stage["seconds"])
        skipped = "yes (resumed)" if stage["skipped"] else "no"
        rows.append([name, f"{seconds:.1f}", _minutes_seconds(seconds), skipped, stage["summary"]])
    total = float(report["total_seconds"])
    rows.append(["**total**", f"{total:.1f}", _minutes_seconds(total), "", ""])
    header = ["stage", "seconds", "m:ss", "skipped", "summary"]
    return ["## Wall clock", "", *_table(header, ["l", "r", "r", "l", "l"], rows)]


def _hardware_section(report: Mapping[str, Any]) -> list[str]:
    hw = report["hardware"]
    unknown = "unknown"
    return [
        "## Hardware",
        "",
        f"- CPU: {hw.get('cpu', unknown)}, {hw.get('logical_cores', unknown)} logical cores "
        f"({hw.get('usable_cores', unknown)} usable)",
        f"- GPU: {hw.get('gpu') or 'none'}",
        f"- training device: {report['device']}",
        f"- platform: {hw.get('platform', unknown)}, Python {hw.get('python', unknown)}",
        f"- torch {hw.get('torch', unknown)}, stable-baselines3 {hw.get('stable_baselines3', unknown)}, "
        f"pybullet {hw.get('pybullet', unknown)}, gymnasium {hw.get('gymnasium', unknown)}",
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report`` (schema in :func:`validate_report`) as a Markdown document, ending in a newline.

    Raises:
        ValueError: ``report`` lacks a required key or holds a fraction outside [0, 1].
    """
    validate_report(report)
    kwargs = json.dumps(report["env_kwargs"], sort_keys=True, default=json_default) if report["env_kwargs"] else None
    lines = [
        f"# {report['title']}",
        "",
        f"Preset `{report['preset']}`, created {report['created']}, env `{report['env_id']}` "
        + (f"with kwargs `{kwargs}`." if kwargs else "with its default kwargs."),
        "",
        *_success_section(report),
        "",
        *_curve_section(report),
        "",
        *_final_policy_section(report),
        "",
        *_wall_clock_section(report),
        "",
        *_hardware_section(report),
        "",
        "## Reproduce",
        "",
        "```bash",
        *report["commands"],
        "```",
    ]
    notes = report.get("notes")
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report`` as ``out_dir/report.json`` (indented) and ``out_dir/report.md``, atomically.

    The Markdown is rendered (and the report validated) before either file is written.
    The learning-curve PNG is not drawn here: :func:`plot_learning_curve` writes it, and
    ``report["files"]["learning_curve"]`` names it relative to ``out_dir``.

    Returns:
        (json_path, markdown_path).

    Raises:
        ValueError: ``report`` lacks a required key or holds a fraction outside [0, 1].
    """
    markdown = render_markdown(report)
    text = json.dumps(report, indent=JSON_INDENT, default=json_default) + "\n"
    out = Path(out_dir)
    json_path = atomic_write_text(out / REPORT_JSON_FILE, text)
    markdown_path = atomic_write_text(out / REPORT_MARKDOWN_FILE, markdown)
    return json_path, markdown_path
