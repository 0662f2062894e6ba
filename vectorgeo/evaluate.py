"""Judge land-cover embeddings against simple baselines, with numpy alone.

The caller picks cells held out from training and hands over their land-cover
patches (uint8 class indices, ``(N, P, P)``) and their embeddings (float32 unit
vectors, ``(N, D)``). Two questions are asked of every set of vectors:

- **Retrieval**: do a cell's k nearest neighbours (cosine) have the same
  land-cover composition? Measured as the mean Jensen–Shannon divergence
  (base 2, 0..1, lower is better) between class-fraction histograms.
- **Linear probes**: can a ridge regression read the class fractions and two
  landscape-configuration measures (edge density, Shannon diversity) off the
  vectors? Measured as R² on a held-out split (higher is better) that keeps
  groups or spatial blocks whole and buffers test cells, so no training patch
  overlaps a test patch (:mod:`vectorgeo.probe`).

The same questions are asked of three baselines: random vectors, PCA of the
flattened one-hot patch (both at the encoder's dimension) and the raw class
histogram. The patch descriptors come from :mod:`vectorgeo.patch_stats`.
Everything is vectorised; the only Python loops run over chunks, classes or
methods, never over samples. The report lists warnings when too few cells or
groups back its numbers. :mod:`vectorgeo.evaluation_report` prints and plots it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy import linalg, sparse

from vectorgeo.errors import InvalidInputError
from vectorgeo.patch_stats import _CHUNK, _check_patches, class_fractions, edge_density, shannon_diversity
from vectorgeo.probe import _check_vectors, _json_float, _probe_r2s, probe_split

__all__ = [
    "baseline_vectors",
    "evaluate_embeddings",
    "js_divergence",
    "knn_indices",
    "retrieval_jsd",
]

logger = logging.getLogger(__name__)


def _normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows as float32; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1).astype(np.float32)


# ----------------------------------------------------------------------------- retrieval


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
    """Baseline embeddings of the same patches, as float32.

    - ``random``: a Gaussian ``dim``-vector per patch (what chance looks like), unit length.
    - ``pca_onehot``: projection of the flattened one-hot patch on its top
      ``dim`` principal axes, fitted on at most ``pca_fit_samples`` randomly
      chosen patches by a randomized SVD that keeps the one-hot matrix sparse
      (a 32x32 patch with 23 classes has 23,552 one-hot features), then applied
      to all N in chunks. Axes beyond the data's rank are zero-padded; rows unit length.
    - ``histogram``: the class fractions themselves (``n_classes`` dims, rows
      summing to 1, not L2-normalised): a linear probe reads them back exactly,
      and cosine retrieval normalises rows itself.

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

    return {"random": random, "pca_onehot": pca, "histogram": class_fractions(patches, n_classes)}


# ----------------------------------------------------------------------------- report


def evaluate_embeddings(
    embeddings: np.ndarray,
    patches: np.ndarray,
    n_classes: int,
    *,
    k: int = 10,
    seed: int = 0,
    groups: np.ndarray | None = None,
    lat: np.ndarray | None = None,
    lng: np.ndarray | None = None,
    half_width_m: float | None = None,
    min_cells: int = 500,
    min_groups: int = 10,
) -> dict:
    """Score encoder embeddings and the baselines on retrieval and linear probes.

    Every method (``encoder``, ``random``, ``pca_onehot``, ``histogram``) gets
    the retrieval JSD@k against class fractions and linear-probe R² for class
    fractions, edge density and Shannon diversity, all on the same train/test
    split (see :func:`vectorgeo.probe.probe_split`). Baselines use the encoder's dimension D,
    except the histogram (C dims). The report says, in ``warnings``, when its
    numbers rest on too few cells or groups to be trusted.

    Args:
        embeddings: float32 ``(N, D)`` unit vectors of held-out cells.
        patches: uint8 ``(N, P, P)`` class indices around the same cells.
        n_classes: Number of legend classes ``C``.
        k: Neighbours per retrieval query.
        seed: Seed for the baselines and the probe split.
        groups: Optional ``(N,)`` group labels (e.g. H3 parents) kept whole by the probe split.
        lat: Optional ``(N,)`` latitudes of the cells (patch centres), degrees; with ``lng`` and
            ``half_width_m`` they let the split use finer spatial blocks when ``groups`` are too
            few, and drop training cells whose patch could overlap a test patch.
        lng: Optional ``(N,)`` longitudes, degrees.
        half_width_m: Half a patch's side on the ground, metres; required with ``lat``/``lng``.
        min_cells: Fewest cells the scores are trusted with; fewer adds a warning.
        min_groups: Fewest groups on each side of the probe split trusted; fewer adds a warning.

    Returns:
        JSON-ready dict: ``n_cells``, ``n_classes``, ``k``, ``embed_dim``;
        ``methods`` (name -> the four metrics, rounded to 4 decimals, None where
        undefined); ``probe_split`` (``grouping``, ``n_groups_train``,
        ``n_groups_test``, ``n_train``, ``n_test``, ``n_buffer_dropped``,
        ``block_km``, ``buffer_m``); ``warnings`` (sentences, empty when
        nothing is amiss); and ``checks`` of the encoder, all False where a
        score is undefined: ``beats_pca_on_configuration`` (R² above PCA's on
        both edge density and Shannon diversity), ``halves_random_retrieval_jsd``
        (JSD <= half the random baseline's), ``jsd_below_pca``,
        ``jsd_within_1_5x_histogram`` (JSD <= 1.5 x the histogram's),
        ``r2_class_fractions_ge_0_90``, ``edge_density_above_pca_and_histogram``
        and ``shannon_above_pca``.

    Raises:
        InvalidInputError: for mismatched inputs, or a split that leaves a side under 2 cells.
    """
    embeddings = _check_vectors(embeddings, "embeddings")
    patches = _check_patches(patches, n_classes)
    n, dim = embeddings.shape
    if patches.shape[0] != n:
        raise InvalidInputError(f"{n} embeddings but {patches.shape[0]} patches; they must describe the same cells")
    started = time.perf_counter()
    split = probe_split(n, seed=seed, groups=groups, lat=lat, lng=lng, half_width_m=half_width_m, min_groups=min_groups)
    warnings = list(split.warnings)
    if n < min_cells:
        warnings.insert(
            0,
            f"only {n} held-out cells, fewer than {min_cells}: the scores are noisy; "
            "evaluate a larger area or a finer --h3_resolution",
        )
    for warning in warnings:
        logger.warning("evaluation: %s", warning)
    fractions = class_fractions(patches, n_classes)
    targets = {
        "r2_class_fractions": fractions,
        "r2_edge_density": edge_density(patches),
        "r2_shannon": shannon_diversity(fractions),
    }
    methods = {"encoder": _normalize_rows(embeddings), **baseline_vectors(patches, n_classes, dim, seed=seed)}
    scores: dict[str, dict[str, float]] = {}
    for name, vectors in methods.items():
        scores[name] = {"retrieval_jsd": retrieval_jsd(vectors, fractions, k), **_probe_r2s(vectors, targets, split)}
        logger.info("evaluation %s: %s", name, ", ".join(f"{m}={v:.4f}" for m, v in scores[name].items()))

    enc, pca, rnd, hist = (scores[m] for m in ("encoder", "pca_onehot", "random", "histogram"))
    # every comparison with NaN is False, so an undefined score never passes a check
    checks = {
        "beats_pca_on_configuration": all(enc[m] > pca[m] for m in ("r2_edge_density", "r2_shannon")),
        "halves_random_retrieval_jsd": enc["retrieval_jsd"] <= 0.5 * rnd["retrieval_jsd"],
        "jsd_below_pca": enc["retrieval_jsd"] < pca["retrieval_jsd"],
        "jsd_within_1_5x_histogram": enc["retrieval_jsd"] <= 1.5 * hist["retrieval_jsd"],
        "r2_class_fractions_ge_0_90": enc["r2_class_fractions"] >= 0.90,
        "edge_density_above_pca_and_histogram": enc["r2_edge_density"]
        > max(pca["r2_edge_density"], hist["r2_edge_density"]),
        "shannon_above_pca": enc["r2_shannon"] > pca["r2_shannon"],
    }
    logger.info("evaluated %d cells x %d methods in %.1f s", n, len(methods), time.perf_counter() - started)
    return {
        "n_cells": int(n),
        "n_classes": int(n_classes),
        "k": int(k),
        "embed_dim": int(dim),
        "methods": {name: {m: _json_float(v) for m, v in row.items()} for name, row in scores.items()},
        "probe_split": split.as_dict(),
        "warnings": warnings,
        "checks": {name: bool(ok) for name, ok in checks.items()},
    }
