"""The book's figure style: one CJK font, one palette, attention heatmaps, confusion matrices, image mosaics, tables."""

from __future__ import annotations

import dataclasses
import html
from importlib.resources import as_file, files

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager

CJK_FAMILY = "Noto Sans CJK SC"
_STYLE_DONE = False


def register_cjk_font() -> str:
    """Register the Noto Sans CJK font shipped by `noto-cjk-sans-otc` and return its family name."""
    with as_file(files("noto_cjk_sans_otc") / "NotoSansCJK-Regular.ttc") as path:
        if not path.exists():
            raise FileNotFoundError(f"CJK font not found at {path}; reinstall noto-cjk-sans-otc")
        font_manager.fontManager.addfont(str(path))
    return CJK_FAMILY


def use_house_style() -> None:
    """Apply the book's matplotlib style (CJK font, sizes, grid); safe to call many times."""
    global _STYLE_DONE
    if _STYLE_DONE:
        return
    family = register_cjk_font()
    matplotlib.rcParams.update(
        {
            "font.family": "sans-serif",
            "font.sans-serif": [family, "DejaVu Sans"],
            "axes.unicode_minus": False,
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "figure.figsize": (6.4, 4.0),
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "image.cmap": "viridis",
        }
    )
    _STYLE_DONE = True


def plot_attention(
    weights,
    x_labels: list[str] | None = None,
    y_labels: list[str] | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
    annotate: bool = False,
    colorbar: bool = True,
    vmin: float = 0.0,
    vmax: float | None = None,
    xlabel: str = "键 (key)",
    ylabel: str = "查询 (query)",
) -> plt.Axes:
    """Heatmap of an attention matrix (queries as rows, keys as columns); pass vmin/vmax to share a scale."""
    use_house_style()
    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"attention weights must be 2-D (queries, keys), got shape {w.shape}")
    if x_labels is not None and len(x_labels) != w.shape[1]:
        raise ValueError(f"{len(x_labels)} key labels for {w.shape[1]} keys")
    if y_labels is not None and len(y_labels) != w.shape[0]:
        raise ValueError(f"{len(y_labels)} query labels for {w.shape[0]} queries")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * w.shape[1] + 2, 0.45 * w.shape[0] + 1.2))
    vmax = max(float(w.max()), 1e-9) if vmax is None else vmax
    im = ax.imshow(w, cmap="Blues", vmin=vmin, vmax=vmax, aspect="auto")
    ax.grid(False)
    xl = [str(t) for t in x_labels] if x_labels is not None else [str(j) for j in range(w.shape[1])]
    ax.set_xticks(range(w.shape[1]), xl, rotation=90 if max(map(len, xl), default=0) > 2 else 0)
    ax.set_yticks(range(w.shape[0]), y_labels if y_labels is not None else range(w.shape[0]))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if annotate:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if w[i, j] > vmin + 0.6 * (vmax - vmin) else "black")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_confusion_matrix(cm, labels: list[str], ax: plt.Axes | None = None, title: str | None = None) -> plt.Axes:
    """Confusion matrix (rows = true class, columns = predicted) with counts written in each cell."""
    use_house_style()
    m = np.asarray(cm.detach().cpu() if hasattr(cm, "detach") else cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square 2-D, got shape {m.shape}")
    if len(labels) != m.shape[0]:
        raise ValueError(f"{len(labels)} labels for {m.shape[0]} classes")
    if ax is None:
        side = 0.5 * m.shape[0] + 2
        _, ax = plt.subplots(figsize=(side + 0.8, side))
    ax.imshow(m, cmap="Blues")
    ax.grid(False)
    ax.set_xticks(range(m.shape[1]), labels)
    ax.set_yticks(range(m.shape[0]), labels)
    ax.set_xlabel("预测类别")
    ax.set_ylabel("真实类别")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:g}", ha="center", va="center", fontsize=9,
                    color="white" if m[i, j] > 0.6 * m.max() else "black")
    if title:
        ax.set_title(title)
    return ax


def image_mosaic(images, per_row: int, gap: int = 1) -> np.ndarray:
    """(N, H, W) images laid out `per_row` to a row with `gap` NaN pixels between them (NaN draws as background
    with `mosaic_cmap`); the last row is padded with NaN."""
    x = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=float)
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) array, got shape {x.shape}")
    if not isinstance(per_row, int) or per_row <= 0:
        raise ValueError(f"per_row must be a positive int, got {per_row!r}")
    n, h, w = x.shape
    rows = -(-n // per_row)
    out = np.full((rows * (h + gap) - gap, per_row * (w + gap) - gap), np.nan)
    for i, img in enumerate(x):
        r, c = divmod(i, per_row)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
    return out


def mosaic_cmap(name: str = "gray_r") -> matplotlib.colors.Colormap:
    """A copy of colormap `name` that draws NaN (gaps, hidden pixels) as white."""
    return plt.get_cmap(name).with_extremes(bad="white")


class Table:
    """A small table that shows as HTML in notebooks and the book, and as Markdown in plain text."""

    def __init__(self, headers: list, rows: list[list]) -> None:
        self.headers = [str(h) for h in headers]
        self.rows = [[str(x) for x in row] for row in rows]
        bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.headers)]
        if bad:
            raise ValueError(f"row {bad[0]} has {len(self.rows[bad[0]])} cells, the header {len(self.headers)}")

    def __repr__(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join(["---"] * len(self.headers)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in row) + "</tr>" for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def config_table(configs: dict[str, object]) -> Table:
    """Dataclass configs side by side, one row per field (`configs`: column title -> dataclass instance), so a
    notebook shows its settings as a table instead of a long repr. Fields missing from a config show as —."""
    if not configs:
        raise ValueError("no configs to show")
    for title, cfg in configs.items():
        if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
            raise ValueError(f"{title!r} is not a dataclass instance: {type(cfg).__name__}")
    names: list[str] = []
    for cfg in configs.values():
        names += [f.name for f in dataclasses.fields(cfg) if f.name not in names]

    def show(cfg, name: str) -> str:
        if not hasattr(cfg, name):
            return "—"
        value = getattr(cfg, name)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return Table(["字段", *configs], [[name, *(show(cfg, name) for cfg in configs.values())] for name in names])
