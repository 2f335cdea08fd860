"""Re-run chapter notebooks with the `full` profile and store their outputs (make notebooks)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbtools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapters/*.ipynb")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or nbtools.chapter_notebooks()
    for path in paths:
        if not path.exists():
            print(f"no such notebook: {path}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            nb = nbtools.execute(path, "full", Path(tmp) / path.name)
        seconds = time.perf_counter() - start
        nbtools.clean_metadata(nb)
        nbtools.coalesce_streams(nb)
        # the run time and machine travel with the outputs they produced (the workshop timing table reads them)
        nb.metadata[nbtools.META_KEY] = {"code_sha256": nbtools.code_hash(nb), "profile": "full",
                                         "seconds": round(seconds, 1), "cpus": os.cpu_count()}
        nbtools.write_atomic(nb, path)
        print(f"{path.relative_to(nbtools.ROOT)}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
