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
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

import nbtools

TABLE = nbtools.ROOT / "book" / "workshop_timings.md"
PROFILES = ("ci", "full")
# Other work above this share of a run's wall time marks the run as disturbed. A quiet 2-core machine
# here showed up to 0.13 on 15-second runs (system daemons, the notebook's own unreaped subprocesses);
# a concurrent build or test run shows 0.5 and more.
BUSY_FRACTION = 0.25


def book_notebooks() -> list[Path]:
    """The chapter notebooks in reading order (book/_toc.yml)."""
    return [nbtools.ROOT / f"{f}.ipynb" for f in nbtools.toc_files() if f.startswith("chapters/")]


def title(path: Path) -> str:
    """The notebook's first level-1 heading."""
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


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; 0 where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def time_one(path: Path, profile: str, out_dir: Path, env: dict[str, str]) -> dict:
    """Run one notebook in a fresh child process and return its measurement.

    `other_cpu_s` is the CPU time the rest of the machine used meanwhile: well above zero means the
    run competed with other work and its time is too long.
    """
    out = out_dir / profile / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(env["BIGMODEL_CACHE"])
    cache_before = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
    own0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), profile, str(out)],
                          env=env, capture_output=True, text=True)
    own1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    if proc.returncode != 0:
        raise RuntimeError(f"{path.name} ({profile}) failed:\n{proc.stderr[-3000:]}")
    own = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "cpu_s": round(own, 1), "other_cpu_s": round(max(0.0, busy1 - busy0 - own), 1),
            "cache_before": cache_before}


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
        f"内存 {info['memory_gib']} GiB，Python {info['python']}，{info['processor']}，"
        f"无 GPU；测量日期 {info['date']}。"
        "每个 notebook 在独立进程中按书中顺序运行，模型缓存开始时为空。",
        "",
        "| 笔记本 | 内容 | `ci` 用时（分钟） | `full` 用时（分钟） | `full` 内存峰值（MiB） |",
        "|:--|:--|--:|--:|--:|",
    ]
    def cell(m: dict) -> str:  # * marks a run that shared the CPUs with other work (its time is too long)
        busy = m.get("other_cpu_s", 0) > BUSY_FRACTION * m["seconds"]
        return minutes(m["seconds"]) + ("\\*" if busy else "")

    for r in rows:
        lines.append(f"| `{r['notebook']}` | {r['title']} | {cell(r['ci'])} | "
                     f"{cell(r['full'])} | {r['full']['peak_mib']:,} |")
    total = {p: sum(r[p]["seconds"] for r in rows) for p in PROFILES}
    peak = max(r["full"]["peak_mib"] for r in rows)
    lines.append(f"| **合计** | | **{minutes(total['ci'])}** | **{minutes(total['full'])}** | **{peak:,}**（最大） |")
    if any("\\*" in line for line in lines):
        lines += ["", f"\\* 计时期间其他程序占用的 CPU 时间超过了这段墙钟时间的 {BUSY_FRACTION:.0%}，这个时间偏长。"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("NOTEBOOK", "PROFILE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=nbtools.ROOT / "build" / "timings",
                        help="scratch folder for the executed copies and the empty caches (default build/timings)")
    parser.add_argument("--table", type=Path, default=TABLE, help="where to write the Markdown table")
    parser.add_argument("--profile", choices=PROFILES, action="append",
                        help="time only this profile and take the other from the last run's timings.json")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the table from the last run's timings.json without running anything")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                        help="re-time just these notebooks (file names), each from an empty cache, keeping the "
                             "last run's other numbers; refused for a notebook that found models in the cache "
                             "unless --prime supplies them")
    parser.add_argument("--prime", nargs="+", metavar="ENTRY", default=[],
                        help="with --only: cache entries (e.g. sentiment/gpt-full) copied from the live model cache "
                             "into the empty cache before each run, standing in for what the earlier notebooks "
                             "leave there in a book-order run")
    args = parser.parse_args(argv)
    if args.child:
        nb, profile, out = args.child
        print(json.dumps(run_child(Path(nb), profile, Path(out))))
        return 0

    if args.render_only:
        data = json.loads((args.out / "timings.json").read_text(encoding="utf-8"))
        write_table(args.table, render(data["notebooks"], data["machine"]))
        return 0
    notebooks = book_notebooks()
    rows = [{"notebook": p.name, "title": title(p)} for p in notebooks]
    profiles = args.profile or list(PROFILES)
    only = set(args.only or [])
    if unknown := only - {p.name for p in notebooks}:
        raise SystemExit(f"not chapter notebooks of the book: {sorted(unknown)}")
    primed = prime_sources(args.prime, only)
    if set(profiles) != set(PROFILES) or only:
        last = previous_timings(args.out / "timings.json", args.table)
        previous = {r["notebook"]: r for r in last}
        missing = [r["notebook"] for r in rows if r["notebook"] not in previous]
        if set(missing) - only or (missing and set(profiles) != set(PROFILES)):
            raise SystemExit(f"no earlier timing for {missing}: time them with --only in every profile")
        for row in rows:
            if row["notebook"] in missing:  # a notebook new to the book: timed below in every profile
                continue
            row.update({p: previous[row["notebook"]][p] for p in PROFILES})
            for p in profiles:
                found = set(previous.get(row["notebook"], {}).get(p, {}).get("cache_before", [])) - {"registry"}
                if row["notebook"] in only and (missing_entries := found - {e.split("/")[0] for e in primed}):
                    raise SystemExit(f"{row['notebook']} ({p}) used models an earlier notebook cached "
                                     f"({sorted(missing_entries)}): supply them with --prime or re-time the "
                                     "whole profile")
    for profile in profiles:
        cache = args.out / f"cache-{profile}"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        env = dict(os.environ, BIGMODEL_CACHE=str(cache), BIGMODEL_REGISTRY=str(cache / "registry"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        for path, row in zip(notebooks, rows):
            if only and path.name not in only:
                continue
            if only:  # each from an empty cache (plus what --prime copies), as it met it in the full run
                shutil.rmtree(cache)
                cache.mkdir()
                for entry, source in primed.items():
                    shutil.copytree(source, cache / entry)
            row[profile] = time_one(path, profile, args.out, env)
            r = row[profile]
            print(f"{profile:4s} {path.name}: {r['seconds']:.1f} s, peak {r['peak_mib']:,} MiB, "
                  f"other work on the machine meanwhile {r['other_cpu_s']:.0f} CPU s", flush=True)
    info = machine()
    (args.out / "timings.json").write_text(json.dumps({"machine": info, "notebooks": rows}, ensure_ascii=False,
                                                      indent=1), encoding="utf-8")
    write_table(args.table, render(rows, info))
    return 0


_ROW = re.compile(r"^\| `(?P<nb>[\w.]+\.ipynb)` \| (?P<title>.+?) \| (?P<ci>[\d.]+)(?P<ci_busy>\\\*)? \| "
                  r"(?P<full>[\d.]+)(?P<full_busy>\\\*)? \| (?P<peak>[\d,]+) \|$", re.MULTILINE)


def previous_timings(json_path: Path, table: Path) -> list[dict]:
    """The last run's rows: from its timings.json, or, on a machine without it, read back from the committed
    table (minutes to seconds; which models each run found cached is not in the table and counts as none)."""
    if json_path.is_file():
        return json.loads(json_path.read_text(encoding="utf-8"))["notebooks"]
    rows = []
    for m in _ROW.finditer(table.read_text(encoding="utf-8")):
        def measured(col: str, peak: int) -> dict:
            seconds = float(m[col]) * 60
            return {"seconds": seconds, "peak_mib": peak, "other_cpu_s": seconds if m[f"{col}_busy"] else 0.0,
                    "cache_before": []}
        rows.append({"notebook": m["nb"], "title": m["title"], "ci": measured("ci", 0),
                     "full": measured("full", int(m["peak"].replace(",", "")))})
    return rows


def prime_sources(entries: list[str], only: set[str]) -> dict[str, Path]:
    """Check the --prime entries against the live model cache: entry -> the folder to copy."""
    if not entries:
        return {}
    if not only:
        raise SystemExit("--prime only applies to notebooks re-timed with --only")
    from bigmodel_course.utils import cache_dir

    live = cache_dir()
    sources = {}
    for entry in entries:
        source = live / entry
        if Path(entry).is_absolute() or ".." in Path(entry).parts or not source.is_dir():
            raise SystemExit(f"--prime {entry}: no such entry in the model cache {live}")
        sources[entry] = source
    return sources


def write_table(path: Path, text: str) -> None:
    """Replace the table file atomically."""
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(nbtools.ROOT) if path.is_relative_to(nbtools.ROOT) else path}")


if __name__ == "__main__":
    sys.exit(main())
