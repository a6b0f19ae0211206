"""Memory of one env over many resets: RSS after the first 500 resets and at the end.

PyBullet keeps a few KB of every body that is created and removed until its client is
disconnected; a scene spawns 3-6 bodies per reset, so an env reset 10 000 times grew by
~3.3 KB per reset (77 -> 110 MB). The env now rebuilds its sim in a fresh client every
``SIM_REBUILD_EVERY`` resets (exactly as a new env would be built, so episodes are
unchanged), which bounds it. The target: RSS grows by less than 5 % between reset 500 and
the last reset.

Each measurement runs in its own fresh Python process (one after the other), which makes
one env and calls ``reset(seed=i)`` for i = 0, 1, ...; RSS is read from /proc/self/status.
``--baseline`` also measures with the rebuild switched off (SIM_REBUILD_EVERY raised above
the number of resets), for comparison.

Usage::

    python benchmarks/reset_memory.py --resets 10000 --baseline --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from report import machine_description, markers, write_section

SECTION = "reset_memory"
DEFAULT_RESETS = 10_000
WARM_RESETS = 500  # RSS is compared from here: imports, caches and the first scenes are loaded
MAX_GROWTH = 0.05  # the target: less than 5 % growth after the warm-up
DEFAULT_ENV_ID = "VLAPick-v0"
WORKER_TIMEOUT_S = 3600.0
MIB = 2**20


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (this benchmark needs Linux)")


def measure(env_id: str, resets: int, rebuild: bool) -> dict[str, float]:
    """Reset one env ``resets`` times; RSS (bytes) after :data:`WARM_RESETS` and at the end."""
    import gymnasium as gym

    import vla_gym  # noqa: F401  (registers the env ids)
    from vla_gym.envs import tabletop_env

    if not rebuild:
        tabletop_env.SIM_REBUILD_EVERY = resets + 1
    env = gym.make(env_id)
    marks = {}
    start = time.perf_counter()
    try:
        for i in range(resets):
            env.reset(seed=i)
            if i + 1 in (WARM_RESETS, resets):
                marks[i + 1] = rss_bytes()
    finally:
        env.close()
    seconds = time.perf_counter() - start
    warm, end = marks[min(WARM_RESETS, resets)], marks[resets]
    return {"rss_warm": warm, "rss_end": end, "growth": (end - warm) / warm, "seconds": seconds,
            "per_reset_bytes": (end - warm) / max(resets - WARM_RESETS, 1)}


def run_worker(env_id: str, resets: int, rebuild: bool) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter, so that nothing else shares its memory."""
    command = [sys.executable, __file__, "--worker", "--env", env_id, "--resets", str(resets)]
    if not rebuild:
        command.append("--no-rebuild")
    out = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    start, end = markers(SECTION)
    lines = [
        start,
        "## Memory over many resets (one env)",
        "",
        f"`python benchmarks/reset_memory.py --resets {args.resets}{' --baseline' if args.baseline else ''} "
        f"--out {args.out}` on {args.env}: RSS after {WARM_RESETS} resets and after {args.resets}, each "
        f"measurement in a fresh process. Target: growth < {MAX_GROWTH:.0%}. {machine_description()}",
        "",
        f"| sim | RSS after {WARM_RESETS} | RSS after {args.resets} | growth | per reset | resets/s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['rss_warm'] / MIB:.1f} MiB | {r['rss_end'] / MIB:.1f} MiB | {r['growth']:+.1%} "
            f"| {r['per_reset_bytes'] / 1024:+.2f} KiB | {args.resets / r['seconds']:.0f} |"
        )
    lines += [
        "",
        "PyBullet keeps a few KB of every body created and removed until its client is disconnected. The env "
        "rebuilds its sim in a fresh client every `SIM_REBUILD_EVERY` resets, in the order a new env builds "
        "it, so frames are unchanged (tests/test_fingerprint.py, tests/test_env.py) and memory stays bounded.",
        "",
        end,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resets", type=int, default=DEFAULT_RESETS)
    parser.add_argument("--env", default=DEFAULT_ENV_ID)
    parser.add_argument("--baseline", action="store_true", help="also measure with the periodic rebuild off")
    parser.add_argument("--out", default=None, help="RESULTS.md to update (section reset_memory)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-rebuild", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resets < WARM_RESETS:
        parser.error(f"--resets must be >= {WARM_RESETS} (RSS is compared from reset {WARM_RESETS})")
    if args.worker:
        print(json.dumps(measure(args.env, args.resets, rebuild=not args.no_rebuild)))
        return
    results = {"rebuilt every SIM_REBUILD_EVERY resets": run_worker(args.env, args.resets, rebuild=True)}
    if args.baseline:
        results["never rebuilt (before)"] = run_worker(args.env, args.resets, rebuild=False)
    for label, r in results.items():
        print(f"{label}: {r['rss_warm'] / MIB:.1f} -> {r['rss_end'] / MIB:.1f} MiB ({r['growth']:+.2%}), "
              f"{r['per_reset_bytes'] / 1024:+.2f} KiB per reset, {r['seconds']:.0f} s", flush=True)
    if args.out:
        write_section(Path(args.out), render(results, args), SECTION)
    growth = next(iter(results.values()))["growth"]
    if growth >= MAX_GROWTH:
        sys.exit(f"RSS grew by {growth:.1%} after {WARM_RESETS} resets; the target is < {MAX_GROWTH:.0%}")


if __name__ == "__main__":
    main()
