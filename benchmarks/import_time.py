"""Start-up: seconds to `import medfed.experiment` in a fresh interpreter (issue 16, part 4).

Each figure is the median of --repeats subprocess imports (torch included, as a run pays it); with
--before DIR another checkout (e.g. `git archive <commit> | tar -x -C DIR`) is measured too,
alternating with this one so that both see the same machine load. Also lists which heavy
libraries each import left in sys.modules.

    python benchmarks/import_time.py [--repeats 5] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("monai", "opacus", "sklearn", "scipy", "networkx", "matplotlib", "pydicom", "nibabel")
CODE = ("import json, sys, time; t = time.perf_counter(); import medfed.experiment; "
        "s = time.perf_counter() - t; "
        f"print(json.dumps([s, [m for m in {HEAVY!r} if m in sys.modules]]))")


def one_import(code: Path) -> tuple[float, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    # cwd: `python -c` puts the working folder first on sys.path, before PYTHONPATH
    out = subprocess.run([sys.executable, "-c", CODE], env=env, cwd=code, check=True,
                         capture_output=True, text=True).stdout
    seconds, loaded = json.loads(out.strip().splitlines()[-1])
    return seconds, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout to measure too")
    args = parser.parse_args()
    trees = ({"before": args.before.resolve()} if args.before else {}) | {"after": REPO}
    times: dict[str, list[float]] = {name: [] for name in trees}
    loaded: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, code in trees.items():
            seconds, loaded[name] = one_import(code)
            times[name].append(seconds)
    print("| tree | median s | runs (s) | heavy libraries loaded |")
    print("|---|---|---|---|")
    for name in trees:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {statistics.median(times[name]):.2f} | {runs} | "
              f"{', '.join(loaded[name]) or 'none'} |")


if __name__ == "__main__":
    main()
