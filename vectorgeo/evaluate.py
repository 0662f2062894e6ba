"""Judge land-cover embeddings against simple baselines, with numpy alone.

The caller picks cells held out from training and hands over their land-cover
patches (uint8 class indices, ``(N, P, P)``) and their embeddings (float32 unit
vectors, ``(N, D)``). Two questions are asked of every set of vectors:

- **Retrieval**: do a cell's k nearest neighbours (cosine) have the same
  land-cover composition? Measured as the mean Jensen–Shannon divergence
  (base 2, 0..1, lower is better) between class-fraction histograms.
- **Linear probes**: can a ridge regression read the class fractions and two
  landscape-configuration measures (edge density, Shannon diversity) off the
  vectors? Measured as R² on a held-out split (higher is better).

The same questions are asked of three baselines: random vectors, PCA of the
flattened one-hot patch (both at the encoder's dimension) and the raw class
histogram. Everything is vectorised; the only Python loops run over chunks,
classes or output dimensions, never over samples.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from scipy import linalg, sparse

from vectorgeo.errors import InvalidInputError

__all__ = [
    "baseline_vectors",
    "class_fractions",
    "edge_density",
    "evaluate_embeddings",
    "format_report",
    "js_divergence",
    "knn_indices",
    "linear_probe_r2",
    "report_figure",
    "retrieval_jsd",
    "shannon_diversity",
]

logger = logging.getLogger(__name__)

_CHUNK = 4096  # samples per chunk where a step would otherwise hold (N, P*P, ...) temporaries
_METRICS = ("retrieval_jsd", "r2_class_fractions", "r2_edge_density", "r2_shannon")
_METRIC_LABELS = {
    "retrieval_jsd": "retrieval JSD@k (lower is better)",
    "r2_class_fractions": "R² class fractions",
    "r2_edge_density": "R² edge density",
    "r2_shannon": "R² Shannon diversity",
}


# ----------------------------------------------------------------------------- validation


def _check_patches(patches: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[0] == 0:
        raise InvalidInputError(f"patches must have shape (N, H, W) with N >= 1, got {patches.shape}")
    if not np.issubdtype(patches.dtype, np.integer):
        raise InvalidInputError(f"patches must hold integer class indices, got dtype {patches.dtype}")
    if n_classes is not None:
        if n_classes < 1:
            raise InvalidInputError(f"n_classes must be >= 1, got {n_classes}")
        lo, hi = int(patches.min()), int(patches.max())
        if lo < 0 or hi >= n_classes:
            raise InvalidInputError(
                f"patches hold class indices {lo}..{hi} but n_classes is {n_classes}; "
                "drop patches with nodata (255) or pass the legend's n_classes"
            )
    return patches


def _check_vectors(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise InvalidInputError(f"{name} must have shape (N, D) with N, D >= 1, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise InvalidInputError(f"{name} hold NaN or infinite values; check the encoder output")
    return vectors


def _normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows as float32; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1).astype(np.float32)


# ----------------------------------------------------------------------------- patch descriptors


def class_fractions(patches: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each class in each patch.

    Args:
        patches: Integer class indices ``(N, H, W)``, each in ``0..n_classes-1``.
        n_classes: Number of classes ``C`` in the legend.

    Returns:
        float32 ``(N, C)``; each row sums to 1.

    Raises:
        InvalidInputError: for a wrong shape or an index outside ``0..n_classes-1``
            (nodata 255 included).
    """
    if np.ndim(patches) == 3 and np.shape(patches)[0] == 0:
        return np.zeros((0, n_classes), dtype=np.float32)
    patches = _check_patches(patches, n_classes)
    n = patches.shape[0]
    flat = patches.reshape(n, -1)
    out = np.empty((n, n_classes), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        block = flat[start : start + _CHUNK]
        rows = block.shape[0]
        # one bincount for the whole chunk: offset each patch's indices by row * C
        keys = block.astype(np.intp) + (np.arange(rows, dtype=np.intp) * n_classes)[:, None]
        counts = np.bincount(keys.ravel(), minlength=rows * n_classes).reshape(rows, n_classes)
        out[start : start + rows] = counts / flat.shape[1]
    return out


def edge_density(patches: np.ndarray) -> np.ndarray:
    """Share of 4-neighbour pixel pairs whose classes differ.

    Every horizontally and every vertically adjacent pair counts once, so a
    uniform patch scores 0, a checkerboard 1, and stripes one pixel wide 0.5.

    Args:
        patches: Integer class indices ``(N, H, W)`` with ``H * W >= 2``.

    Returns:
        float32 ``(N,)`` in 0..1.
    """
    patches = _check_patches(patches)
    n, h, w = patches.shape
    n_pairs = h * (w - 1) + (h - 1) * w
    if n_pairs == 0:
        raise InvalidInputError(f"patches of {h}x{w} pixels have no adjacent pixel pairs")
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, _CHUNK):
        block = patches[start : start + _CHUNK]
        horizontal = np.count_nonzero(block[:, :, 1:] != block[:, :, :-1], axis=(1, 2))
        vertical = np.count_nonzero(block[:, 1:, :] != block[:, :-1, :], axis=(1, 2))
        out[start : start + block.shape[0]] = (horizontal + vertical) / n_pairs
    return out


def shannon_diversity(fractions: np.ndarray) -> np.ndarray:
    """Shannon diversity ``-sum p ln p`` (nats) of each composition, with ``0 ln 0 = 0``.

    Args:
        fractions: Class fractions ``(N, C)``, rows summing to 1.

    Returns:
        float32 ``(N,)``, 0 for a single class up to ``ln C``.
    """
    p = np.asarray(fractions, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)
    return (-np.sum(p * np.log(safe), axis=-1)).astype(np.float32)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits (0 for identical, 1 for disjoint distributions).

    Both inputs are normalised to sum 1 along their last axis; leading axes
    broadcast against each other.

    Args:
        p: Non-negative weights ``(..., C)``.
        q: Non-negative weights ``(..., C)``.

    Returns:
        float64 array of the broadcast leading shape (0-d for one pair), in 0..1.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape[-1] != q.shape[-1]:
        raise InvalidInputError(f"distributions differ in length: {p.shape[-1]} vs {q.shape[-1]}")
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    m = 0.5 * (p + q)
    safe_m = np.where(m > 0, m, 1.0)  # m == 0 only where p == q == 0, whose terms are 0
    kl_pm = np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / safe_m), 0.0), axis=-1)
    kl_qm = np.sum(np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0) / safe_m), 0.0), axis=-1)
    return np.clip(0.5 * (kl_pm + kl_qm), 0.0, 1.0)


# ----------------------------------------------------------------------------- retrieval


def knn_indices(vectors: np.ndarray, k: int, *, chunk: int = 2048) -> np.ndarray:
    """Exact k nearest neighbours by cosine similarity, each point excluded from its own list.

    Rows are L2-normalised, similarities computed ``chunk`` queries at a time
    (memory ``chunk * N`` float32), and the top k picked with ``argpartition``.

    Args:
        vectors: ``(N, D)`` float vectors (any norm; all-zero rows match nothing better than anything).
        k: Neighbours per point, ``1 <= k <= N - 1``.
        chunk: Queries per matrix product.

    Returns:
        int64 ``(N, k)`` row indices, most similar first; ties are broken arbitrarily.
    """
    vectors = _normalize_rows(_check_vectors(vectors))
    n = vectors.shape[0]
    if not 1 <= k <= n - 1:
        raise InvalidInputError(f"k must lie in 1..N-1 = 1..{n - 1}, got {k}; evaluate more cells or lower k")
    if chunk < 1:
        raise InvalidInputError(f"chunk must be >= 1, got {chunk}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = vectors[start:stop] @ vectors.T
        rows = np.arange(stop - start)
        sims[rows, rows + start] = -np.inf
        top = np.argpartition(sims, n - k, axis=1)[:, n - k :]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def retrieval_jsd(vectors: np.ndarray, fractions: np.ndarray, k: int = 10) -> float:
    """Mean Jensen–Shannon divergence between each query's composition and its k nearest neighbours'.

    Args:
        vectors: ``(N, D)`` vectors that define the neighbours (cosine).
        fractions: ``(N, C)`` class fractions of the same N patches.
        k: Neighbours per query.

    Returns:
        Mean over queries of the mean JSD (bits, 0..1) to their k neighbours; lower is better.
    """
    vectors = _check_vectors(vectors)
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 2 or fractions.shape[0] != vectors.shape[0]:
        raise InvalidInputError(f"fractions must be (N={vectors.shape[0]}, C), got {fractions.shape}")
    neighbours = knn_indices(vectors, k)
    total = 0.0
    for start in range(0, neighbours.shape[0], _CHUNK):
        idx = neighbours[start : start + _CHUNK]
        total += float(js_divergence(fractions[start : start + idx.shape[0], None, :], fractions[idx]).sum())
    return total / neighbours.size


# ----------------------------------------------------------------------------- linear probe


def linear_probe_r2(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    ridge: float = 1e-3,
    groups: np.ndarray | None = None,
) -> float:
    """R² of a ridge regression from features to targets, on a held-out random split.

    Features are standardised with the training split's mean and standard
    deviation; the model is closed-form ridge ``(XᵀX + ridge·I)⁻¹Xᵀy`` on the
    standardised features plus an unpenalised intercept.

    For multi-output targets (class fractions) the result is the
    variance-weighted R², ``1 - sum(SS_res) / sum(SS_tot)`` over all outputs:
    a rare class with tiny test variance weighs little, so it cannot drag
    the score below zero on its own, and constant outputs add nothing.

    Args:
        features: ``(N, F)`` predictors (embeddings).
        targets: ``(N,)`` or ``(N, T)`` values to predict.
        seed: Seed of the train/test permutation (same seed, same split).
        test_fraction: Share of samples held out for scoring, in (0, 1).
        ridge: Non-negative L2 penalty on the standardised coefficients.
        groups: Optional ``(N,)`` group labels (e.g. H3 parent cells): the split keeps
            each group whole, so spatially overlapping samples never sit on both sides.

    Returns:
        R² on the test split (1 is perfect, 0 is no better than the test mean,
        negative is worse); NaN when no output varies in the test split.
    """
    x = np.asarray(_check_vectors(features, "features"), dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n = x.shape[0]
    if y.ndim != 2 or y.shape[0] != n:
        raise InvalidInputError(f"targets must be (N={n},) or (N={n}, T), got {np.shape(targets)}")
    if not np.isfinite(y).all():
        raise InvalidInputError("targets hold NaN or infinite values")
    if not 0 < test_fraction < 1:
        raise InvalidInputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if ridge < 0:
        raise InvalidInputError(f"ridge must be >= 0, got {ridge}")
    n_test = round(n * test_fraction)
    if n < 4 or not 2 <= n_test <= n - 2:
        raise InvalidInputError(
            f"{n} samples with test_fraction={test_fraction} leave {n_test} test and {n - n_test} train "
            "samples; at least 2 of each are needed"
        )
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test:]
    else:  # whole groups go to one side, so overlapping neighbours never straddle the split
        labels = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        order = rng.permutation(labels.max() + 1)
        sizes = np.bincount(labels)[order]
        test_groups = order[: np.searchsorted(np.cumsum(sizes), n_test) + 1]
        is_test = np.isin(labels, test_groups)
        test, train = np.flatnonzero(is_test), np.flatnonzero(~is_test)
        if test.size < 2 or train.size < 2:
            raise InvalidInputError(f"{labels.max() + 1} groups cannot give both probe splits 2 samples or more")
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_train, x_test = (x[train] - mean) / std, (x[test] - mean) / std
    y_mean = y[train].mean(axis=0)
    gram = x_train.T @ x_train
    rhs = x_train.T @ (y[train] - y_mean)
    if ridge > 0:
        coef = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), rhs)
    else:
        coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    predicted = x_test @ coef + y_mean
    y_test = y[test]
    varies = np.ptp(y_test, axis=0) > 0
    if not varies.any():
        logger.warning("linear probe: no target varies in the %d-sample test split; R² is undefined", n_test)
        return math.nan
    ss_res = np.sum((y_test - predicted)[:, varies] ** 2)
    ss_tot = np.sum((y_test - y_test.mean(axis=0))[:, varies] ** 2)
    return float(1.0 - ss_res / ss_tot)


# ----------------------------------------------------------------------------- baselines


def _onehot_csr(patches: np.ndarray, n_classes: int) -> sparse.csr_matrix:
    """Flattened one-hot patches as a sparse ``(n, P*P*C)`` matrix (column = pixel * C + class)."""
    n = patches.shape[0]
    flat = patches.reshape(n, -1)
    pixels = flat.shape[1]
    columns = (np.arange(pixels, dtype=np.int64) * n_classes + flat).ravel()
    indptr = np.arange(0, n * pixels + 1, pixels, dtype=np.int64)
    data = np.ones(columns.size, dtype=np.float64)
    return sparse.csr_matrix((data, columns, indptr), shape=(n, pixels * n_classes))


def _fit_pca_onehot(
    patches: np.ndarray, n_classes: int, dim: int, rng: np.random.Generator, n_iter: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Top principal axes of the flattened one-hot patches, by randomized SVD.

    The one-hot matrix stays sparse and centring is applied implicitly, so no
    dense ``(n, P*P*C)`` or ``(P*P*C)²`` array is ever built: memory is about
    ``n * P*P`` plus ``P*P*C * (dim + 10)`` floats (Halko, Martinsson & Tropp 2011,
    algorithm 4.4 with power iterations).

    Returns:
        ``(mean, components)``: float64 ``(F,)`` and ``(k, F)`` with ``k = min(dim, n, F)``,
        rows orthonormal, sorted by explained variance, signs fixed so each
        axis's largest-magnitude loading is positive.
    """
    x = _onehot_csr(patches, n_classes)
    n, f = x.shape
    mean = np.asarray(x.mean(axis=0)).ravel()

    def times(m: np.ndarray) -> np.ndarray:  # (X - 1 mean^T) @ m
        return x @ m - np.outer(np.ones(n), mean @ m)

    def times_t(m: np.ndarray) -> np.ndarray:  # (X - 1 mean^T)^T @ m
        return x.T @ m - np.outer(mean, m.sum(axis=0))

    def orthonormal(m: np.ndarray) -> np.ndarray:  # scipy's economic QR is ~8x faster than numpy's on tall arrays
        return linalg.qr(m, mode="economic", check_finite=False)[0]

    width = min(dim + 10, n, f)
    q = orthonormal(times(rng.standard_normal((f, width))))
    for _ in range(n_iter):
        q = orthonormal(times(orthonormal(times_t(q))))
    _, _, vt = np.linalg.svd(times_t(q).T, full_matrices=False)
    components = vt[: min(dim, width)]
    signs = np.sign(components[np.arange(components.shape[0]), np.abs(components).argmax(axis=1)])
    return mean, components * np.where(signs == 0, 1.0, signs)[:, None]


def baseline_vectors(
    patches: np.ndarray,
    n_classes: int,
    dim: int,
    *,
    seed: int = 0,
    pca_fit_samples: int = 2000,
) -> dict[str, np.ndarray]:
    """Baseline embeddings of the same patches, each L2-normalised float32.

    - ``random``: a Gaussian ``dim``-vector per patch (what chance looks like).
    - ``pca_onehot``: projection of the flattened one-hot patch on its top
      ``dim`` principal axes, fitted on at most ``pca_fit_samples`` randomly
      chosen patches by a randomized SVD that keeps the one-hot matrix sparse
      (a 32x32 patch with 23 classes has 23,552 one-hot features), then applied
      to all N in chunks. Axes beyond the data's rank are zero-padded.
    - ``histogram``: the class-fraction vector (``n_classes`` dims).

    Args:
        patches: Integer class indices ``(N, H, W)``.
        n_classes: Number of classes ``C``.
        dim: Dimension of ``random`` and ``pca_onehot`` (the encoder's ``D``).
        seed: Seed for the random vectors, the PCA fit sample and the SVD sketch.
        pca_fit_samples: Most patches used to fit the PCA.

    Returns:
        ``{"random": (N, dim), "pca_onehot": (N, dim), "histogram": (N, C)}``.
    """
    patches = _check_patches(patches, n_classes)
    if dim < 1:
        raise InvalidInputError(f"dim must be >= 1, got {dim}")
    if pca_fit_samples < 2:
        raise InvalidInputError(f"pca_fit_samples must be >= 2, got {pca_fit_samples}")
    n = patches.shape[0]
    rng = np.random.default_rng(seed)
    random = _normalize_rows(rng.standard_normal((n, dim), dtype=np.float32))

    fit_rows = np.sort(rng.choice(n, size=pca_fit_samples, replace=False)) if n > pca_fit_samples else np.arange(n)
    mean, components = _fit_pca_onehot(patches[fit_rows], n_classes, dim, rng)
    if components.shape[0] < dim:
        logger.warning(
            "PCA baseline: only %d axes from %d patches; padding to %d dims with zeros",
            components.shape[0],
            fit_rows.size,
            dim,
        )
    axes = components.T  # (F, k)
    offset = mean @ axes
    pca = np.zeros((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        block = patches[start : start + _CHUNK]
        pca[start : start + block.shape[0], : axes.shape[1]] = _onehot_csr(block, n_classes) @ axes - offset
    pca = _normalize_rows(pca)

    histogram = _normalize_rows(class_fractions(patches, n_classes))
    return {"random": random, "pca_onehot": pca, "histogram": histogram}


# ----------------------------------------------------------------------------- report


def _json_float(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def evaluate_embeddings(
    embeddings: np.ndarray,
    patches: np.ndarray,
    n_classes: int,
    *,
    k: int = 10,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict:
    """Score encoder embeddings and the baselines on retrieval and linear probes.

    Every method (``encoder``, ``random``, ``pca_onehot``, ``histogram``) gets
    the retrieval JSD@k against class fractions and linear-probe R² for class
    fractions, edge density and Shannon diversity, all on the same train/test
    split. Baselines use the encoder's dimension D, except the histogram (C dims).

    Args:
        embeddings: float32 ``(N, D)`` unit vectors of held-out cells.
        patches: uint8 ``(N, P, P)`` class indices around the same cells.
        n_classes: Number of legend classes ``C``.
        k: Neighbours per retrieval query.
        seed: Seed for the baselines and the probe split.
        groups: Optional (N,) group labels for the probe split (see :func:`linear_probe_r2`).

    Returns:
        JSON-ready dict: ``n_cells``, ``n_classes``, ``k``, ``embed_dim``,
        ``methods`` (name -> the four metrics, rounded to 4 decimals, None where
        undefined), and ``checks``: ``beats_pca_on_configuration`` (encoder R² above
        PCA's on both edge density and Shannon diversity) and
        ``halves_random_retrieval_jsd`` (encoder JSD <= half the random baseline's).
    """
    embeddings = _check_vectors(embeddings, "embeddings")
    patches = _check_patches(patches, n_classes)
    n, dim = embeddings.shape
    if patches.shape[0] != n:
        raise InvalidInputError(f"{n} embeddings but {patches.shape[0]} patches; they must describe the same cells")
    started = time.perf_counter()
    fractions = class_fractions(patches, n_classes)
    targets = {
        "r2_class_fractions": fractions,
        "r2_edge_density": edge_density(patches),
        "r2_shannon": shannon_diversity(fractions),
    }
    methods = {"encoder": _normalize_rows(embeddings), **baseline_vectors(patches, n_classes, dim, seed=seed)}
    scores: dict[str, dict[str, float]] = {}
    for name, vectors in methods.items():
        row = {"retrieval_jsd": retrieval_jsd(vectors, fractions, k)}
        for metric, target in targets.items():
            row[metric] = linear_probe_r2(vectors, target, seed=seed, groups=groups)
        scores[name] = row
        logger.info("evaluation %s: %s", name, ", ".join(f"{m}={v:.4f}" for m, v in row.items()))

    enc, pca, rnd = scores["encoder"], scores["pca_onehot"], scores["random"]
    beats_pca = all(enc[m] > pca[m] for m in ("r2_edge_density", "r2_shannon"))  # NaN compares False
    halves = enc["retrieval_jsd"] <= 0.5 * rnd["retrieval_jsd"]
    logger.info("evaluated %d cells x %d methods in %.1f s", n, len(methods), time.perf_counter() - started)
    return {
        "n_cells": int(n),
        "n_classes": int(n_classes),
        "k": int(k),
        "embed_dim": int(dim),
        "methods": {name: {m: _json_float(v) for m, v in row.items()} for name, row in scores.items()},
        "checks": {"beats_pca_on_configuration": bool(beats_pca), "halves_random_retrieval_jsd": bool(halves)},
    }


def format_report(report: dict) -> str:
    """Plain-text table of an :func:`evaluate_embeddings` report: metrics as rows, methods as columns."""
    methods = list(report["methods"])
    label_width = max(len(_METRIC_LABELS[m]) for m in _METRICS)
    col_width = max(10, *(len(name) for name in methods))
    header = f"{'':<{label_width}}  " + "  ".join(f"{name:>{col_width}}" for name in methods)
    lines = [
        f"Embedding evaluation: {report['n_cells']} cells, D={report['embed_dim']}, k={report['k']}",
        header,
        "-" * len(header),
    ]
    for metric in _METRICS:
        values = [report["methods"][name].get(metric) for name in methods]
        cells = "  ".join(f"{'n/a' if v is None else f'{v:.4f}':>{col_width}}" for v in values)
        lines.append(f"{_METRIC_LABELS[metric]:<{label_width}}  {cells}")
    lines.append("")
    lines.extend(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in report["checks"].items())
    return "\n".join(lines)


def report_figure(report: dict, path: str | Path) -> Path:
    """Write a PNG of grouped bars: one panel per metric, the methods side by side.

    Args:
        report: An :func:`evaluate_embeddings` report.
        path: Output ``.png`` path; parent directories are created.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = list(report["methods"])
    colors = ["#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]
    fig = Figure(figsize=(3.4 * len(_METRICS), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(_METRICS))
    for ax, metric in zip(axes, _METRICS, strict=True):
        values = [report["methods"][name].get(metric) for name in methods]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(range(len(methods)), heights, color=[colors[i % len(colors)] for i in range(len(methods))])
        for bar, value in zip(bars, values, strict=True):
            label = "n/a" if value is None else f"{value:.3f}"
            y = max(bar.get_height(), 0.0)
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(methods)), methods, rotation=25, ha="right")
        ax.set_title(_METRIC_LABELS[metric].replace("retrieval JSD@k", f"retrieval JSD@{report['k']}"), fontsize=10)
        ax.axhline(0.0, color="black", linewidth=0.8)
        top = max(*heights, 0.0)
        bottom = min(*heights, 0.0)
        upper = top * 1.2 if metric == "retrieval_jsd" and top > 0 else 1.1  # room for the labels; R² tops at 1
        ax.set_ylim(bottom * 1.15 - 0.02 * (upper - bottom), upper)
        ax.grid(axis="y", alpha=0.3)
    checks = ", ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in report["checks"].items())
    fig.suptitle(f"{report['n_cells']} held-out cells, D={report['embed_dim']} — {checks}", fontsize=10)
    fig.savefig(path, dpi=120)
    logger.info("wrote evaluation figure %s", path)
    return path
