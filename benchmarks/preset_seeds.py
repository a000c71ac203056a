"""A preset's test accuracy over several seeds: each seed is a whole `lenet train --preset P
--seed S` process (start-up included in its wall time); prints every seed, then mean ± std.

    python benchmarks/preset_seeds.py --preset quick --seeds 0 1 2 3 4
    python benchmarks/preset_seeds.py --preset paper --seeds 0 1 2 --parallel 2 --threads 1 --out runs/seeds
    python benchmarks/preset_seeds.py --preset quick --seeds 0 1 2 --json

With `--parallel 2 --threads 1` two seeds train at once, one core each: more runs per hour on a
2-core machine, but each run's wall time is then that of a shared machine. A seed whose run
folder already holds metrics.json is read, not trained again (delete the folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def lenet_command() -> list[str]:
    exe = Path(sys.executable).with_name("lenet")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lenet"]


def run_seed(preset: str, seed: int, out: Path, threads: int, extra: list[str]) -> dict:
    folder = out / f"{preset}-seed{seed}"
    metrics_file = folder / "metrics.json"
    if metrics_file.exists():
        return {**json.loads(metrics_file.read_text()), "wall_seconds": None, "reused": True}
    cmd = [*lenet_command(), "train", "--preset", preset, "--seed", str(seed), "--out", str(folder),
           "--overwrite", "--no-progress", *(["--threads", str(threads)] if threads else []), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: `{' '.join(cmd)}` failed: {done.stderr.strip().splitlines()[-1:]}")
    (folder / "train.log").write_text(done.stderr)
    return {**json.loads(metrics_file.read_text()), "wall_seconds": round(wall, 2), "reused": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="seeds trained at once")
    p.add_argument("--threads", type=int, default=0, help="--threads of each run (0: lenet's default)")
    p.add_argument("--out", default="runs/seeds", help="run folders go to OUT/PRESET-seedS")
    p.add_argument("--json", action="store_true")
    args, extra = p.parse_known_args()  # anything else goes to `lenet train` (e.g. --epochs 1)
    if shutil.which("lenet") is None and not Path(sys.executable).with_name("lenet").exists():
        print("note: running `python -m lenet`", file=sys.stderr)
    out = Path(args.out)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda s: run_seed(args.preset, s, out, args.threads, extra), args.seeds))
    accs = [100 * r["test_accuracy"] for r in results]
    summary = {"preset": args.preset, "seeds": args.seeds, "test_accuracy": accs,
               "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               "min": min(accs), "fit_seconds": [r["seconds"] for r in results],
               "wall_seconds": [r["wall_seconds"] for r in results], "parallel": args.parallel,
               "threads": args.threads, "extra_args": extra}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for seed, r, acc in zip(args.seeds, results, accs):
        wall = "reused" if r["reused"] else f"{r['wall_seconds']:.1f} s wall"
        print(f"{args.preset} seed {seed}: {acc:.2f}%  (fit {r['seconds']:.1f} s, {wall})")
    print(f"{args.preset}: {summary['mean']:.2f} ± {summary['std']:.2f}% over {len(accs)} seeds "
          f"(min {summary['min']:.2f}%)")


if __name__ == "__main__":
    main()
