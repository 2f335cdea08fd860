"""Time every chapter notebook in the `ci` and `full` profiles and write the workshop timing table (make timings).

Each notebook runs in its own child process (papermill, as `make notebooks` runs it) into a scratch
folder, in book order, with an empty model cache per profile, the way a participant meets them on a
fresh laptop: the first notebook that needs a pre-trained model pays for training it. The committed
notebooks and their outputs are never touched. The table (wall time and the kernel's peak memory)
is written to book/workshop_timings.md, which book/workshop.md includes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbtools  # noqa: E402

TABLE = nbtools.ROOT / "book" / "workshop_timings.md"
PROFILES = ("ci", "full")


def book_notebooks() -> list[Path]:
    """The chapter notebooks in reading order (book/_toc.yml)."""
    return [nbtools.ROOT / f"{f}.ipynb" for f in nbtools.toc_files() if f.startswith("chapters/")]


def title(path: Path) -> str:
    """The notebook's first level-1 heading."""
    import nbformat

    heading = nbtools.title(nbformat.read(str(path), as_version=4))
    if not heading:
        raise ValueError(f"{path.name}: no level-1 heading to name it by")
    return heading


def run_child(path: Path, profile: str, out: Path) -> dict:
    """Execute one notebook (inside the child process); report its seconds and the kernel's peak memory."""
    start = time.perf_counter()
    nbtools.execute(path, profile, out)
    seconds = time.perf_counter() - start
    # ru_maxrss of waited-for descendants: the largest is the kernel (KiB on Linux)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(seconds, 1), "peak_mib": round(peak_kib / 1024)}


def time_one(path: Path, profile: str, out_dir: Path, env: dict[str, str]) -> dict:
    """Run one notebook in a fresh child process and return its measurement."""
    out = out_dir / profile / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), profile, str(out)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{path.name} ({profile}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """What the times were measured on."""
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.machine(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "date": dt.date.today().isoformat()}


def render(rows: list[dict], info: dict) -> str:
    """The Markdown table for book/workshop.md (the numbers only; the prose around it lives there)."""
    def minutes(s: float) -> str:
        return f"{s / 60:.1f}" if s >= 60 else f"{s / 60:.2f}"

    lines = [
        "<!-- Written by `make timings` (book/tools/time_notebooks.py); do not edit by hand. -->",
        "",
        f"测量环境：{info['cpus']} 个 CPU 核心（PyTorch {info['torch']} 使用 {info['torch_threads']} 个线程），"
        f"内存 {info['memory_gib']} GiB，Python {info['python']}，{info['processor']}，无 GPU；测量日期 {info['date']}。"
        "每个 notebook 在独立进程中按书中顺序运行，模型缓存开始时为空。",
        "",
        "| 笔记本 | 内容 | `ci` 用时（分钟） | `full` 用时（分钟） | `full` 内存峰值（MiB） |",
        "|:--|:--|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| `{r['notebook']}` | {r['title']} | {minutes(r['ci']['seconds'])} | "
                     f"{minutes(r['full']['seconds'])} | {r['full']['peak_mib']:,} |")
    total = {p: sum(r[p]["seconds"] for r in rows) for p in PROFILES}
    peak = max(r["full"]["peak_mib"] for r in rows)
    lines.append(f"| **合计** | | **{minutes(total['ci'])}** | **{minutes(total['full'])}** | **{peak:,}**（最大） |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("NOTEBOOK", "PROFILE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=nbtools.ROOT / "build" / "timings",
                        help="scratch folder for the executed copies and the empty caches (default build/timings)")
    parser.add_argument("--table", type=Path, default=TABLE, help="where to write the Markdown table")
    parser.add_argument("--profile", choices=PROFILES, action="append",
                        help="time only this profile and take the other from the last run's timings.json")
    args = parser.parse_args(argv)
    if args.child:
        nb, profile, out = args.child
        print(json.dumps(run_child(Path(nb), profile, Path(out))))
        return 0

    notebooks = book_notebooks()
    rows = [{"notebook": p.name, "title": title(p)} for p in notebooks]
    profiles = args.profile or list(PROFILES)
    if set(profiles) != set(PROFILES):
        last = json.loads((args.out / "timings.json").read_text(encoding="utf-8"))["notebooks"]
        previous = {r["notebook"]: r for r in last}
        missing = [r["notebook"] for r in rows if r["notebook"] not in previous]
        if missing:
            raise SystemExit(f"no earlier timing for {missing}: run every profile")
        for row in rows:
            row.update({p: previous[row["notebook"]][p] for p in PROFILES if p not in profiles})
    for profile in profiles:
        cache = args.out / f"cache-{profile}"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        env = dict(os.environ, BIGMODEL_CACHE=str(cache), BIGMODEL_REGISTRY=str(cache / "registry"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        for path, row in zip(notebooks, rows):
            row[profile] = time_one(path, profile, args.out, env)
            print(f"{profile:4s} {path.name}: {row[profile]['seconds']:.1f} s, "
                  f"peak {row[profile]['peak_mib']:,} MiB", flush=True)
    info = machine()
    (args.out / "timings.json").write_text(json.dumps({"machine": info, "notebooks": rows}, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
    text = render(rows, info)
    tmp = args.table.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.table)
    print(f"wrote {args.table.relative_to(nbtools.ROOT) if args.table.is_relative_to(nbtools.ROOT) else args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
