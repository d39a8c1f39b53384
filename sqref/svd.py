"""Truncated SVD of fully-connected layers (docs/method.md section 3).

    W (OUT x IN) = U S V^T   (scipy.linalg.svd, full_matrices=False)
    keep rank r:  Linear(IN -> r, weight = sqrt(S_r) V_r^T, no bias)
                  then Linear(r -> OUT, weight = U_r sqrt(S_r), bias = b)

The balanced sqrt(S) split gives both factors the same singular values
(sqrt(s_i)), hence similar ranges, which quantizes better than putting S on
one side (one factor would then hold all the dynamic range).

Rank r is worth it only below break-even: r * (IN + OUT) < IN * OUT.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from sqref.model import Linear


def singular_values(w) -> np.ndarray:
    """Singular values of a weight matrix, descending (float64)."""
    return scipy.linalg.svd(np.asarray(w, np.float64), compute_uv=False)


def break_even_rank(out_features: int, in_features: int) -> int:
    """Largest rank r with r * (IN + OUT) < IN * OUT: at or past it the pair
    of factors has at least as many weights as the layer."""
    return (in_features * out_features - 1) // (in_features + out_features)


def rank_for_energy(s, *, tau: float) -> int:
    """Smallest r with sum_{i<=r} s_i^2 >= tau * sum_i s_i^2, tau in (0, 1]."""
    if not (isinstance(tau, (int, float)) and 0 < tau <= 1):
        raise ValueError(f"energy must be in (0, 1], got {tau!r}")
    energy = np.cumsum(np.asarray(s, np.float64) ** 2)
    if energy[-1] == 0:
        return 1
    # NOTE: a relative slack of 1e-12 keeps tau = 1 from asking for more than
    # the full rank when the cumulative sum rounds just below the total.
    return int(np.searchsorted(energy, tau * energy[-1] * (1 - 1e-12)) + 1)


def rank_for_ratio(out_features: int, in_features: int, *, ratio: float) -> int:
    """Largest r whose factors hold at most `ratio` x the layer's weights:
    r * (IN + OUT) <= ratio * IN * OUT, ratio in (0, 1)."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ValueError(f"ratio must be in (0, 1) (the fraction of weights kept), got {ratio!r}")
    return max(1, math.floor(ratio * in_features * out_features / (in_features + out_features)))


def check_rank(rank, out_features: int, in_features: int, *, name: str = "layer") -> int:
    """Validate an explicit rank: an int in [1, min(IN, OUT)] below break-even."""
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool):
        raise TypeError(f"{name}: rank must be an int, got {rank!r}")
    full = min(in_features, out_features)
    if not 1 <= rank <= full:
        raise ValueError(f"{name}: rank must be in [1, {full}] for a {out_features}x{in_features} weight, got {rank}")
    limit = break_even_rank(out_features, in_features)
    if rank > limit:
        raise ValueError(f"{name}: rank {rank} is past break-even for a {out_features}x{in_features} weight "
                         f"({rank} * ({in_features} + {out_features}) >= {in_features} * {out_features}); "
                         f"the largest useful rank is {limit}")
    return int(rank)


def decompose(w):
    """(U, s, V^T) of a weight matrix in float64, scipy.linalg.svd(full_matrices=False)."""
    return scipy.linalg.svd(np.asarray(w, np.float64), full_matrices=False)


def _basis(y):
    """A well-conditioned basis of y's column space for the power iterations:
    L of y's LU factorisation with partial pivoting (rows permuted back), as
    scikit-learn's randomized SVD does between power iterations. Only the
    span matters there, and an LU is cheaper than a QR; the QRs were most of
    the VGG-16 compress time, and far more so when the other core is busy
    (benchmarks/bench_compress.py times it)."""
    return scipy.linalg.lu(y, permute_l=True, check_finite=False)[0]


def _orth(y):
    """Orthonormal basis of y's columns (economic QR by scipy.linalg.qr, which
    was faster than numpy.linalg.qr on tall float64 blocks here)."""
    return scipy.linalg.qr(y, mode="economic", overwrite_a=True, check_finite=False)[0]


def decompose_randomized(w, rank: int, *, oversample: int = 10, iterations: int = 4, seed: int = 0):
    """Approximate leading rank-r (U, s, V^T) by randomized range finding
    (Halko, Martinsson, Tropp 2011, algorithms 4.4 and 5.1), for large layers
    at small rank where the exact SVD is the heavy step.

    Y = (W W^T)^q W G with G Gaussian (IN x (r + p)), re-normalised after
    every product by an LU basis of the same span (`_basis`); Q = orth(Y)
    by QR; then the exact SVD of the small Q^T W.
    Cost O(OUT * IN * (r + p) * (2q + 2)) instead of O(OUT * IN * min).
    Error: with a decaying spectrum the result is close to the Eckart-Young
    optimum; the returned singular values are those of Q^T W, so the
    reported reconstruction error is computed from the factors, not from
    the (unknown) dropped values. Checked against the exact SVD in tests.
    Only the first r + p singular triplets are returned (float64).
    """
    w = np.asarray(w, np.float64)
    OUT, IN = w.shape
    k = min(rank + oversample, OUT, IN)
    rng = np.random.default_rng(seed)
    q = _basis(w @ rng.standard_normal((IN, k)))
    for _ in range(iterations):  # power iterations sharpen a slowly decaying spectrum
        q = _basis(w @ _basis(w.T @ q))
    q = _orth(q)  # the span is that of (W W^T)^q W G; Q^T W below needs orthonormal columns
    u_small, s, vt = scipy.linalg.svd(q.T @ w, full_matrices=False)
    return q @ u_small, s, vt


def factor_linear(layer: Linear, rank: int, *, name: str = "layer", allow_past_break_even: bool = False,
                  decomposition=None):
    """Split a Linear layer into two by truncated SVD (balanced sqrt(S) split).

    Shapes: weight (OUT, IN) -> first (r, IN) without bias, second (OUT, r)
    with the original bias. Dtype: the factors keep the weight's dtype; the
    SVD runs in float64. `decomposition` may pass a precomputed decompose(w)
    (a rank search factors the same layer many times).
    Returns (first, second, report) where report has the singular values,
    the kept energy fraction and the Frobenius reconstruction error (equal to
    sqrt(sum of the dropped s_i^2), Eckart-Young).
    """
    w = np.asarray(layer.weight)
    OUT, IN = w.shape
    if allow_past_break_even:
        if not 1 <= rank <= min(IN, OUT):
            raise ValueError(f"{name}: rank must be in [1, {min(IN, OUT)}], got {rank}")
    else:
        check_rank(rank, OUT, IN, name=name)
    u, s, vt = decompose(w) if decomposition is None else decomposition
    if len(s) < rank:
        raise ValueError(f"{name}: the decomposition holds {len(s)} singular values, fewer than rank {rank}")
    root = np.sqrt(s[:rank])
    first = Linear((root[:, None] * vt[:rank]).astype(w.dtype), None)
    second = Linear((u[:, :rank] * root[None, :]).astype(w.dtype), layer.bias)
    total = float(np.sum(np.asarray(w, np.float64) ** 2))  # ||W||_F^2 = sum of all s_i^2, even when s is truncated
    kept = float(np.sum(s[:rank] ** 2))
    # Eckart-Young: ||W - W_r||_F = sqrt(sum of the dropped s_i^2); with a truncated
    # (randomized) spectrum, sqrt(||W||_F^2 - sum_{i<=r} s_i^2) instead.
    if len(s) == min(IN, OUT):
        error = float(np.sqrt(np.sum(s[rank:] ** 2)))
    else:
        error = float(np.sqrt(max(total - kept, 0.0)))
    report = {"rank": int(rank), "full_rank": int(min(IN, OUT)), "singular_values": s,
              "kept_energy": kept / total if total > 0 else 1.0, "frobenius_error": error,
              "relative_error": error / np.sqrt(total) if total > 0 else 0.0,
              "params_before": int(w.size), "params_after": int(rank * (IN + OUT))}
    return first, second, report
