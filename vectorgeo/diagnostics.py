"""The training diagnostics figure: loss curves, a PCA of validation embeddings, per-dimension spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vectorgeo.training import participation_ratio

__all__ = ["diagnostics_figure"]


def diagnostics_figure(
    history: dict, embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path
) -> Path:
    """Write a three-panel PNG: loss curves, PCA of held-out embeddings, per-dimension std.

    Args:
        history: From :func:`train_encoder` (``loss``, ``val_loss``, ``best_epoch``).
        embeddings: float ``(N, D)`` held-out embeddings.
        labels: int ``(N,)`` class index per embedding (e.g. the patch's dominant class).
        class_names: Names indexed by class index.
        path: Output ``.png``.

    Returns:
        The PNG path.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emb = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), constrained_layout=True, width_ratios=[1, 1.35, 1])
    ax = axes[0]
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], "o-", label="train")
    ax.plot(epochs, history["val_loss"], "s-", label="held-out")
    if "best_epoch" in history:
        ax.axvline(history["best_epoch"], color="grey", ls="--", lw=1, label=f"best (epoch {history['best_epoch']})")
    ax.set(
        title=f"Training loss ({history.get('params', {}).get('objective', 'triplet')})", xlabel="epoch", ylabel="loss"
    )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    ax = axes[1]
    centred = emb - emb.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    xy = np.zeros((len(emb), 2))
    xy[:, : min(2, len(vt))] = centred @ vt[:2].T  # a single held-out pair has one component
    share = sing[:2] ** 2 / max(float((sing**2).sum()), 1e-30)
    present, counts = np.unique(labels, return_counts=True)
    shown = present[np.argsort(-counts)][:10]  # the 10 commonest classes get colours; the rest are grey
    rest = ~np.isin(labels, shown)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=6, c="lightgrey", label="other" if rest.any() else None)
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(shown):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(i), label=class_names[int(c)][:28])
    pc2 = f"PC2 ({share[1]:.0%})" if len(share) > 1 else "PC2"
    ax.set(title="Validation embeddings, PCA (colour: dominant class)", xlabel=f"PC1 ({share[0]:.0%})", ylabel=pc2)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax = axes[2]
    std = emb.std(axis=0)
    ax.bar(np.arange(len(std)), std, color=np.where(std < 0.01, "tab:red", "tab:blue"))
    effective = participation_ratio(emb)
    shown = "n/a" if effective is None else f"{effective:.1f}"
    title = f"Per-dimension std (red: inactive)\neffective dims {shown} of {len(std)}"
    collapsed = effective is not None and effective < 2
    ax.set(title=title + (" - COLLAPSED" if collapsed else ""), xlabel="embedding dimension", ylabel="std")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
