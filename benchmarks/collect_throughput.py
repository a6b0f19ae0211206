"""Demo collection throughput with worker processes, against the single-process env.

Usage: python benchmarks/collect_throughput.py --episodes 1000 --workers 2 --repeats 3 \\
           --out benchmarks/RESULTS.md

Measures, one after another (never concurrently):
  (a) the single-process env throughput: ``env_throughput.py``'s VLAPick-v0 loop
      (random actions, resets included) in a fresh subprocess;
  (b) ``vla-gym collect`` (scripted expert, HDF5 writing, worker start-up, everything)
      with ``--workers`` processes, as env steps recorded per wall-clock second;
  (c) the same collection in this one process (``--workers 0``): the same work as (b)
      without parallelism, to show how well the workers scale.
Target: (b) >= 0.7 x workers x (a). Expert episodes cost more per step than (a)'s random
actions (the arm is large in the image), so (b) / (workers x (c)) is the scaling itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from env_throughput import VLAPICK, run_worker
from report import machine_description, markers, write_section

from vla_gym.data import CollectConfig, collect_demos

SECTION = "collect_throughput"
TARGET_EFFICIENCY = 0.7


def measure_collection(episodes: int, workers: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = collect_demos(
            CollectConfig(out=str(Path(tmp) / "demos.h5"), episodes=episodes, workers=workers, seed=seed),
            progress=False,
        )
    print(f"  collect: {result.summary()}", flush=True)
    return result.steps_per_second


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, the median reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    env_args = argparse.Namespace(steps=2000, warmup=100, max_seconds=120.0, seed=args.seed)
    single, collect, serial = [], [], []
    for run in range(args.repeats):
        print(f"run {run + 1}/{args.repeats}", flush=True)
        single.append(run_worker(VLAPICK, env_args).steps_per_s)
        print(f"  single-process env: {single[-1]:.1f} steps/s", flush=True)
        collect.append(measure_collection(args.episodes, args.workers, args.seed))
        serial.append(measure_collection(args.episodes, 0, args.seed))
    a, b, c = statistics.median(single), statistics.median(collect), statistics.median(serial)
    ratio = b / (args.workers * a)
    verdict = "PASS" if ratio >= TARGET_EFFICIENCY else "FAIL"
    print(f"single {a:.1f} steps/s; collect x{args.workers} {b:.1f} steps/s; {ratio:.2f} of {args.workers} x single: {verdict}")
    if args.out:
        start_marker, end_marker = markers(SECTION)
        command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])])
        now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        text = "\n".join(
            [
                start_marker,
                "## Demo collection throughput",
                "",
                f"- Date: {now}",
                f"- Machine: {machine_description()}",
                f"- Command: `{command}`",
                f"- Method: {args.repeats} run(s) of each, one after another, the median shown. Collection counts "
                "every recorded env step over the whole wall time (worker start-up, expert, HDF5 writing).",
                "",
                "| Measurement | steps/s | runs |",
                "|---|---:|---|",
                f"| (a) VLAPick-v0, single process, random actions | {a:.1f} | {', '.join(f'{x:.1f}' for x in single)} |",
                f"| (b) `vla-gym collect`, {args.workers} workers, {args.episodes} expert episodes | {b:.1f} "
                f"| {', '.join(f'{x:.1f}' for x in collect)} |",
                f"| (c) the same collection in one process | {c:.1f} | {', '.join(f'{x:.1f}' for x in serial)} |",
                "",
                f"- (b) / ({args.workers} x (a)) = **{ratio:.2f}** (target >= {TARGET_EFFICIENCY}): {verdict}",
                f"- (b) / ({args.workers} x (c)) = {b / (args.workers * c):.2f}: how well the workers scale on "
                "the same work. Expert episodes cost more per step than (a)'s random actions, because the "
                "arm fills more of the image.",
                end_marker,
            ]
        )
        write_section(args.out, text, SECTION)


if __name__ == "__main__":
    main()
