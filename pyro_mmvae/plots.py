"""Figures people look at: latent spaces, image grids, 2-D densities.

Every function writes a PNG to ``path`` (parent folders are created) and returns the path.
Matplotlib runs on the non-interactive Agg backend, so this works on machines without a screen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

CLASS_CMAPS = ("Blues", "Reds", "Greens", "Purples", "Oranges", "Greys")


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def to_2d(z: torch.Tensor) -> np.ndarray:
    """``(N, D)`` → ``(N, 2)``: identity for D = 2, the first two principal components otherwise."""
    z = torch.as_tensor(z).detach().cpu().double()
    if z.shape[-1] == 2:
        return z.numpy()
    if z.shape[-1] == 1:
        return torch.cat([z, torch.zeros_like(z)], -1).numpy()
    zc = z - z.mean(0)
    _, _, v = torch.linalg.svd(zc, full_matrices=False)
    return (zc @ v[:2].T).numpy()


def latent_scatter(
    z: torch.Tensor,
    classes: torch.Tensor,
    path,
    intensity: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "latent space",
    ax_labels=("z1", "z2"),
    cmaps: Sequence[str] = CLASS_CMAPS,
) -> Path:
    """Scatter of latent codes ``z (N, D)`` coloured by class, colour intensity by ``intensity (N,)``."""
    xy = to_2d(z)
    classes = torch.as_tensor(classes).cpu().numpy()
    if intensity is None:
        shade = np.full(len(xy), 0.75)
    else:
        v = torch.as_tensor(intensity).float().cpu().numpy()
        shade = 0.3 + 0.7 * (v - v.min()) / max(v.max() - v.min(), 1e-12)
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, c in enumerate(np.unique(classes)):
        sel = classes == c
        cmap = plt.get_cmap(cmaps[i % len(cmaps)])
        label = class_names[int(c)] if class_names is not None else str(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], c=cmap(shade[sel]), s=6, label=label, linewidths=0)
    ax.legend(markerscale=3, loc="best")
    ax.set_xlabel(ax_labels[0])
    ax.set_ylabel(ax_labels[1])
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def image_grid(rows: Mapping[str, torch.Tensor], path, title: str | None = None, max_cols: int = 12) -> Path:
    """One labelled row per entry of ``rows``; each value is ``(N, C, H, W)`` with values in [0, 1]."""
    rows = {k: torch.as_tensor(v).detach().float().cpu()[:max_cols] for k, v in rows.items()}
    ncols = max(v.shape[0] for v in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < imgs.shape[0]:
                img = imgs[c]
                img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
                ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def density_panels(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path,
    background: np.ndarray | None = None,
    background_classes: np.ndarray | None = None,
    images: Mapping[str, torch.Tensor] | None = None,
    title: str | None = None,
    cmaps: Sequence[str] = ("Reds", "Blues"),
) -> Path:
    """Side-by-side 2-D densities: each panel is ``(X, Y, density)`` on a grid (``plt.contour`` inputs).

    ``background`` ``(N, 2)`` draws latent codes behind each density, coloured by ``background_classes``;
    ``images`` (same keys as ``panels``) puts a strip of images ``(K, C, H, W)`` under each panel.
    """
    rows = 2 if images else 1
    fig, axes = plt.subplots(
        rows,
        len(panels),
        figsize=(4.2 * len(panels), 4.2 + 1.2 * (rows - 1)),
        squeeze=False,
        gridspec_kw={"height_ratios": [4, 1][:rows]},
    )
    for col, (label, (gx, gy, dens)) in enumerate(panels.items()):
        ax = axes[0, col]
        if background is not None:
            cls = background_classes if background_classes is not None else np.zeros(len(background))
            for i, c in enumerate(np.unique(cls)):
                sel = cls == c
                color = plt.get_cmap(cmaps[i % len(cmaps)])(0.5)
                ax.scatter(background[sel, 0], background[sel, 1], s=2, color=color, alpha=0.25, linewidths=0)
        ax.contour(gx, gy, dens, levels=8, cmap="viridis")
        ax.set_title(label, fontsize=10)
        ax.set_aspect("equal")
        if images:
            strip = torch.as_tensor(images[label]).detach().float().cpu()
            strip = strip[:, 0] if strip.dim() == 4 else strip
            axes[1, col].imshow(torch.cat(list(strip.clamp(0, 1)), dim=-1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[1, col].axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
