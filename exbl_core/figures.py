"""Overlays, the paper's Figure 3 grid and Table 1, for the CLI, the app and reports."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

FIGURE3_COLUMNS = ("(A) Input", "(B) GradCAM unrefined", "(C) Overlay unrefined", "(D) GradCAM eXBL", "(E) Overlay eXBL")


def colorize(cam: torch.Tensor | np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A CAM in [0, 1] as an RGB float image [H,W,3]."""
    cam = np.asarray(cam, dtype=np.float32)
    return matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3].astype(np.float32)


def overlay(image: torch.Tensor | np.ndarray, cam: torch.Tensor | np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a grayscale image [H,W] in [0, 1] with its coloured CAM: uint8 RGB [H,W,3]."""
    gray = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    out = (1 - alpha) * rgb + alpha * colorize(cam, cmap)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def mask_outline(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask, for drawing lung outlines."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


EXEMPLAR_COLUMNS = ("Input", "GradCAM (unrefined model)", "Overlay")


def cam_grid(
    images: torch.Tensor,
    cam_sets: list[torch.Tensor],
    titles: tuple[str, ...],
    row_labels: list[str] | None = None,
    alpha: float = 0.45,
) -> plt.Figure:
    """One row per image: the input, then a CAM and its overlay for each set in ``cam_sets``.

    ``images`` are [N,1,H,W] or [N,H,W] in [0, 1]; each CAM set is [N,H,W].
    """
    if images.dim() == 4:
        images = images[:, 0]
    n, cols = len(images), 1 + 2 * len(cam_sets)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n + 0.4), squeeze=False)
    for r in range(n):
        img = images[r].numpy()
        panels = [img]
        for cams in cam_sets:
            cam = cams[r].numpy()
            panels += [cam, overlay(img, cam, alpha)]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if panel.ndim == 2:
                ax.imshow(panel, cmap="gray" if c == 0 else "jet", vmin=0, vmax=1)
            else:
                ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=11)
        if row_labels:  # upright and as large as the titles: rotated 8 pt labels were unreadable at 100% zoom
            axes[r, 0].set_ylabel(row_labels[r], fontsize=11, rotation=0, ha="right", va="center", labelpad=6)
    fig.tight_layout()
    return fig


def figure3(
    images: torch.Tensor,
    cams_before: torch.Tensor,
    cams_after: torch.Tensor,
    row_labels: list[str] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
) -> plt.Figure:
    """The paper's Figure 3: one row per image, columns (A) input to (E) overlay after eXBL.

    ``title`` states how the rows were chosen, so that a reader knows what the figure shows.
    """
    fig = cam_grid(images, [cams_before, cams_after], FIGURE3_COLUMNS, row_labels, alpha)
    if title:
        fig.suptitle(title, fontsize=12)
        fig.tight_layout()
    return fig


def figure_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes and free it (the app and the run writer both need bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


TABLE1_ROWS = (
    ("Accuracy", "val", "accuracy"),
    ("Accuracy", "test", "accuracy"),
    ("Activation Precision", "val", "activation_precision"),
    ("Activation Precision", "test", "activation_precision"),
    ("Accuracy", "shortcut_test", "accuracy"),
    ("Activation Precision", "shortcut_test", "activation_precision"),
)


def table1_rows(metrics: dict) -> list[dict]:
    """Table 1 as rows: metric, split, unrefined, eXBL, delta. Shortcut rows only when present."""
    rows = []
    for name, split, key in TABLE1_ROWS:
        before = metrics.get("unrefined", {}).get(split)
        after = metrics.get("refined", {}).get(split)
        if before is None:
            continue
        b = before[key]
        a = None if after is None else after[key]
        rows.append({"metric": name, "split": split, "unrefined": b, "exbl": a, "delta": None if a is None else a - b})
    return rows


def table1_csv(rows: list[dict]) -> str:
    """Table 1 as CSV text."""
    lines = ["metric,split,unrefined,exbl,delta"]
    for r in rows:
        cells = [r["metric"], r["split"], *(_fmt(r[k]) for k in ("unrefined", "exbl", "delta"))]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def table1_markdown(rows: list[dict]) -> str:
    """Table 1 as a Markdown table, for the terminal and the README."""
    lines = ["| metric | split | unrefined | eXBL | delta |", "|---|---|---|---|---|"]
    for r in rows:
        delta = "" if r["delta"] is None else f"{r['delta']:+.3f}"
        lines.append(f"| {r['metric']} | {r['split']} | {_fmt(r['unrefined'])} | {_fmt(r['exbl'])} | {delta} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
