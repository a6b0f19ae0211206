"""Backends side by side: the local backend against the code before it, Ray against local,
1 against 2 workers, on the same collect and benchmark jobs.

Usage: python benchmarks/backend_scaling.py --episodes 200 --rounds 3 --baseline /tmp/vla_gym_base \\
           --out benchmarks/RESULTS.md

Every measurement is one ``vla-gym`` command in a fresh process, timed from its start to its
exit (imports, worker or Ray start-up, writing: everything a user waits for), and, for
collection, also by its own summary line (from the first episode handed out to the file
written). Rounds interleave the variants, the medians are reported:

* ``baseline``: ``vla-gym collect --workers 2`` of the tree given by ``--baseline`` (a
  checkout of the commit before the backends; run from it through ``PYTHONPATH``);
* ``local``: the same command today (``--backend local``, the default);
* ``local x1``: ``--workers 1`` (in this process: no worker start-up);
* ``ray (starts Ray)``: ``--backend ray``: the command starts a local Ray with 2 CPUs, runs and
  shuts it down;
* ``ray (running)``: ``--backend ray --ray-address auto`` against a Ray started beforehand
  with ``ray start --head --num-cpus 2`` (started and stopped outside the timing, around
  this variant only, so its daemons do not run during the others).

The benchmark job: ``vla-gym benchmark --policies scripted,random --splits train,object_test``
with ``--episodes`` / 4 episodes per cell, local and Ray, the same way. Every output is checked
equal to the local backend's (the demo files' arrays and attributes; the benchmark records).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import command_line, machine_description, markers, write_section

SECTION = "backend_scaling"
SUMMARY = re.compile(r"in ([0-9.]+) s = ([0-9.]+) env steps/s")


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-3000:]}")
    return wall, done.stdout


def _env(pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYTHONPATH")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def demo_digest(path: Path) -> str:
    """A digest of every episode's arrays and attributes, the masks and the env (links into
    shards followed): equal for the same demos in either layout."""
    import h5py
    import numpy as np

    from vla_gym.data.dataset import resolve_demo_path

    digest = hashlib.blake2b(digest_size=16)
    with h5py.File(resolve_demo_path(path), "r") as handle:
        data = handle["data"]
        digest.update(str(data.attrs["env_args"]).encode())
        for split in ("train", "valid"):
            digest.update(repr(handle["mask"][split][()].tolist()).encode())
        for name in sorted(data, key=lambda n: int(n.split("_")[-1])):
            digest.update(name.encode() + repr(sorted((k, str(v)) for k, v in data[name].attrs.items())).encode())
            keys: list[str] = []
            data[name].visit(keys.append)
            for key in sorted(keys):
                obj = data[name][key]
                if isinstance(obj, h5py.Dataset):
                    digest.update(key.encode() + np.asarray(obj[()]).tobytes())
    return digest.hexdigest()


class Ray:
    """``ray start --head`` / ``ray stop`` around one variant."""

    def __init__(self, cpus: int) -> None:
        self.ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        self.cpus = cpus

    def __enter__(self) -> Ray:
        subprocess.run([self.ray, "start", "--head", f"--num-cpus={self.cpus}", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True, env=_env())
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([self.ray, "stop", "--force"], capture_output=True, env=_env())


def _collect(variant: str, args, tmp: Path, round_: int) -> dict:
    out = tmp / f"{variant.replace(' ', '_')}_{round_}"
    cli = [sys.executable, "-m", "vla_gym.cli", "collect", "--episodes", str(args.episodes), "--seed", "0",
           "--no-progress", "--workers", "1" if variant == "local x1" else str(args.workers)]
    env = _env(args.baseline if variant == "baseline" else None)
    if variant.startswith("ray"):
        cli += ["--backend", "ray", "--shards", "--out", str(out)]
    else:
        cli += ["--out", str(out) + ".h5"]
    if variant == "ray (running)":
        with Ray(args.workers):
            wall, stdout = _run(cli + ["--ray-address", "auto"], env)
    else:
        wall, stdout = _run(cli, env)
    match = SUMMARY.search(stdout)
    path = out if variant.startswith("ray") else Path(str(out) + ".h5")
    record = {"wall_s": wall, "collect_s": float(match.group(1)), "digest": demo_digest(path)}
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return record


def _benchmark(variant: str, args, tmp: Path, round_: int) -> dict:
    out = tmp / f"bench_{variant.replace(' ', '_')}_{round_}"
    cli = [sys.executable, "-m", "vla_gym.cli", "benchmark", "--policies", "scripted,random",
           "--episodes", str(max(args.episodes // 4, 1)), "--splits", "train,object_test", "--workers",
           str(args.workers), "--out", str(out), "--no-progress"]
    if variant.startswith("ray"):
        cli += ["--backend", "ray"]
    if variant == "ray (running)":
        with Ray(args.workers):
            wall, _ = _run(cli + ["--ray-address", "auto"], _env())
    else:
        wall, _ = _run(cli, _env())
    records = sorted((out / "benchmark_episodes.jsonl").read_text().splitlines())  # in finishing order: sort
    report = json.loads((out / "benchmark.json").read_text())
    shutil.rmtree(out)
    return {"wall_s": wall, "run_s": report["seconds"], "digest": hashlib.blake2b("".join(records).encode()).hexdigest()}


COLLECT_VARIANTS = ("baseline", "local", "local x1", "ray (starts Ray)", "ray (running)")
BENCHMARK_VARIANTS = ("local", "ray (starts Ray)", "ray (running)")


def measure(args) -> tuple[dict, dict]:
    wanted = set(args.variants.split(",")) | {"local"} if args.variants else None
    collect = {v: [] for v in COLLECT_VARIANTS if (v != "baseline" or args.baseline) and (not wanted or v in wanted)}
    bench = {v: [] for v in BENCHMARK_VARIANTS if not wanted or v in wanted}
    with tempfile.TemporaryDirectory(prefix="vla_gym_scaling_") as tmp:
        for round_ in range(args.rounds):
            order = list(collect) if round_ % 2 == 0 else list(reversed(collect))
            for variant in order:
                collect[variant].append(_collect(variant, args, Path(tmp), round_))
                print(f"round {round_ + 1} collect {variant}: {collect[variant][-1]}", flush=True)
            order = list(bench) if round_ % 2 == 0 else list(reversed(bench))
            for variant in order:
                bench[variant].append(_benchmark(variant, args, Path(tmp), round_))
                print(f"round {round_ + 1} benchmark {variant}: {bench[variant][-1]}", flush=True)
    return collect, bench


def _median(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def _rows(variants: dict, episodes: int, own_key: str) -> list[str]:
    """One table row per variant: wall clock (per round), episodes/s, ratio to local, the
    command's own time, and whether every output equals the local backend's."""
    local_rate = episodes / _median(variants["local"], "wall_s")
    local_digest = variants["local"][0]["digest"]
    rows = []
    for variant, records in variants.items():
        wall = _median(records, "wall_s")
        same = all(r["digest"] == local_digest for r in records)
        per_round = ", ".join(f"{r['wall_s']:.1f}" for r in records)
        rows.append(f"| {variant} | {wall:.1f} ({per_round}) | {episodes / wall:.2f} | {episodes / wall / local_rate:.2f} "
                    f"| {_median(records, own_key):.1f} | {'yes' if same else '**no**'} |")
    return rows


def render(args, collect: dict, bench: dict, seconds: float | None) -> str:
    start, end = markers(args.section)
    episodes, cell_episodes = args.episodes, max(args.episodes // 4, 1)
    lines = [
        start,
        "## Backends: local against the code before them, Ray against local (issue 15)"
        + (f": more rounds of {args.variants}" if args.variants else ""),
        "",
        f"- Command: `{command_line()}`".replace(" --from-json", " --json")
        + (f" ({seconds / 60:.1f} min)" if seconds else ""),
        f"- Machine: {machine_description()}",
        f"- {args.rounds} interleaved rounds (order reversed every other round), medians. Each cell is one "
        "`vla-gym` command in a fresh process, timed start to exit (imports, worker or Ray start-up, writing); "
        "\"collect s\" is the command's own summary time (first episode handed out to the file written).",
        "",
        f"### `vla-gym collect --episodes {episodes} --workers {args.workers}`",
        "",
        "| variant | wall s (per round) | episodes/s | vs local | collect s | same episodes as local |",
        "|---|---|---:|---:|---:|---|",
        *_rows(collect, episodes, "collect_s"),
        "",
        f"### `vla-gym benchmark --policies scripted,random --splits train,object_test --episodes {cell_episodes} "
        f"--workers {args.workers}` ({4 * cell_episodes} episodes)",
        "",
        "| variant | wall s (per round) | episodes/s | vs local | episodes s | same records as local |",
        "|---|---|---:|---:|---:|---|",
        *_rows(bench, 4 * cell_episodes, "run_s"),
        end,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a checkout of the code before the backends (its root)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated subset (always with local) of {list(COLLECT_VARIANTS)}")
    parser.add_argument("--section", default=SECTION, help="name of the RESULTS.md section to write")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="render the measurements a --json run wrote (same other arguments) instead of measuring")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        collect, bench, seconds = raw["collect"], raw["benchmark"], raw.get("seconds")
    else:
        collect, bench = measure(args)
        seconds = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps({"collect": collect, "benchmark": bench, "seconds": seconds}, indent=2) + "\n")
    section = render(args, collect, bench, seconds)
    print(section)
    if args.out:
        write_section(args.out, section, args.section)


if __name__ == "__main__":
    main()
