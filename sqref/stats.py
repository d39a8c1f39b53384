"""Confidence intervals for accuracies measured on a finite test set.

wilson_interval      an accuracy's 95% interval (Wilson's score interval)
paired_drop_interval the drop in accuracy from a reference model to a model,
                     both on the same images: a seeded paired bootstrap
mean_interval        a mean over a few independent runs (seeds): Student's t interval

With 1,000 test images one image is 0.1 point and an accuracy near 98% has a
standard error of about 0.45 points; these intervals are what README and
docs/results.md quote beside a sample estimate.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 20_000
BOOTSTRAP_SEED = 0


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion correct / n:
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). It stays inside
    [0, 1] and keeps its coverage near 0 and 1, where the normal interval does not."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_drop_interval(reference_correct, model_correct, *, resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(drop, lo, hi) in points: drop = 100 (acc_reference - acc_model) on the same
    images, and the 2.5% and 97.5% percentiles of the drop over `resamples`
    bootstrap resamples of the images. Each image's paired outcome is one of
    -1, 0, +1 (reference right and model wrong: +1), so a resample is a
    multinomial draw of those three counts: exact for the bootstrap, and fast.
    Seeded: the same inputs give the same interval."""
    a = np.asarray(reference_correct, dtype=bool)
    b = np.asarray(model_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise ValueError(f"need two equal 1-D outcome vectors, got shapes {a.shape} and {b.shape}")
    n = a.size
    counts = np.array([np.sum(~a & b), np.sum(a == b), np.sum(a & ~b)])  # -1, 0, +1
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    drops = 100.0 * (draws[:, 2] - draws[:, 0]) / n
    lo, hi = np.percentile(drops, [2.5, 97.5])
    return float(100.0 * (counts[2] - counts[0]) / n), float(lo), float(hi)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student's t interval for the mean of independent runs (values, at least two),
    mean -+ t_{(1+confidence)/2, n-1} s / sqrt(n), s the sample standard deviation. For a figure
    averaged over seeds it covers the spread between seeds only: each run's own test sampling is not
    in it (the paired bootstrap above covers that for one run)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError(f"need at least two finite values in a 1-D sequence, got {v.size} of shape {v.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(v.mean())
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half
