"""Is the service slower than at another commit? `bigmodel-course bench serve` run alternately on this working tree
and on a git reference (checked out in a temporary worktree), in the same session, rounds interleaved in ABBA
order so drift in the machine's speed hits both alike; prints each round, the median ratios (this tree /
reference) and their range.

    .venv/bin/python tools/compare_serve.py HEAD~3 --rounds 5 --requests 1000
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms, ([\d.]+) requests/s, (\d+) errors")


def bench(tree: Path, requests: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, requests/s) of one `bench serve` run with the package of `tree` (server and client)."""
    out = subprocess.run([sys.executable, "-m", "bigmodel_course.cli", "bench", "serve", "--requests", str(requests)],
                         cwd=tree, capture_output=True, text=True, check=True).stdout
    match = LINE.search(out)
    if match is None or int(match.group(4)):
        raise RuntimeError(f"unexpected bench output in {tree}:\n{out}")
    return float(match.group(1)), float(match.group(2)), float(match.group(3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="git reference to compare with, e.g. HEAD~1 or main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compare-serve-") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), args.ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            ratios = []
            for i in range(args.rounds):
                if i % 2 == 0:  # ABBA order: a drift in the machine's speed within a round cancels out
                    ours, theirs = bench(ROOT, args.requests), bench(ref_tree, args.requests)
                else:
                    theirs, ours = bench(ref_tree, args.requests), bench(ROOT, args.requests)
                ratio = (ours[0] / theirs[0], ours[1] / theirs[1], ours[2] / theirs[2])
                ratios.append(ratio)
                print(f"round {i + 1}: this tree p50 {ours[0]:.1f} ms, {ours[2]:.0f} req/s | {args.ref} p50 "
                      f"{theirs[0]:.1f} ms, {theirs[2]:.0f} req/s | p50 ratio {ratio[0]:.3f}, throughput ratio "
                      f"{ratio[2]:.3f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, check=False)
    p50, p99, rps = (statistics.median(r[k] for r in ratios) for k in range(3))
    low, high = min(r[2] for r in ratios), max(r[2] for r in ratios)
    print(f"median ratios (this tree / {args.ref}) over {args.rounds} rounds: p50 latency {p50:.3f}, "
          f"p99 latency {p99:.3f}, throughput {rps:.3f} (rounds from {low:.3f} to {high:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
