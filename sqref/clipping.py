"""Clipping boundaries alpha for k-bit weights (docs/method.md section 2).

One signature for every rule:

    boundary_<rule>(w, bits, *, axis=None, <rule parameters>, name=None) -> alpha

alpha is a float (per tensor) or a (C,) float64 vector, one value per index
of `axis` (per output channel: axis=0 of OIHW / out x in). `boundary(w, bits,
rule=..., **params)` dispatches on the rule's name; RULES lists the names.

| rule           | alpha                                                          |
|----------------|----------------------------------------------------------------|
| max            | max|w| (no clipping; the baseline)                             |
| percentile     | p-th percentile of |w|, linear interpolation (p = 99.99)       |
| sigma          | |mean| + n * std (n = 3)                                       |
| aciq-gauss     | |mean| + c_k * std            (Banner et al. 2019)            |
| aciq-laplace   | |mean| + c_k * b, b = mean |w - mean|                          |
| kl             | TensorRT entropy calibration threshold (Migacz 2017)           |
| dynamic        | argmin over alpha of ||w - Q_alpha,k(w)||^2 (the paper's rule) |

Every rule returns alpha in (0, max|w|]: it is capped at max|w|, and a rule
that would give 0 on a tensor that is not all zero (a percentile of a mostly
zero tensor, the std of a constant one) falls back to max|w|. An all-zero
tensor or channel gets 0, which the grid maps to scale 1.0 (sqref.quant).
The one exception is documented in boundary_dynamic (per channel).
"""
import functools
import math
import numbers

import numpy as np
from scipy import optimize, special

from sqref.quant import (check_axis, check_bits, check_rounding, check_weights, channels, grid_params,
                         sum_sq_error)

RULES = ("max", "percentile", "sigma", "aciq-gauss", "aciq-laplace", "kl", "dynamic")
KL_BINS = 2048  # TensorRT's histogram size
PERCENTILE_P = 99.99  # default p of the percentile rule
SIGMA_N = 3.0  # default n of the sigma rule


# ----------------------------------------------------------------------------- statistics and formulas
# Each rule is a formula over a few statistics of one channel. The statistics
# are computed by the helpers below and nowhere else, so boundary_dynamic,
# which computes them once and feeds every formula, gets bitwise the same
# boundaries as the public rule functions.

def _absmax(x):
    return float(np.max(np.abs(x)))


def _mean_std(x):
    return float(np.mean(x, dtype=np.float64)), float(np.std(x, dtype=np.float64))


def _mean_abs_dev(x, mean):
    d = x.astype(np.float64)  # always a copy, so the in-place steps below are safe
    d -= mean
    np.abs(d, out=d)
    return float(np.mean(d))


def _cap(alpha, amax):
    """Put a rule's boundary in (0, amax]; 0 only for an all-zero channel (amax == 0)."""
    if amax == 0:
        return 0.0
    if not alpha > 0:
        return amax  # the rule clips everything: fall back to no clipping
    return min(float(alpha), amax)


def _sigma_alpha(amax, mean, spread, n):
    """|mean| + n * spread, in (0, amax]: the sigma rule (spread = std) and both ACIQ rules (n = c_k)."""
    return _cap(abs(mean) + n * spread, amax)


def _xlogx(v):
    """v * log(v) elementwise, with 0 log 0 = 0."""
    return v * np.log(np.where(v > 0, v, 1.0))


def _percentile_alpha(a, amax, p, *, is_sorted=False):
    """p-th percentile of a = |x| with linear interpolation (numpy's default method).

    Formula: pos = (n - 1) * p / 100; alpha = a_(lo) + (pos - lo) * (a_(lo+1) - a_(lo)), lo = floor(pos),
    a_(i) the i-th smallest. np.partition finds the two order statistics without a full sort.
    """
    pos = (a.size - 1) * (p / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, a.size - 1)
    part = a if is_sorted else np.partition(a, [lo, hi])
    v_lo, v_hi = float(part[lo]), float(part[hi])
    return _cap(v_lo + (pos - lo) * (v_hi - v_lo), amax)


def _kl_alpha(a, amax, bits):
    """TensorRT entropy calibration (Migacz 2017, "8-bit inference with TensorRT"), on a = |x|.

    Histogram |x| into KL_BINS bins over [0, max|x|]. For each candidate i
    (bins kept) from L = 2**(k-1) (128 for 8 bits) to KL_BINS:
      P = hist[:i], with the outliers sum(hist[i:]) added to its last bin;
      Q = hist[:i] merged into L groups of i // L bins (the last group takes
          the remainder), each group's mass spread evenly over its non-empty bins;
      KL(P || Q) after normalising both.
    alpha = (i* + 0.5) * bin_width for the i* of least KL, capped at max|x|.

    Written with prefix sums instead of the slides' loop (tests/test_clipping.py
    checks it against that loop): Q is constant over the non-empty bins of a
    group, so with masses P_g of P and H_g of hist in group g, and Z_g the number
    of non-empty bins,
        KL = sum_b P_b log P_b / N - log N - sum_g (P_g / N) log(H_g / (Z_g * sum Q)),  N = sum P.
    NOTE: when the last kept bin is empty but outliers exist, P > 0 where Q = 0
    and KL is infinite; the slides are silent, MXNet smooths both
    distributions; sqref skips such candidates (i = KL_BINS is always valid).
    """
    if amax == 0:
        return 0.0
    levels = 2 ** (bits - 1)
    idx = np.minimum((a / amax * KL_BINS).astype(np.int64), KL_BINS - 1)
    hist = np.bincount(idx, minlength=KL_BINS).astype(np.float64)
    total = hist.sum()
    cum_mass = np.concatenate([[0.0], np.cumsum(hist)])  # cum_mass[b] = sum(hist[:b])
    cum_nonempty = np.concatenate([[0], np.cumsum(hist > 0)])
    cum_h_log_h = np.concatenate([[0.0], np.cumsum(_xlogx(hist))])
    log_int = np.log(np.maximum(np.arange(KL_BINS + 1), 1))  # log z for the group sizes z

    i = np.arange(levels, KL_BINS + 1)  # candidates: number of bins kept
    outliers = total - cum_mass[i]
    keep = (hist[i - 1] > 0) | (outliers == 0)  # the others have KL = inf (see the NOTE)
    i, outliers = i[keep], outliers[keep]
    sum_p_log_p = cum_h_log_h[i - 1] + _xlogx(hist[i - 1] + outliers)  # P's last bin holds the outliers

    # Merged groups: L - 1 groups of `width` bins, then a last group with the remainder. P and hist
    # differ only in bin i - 1, which is in the last group, so the first L - 1 groups' terms depend on
    # the width alone: compute them once per width (at most KL_BINS // L widths), then add the last group.
    width = i // levels
    widths = np.arange(1, KL_BINS // levels + 1)
    g_start = np.arange(levels - 1) * widths[:, None]  # (widths, L - 1)
    g_stop = g_start + widths[:, None]
    h_g = cum_mass[g_stop] - cum_mass[g_start]
    z_g = cum_nonempty[g_stop] - cum_nonempty[g_start]
    # sum_g P_g log(H_g / Z_g); an empty group (H_g = 0) has P_g = 0 and max(., 1) makes its term 0.
    head = np.sum(h_g * (np.log(np.maximum(h_g, 1.0)) - log_int[z_g]), axis=1)
    last_start = (levels - 1) * width
    h_last = cum_mass[i] - cum_mass[last_start]  # > 0 on kept candidates
    z_last = cum_nonempty[i] - cum_nonempty[last_start]
    sum_p_log_hz = head[width - 1] + (h_last + outliers) * (np.log(h_last) - log_int[z_last])
    q_total = cum_mass[i]  # sum Q = total - outliers
    kl = sum_p_log_p / total - math.log(total) - sum_p_log_hz / total + np.log(q_total)
    best = int(i[np.argmin(kl)])
    return _cap((best + 0.5) * (amax / KL_BINS), amax)


@functools.lru_cache(maxsize=None)
def aciq_constant(bits, distribution):
    """c_k of ACIQ (Banner et al. 2019, "Post training 4-bit quantization ..."), computed numerically.

    c_k minimises the analytic clipping + rounding MSE of a unit-spread
    distribution with M = bits:
      laplace (b = 1):      E(c) = 2 exp(-c) + c**2 / (3 * 2**(2M))
      gauss (sigma = 1):    E(c) = (c**2 + 1) erfc(c / sqrt 2) - sqrt(2/pi) c exp(-c**2 / 2) + c**2 / (3 * 2**(2M))
    (the rounding term is that of 2**M levels over [-c, c]; sqref's restricted
    grid has one level fewer, but these are Banner et al.'s constants).
    Tests: the published table (gauss 1.71/2.15/2.55/3.92, laplace
    2.83/3.89/5.03/9.89 for 2/3/4/8 bits). Cached: computed once per (bits, distribution).
    """
    bits = check_bits(bits)
    rounding = lambda c: c * c / (3.0 * 4.0**bits)  # noqa: E731
    if distribution == "laplace":
        err = lambda c: 2.0 * math.exp(-c) + rounding(c)  # noqa: E731
    elif distribution == "gauss":
        err = lambda c: ((c * c + 1.0) * special.erfc(c / math.sqrt(2.0))  # noqa: E731
                         - math.sqrt(2.0 / math.pi) * c * math.exp(-c * c / 2.0) + rounding(c))
    else:
        raise ValueError(f"distribution must be 'gauss' or 'laplace', got {distribution!r}")
    # E is unimodal on (0, 20]: the clipping term falls, the rounding term grows (c_8 < 10).
    res = optimize.minimize_scalar(err, bounds=(1e-3, 20.0), method="bounded", options={"xatol": 1e-10})
    return float(res.x)


# ----------------------------------------------------------------------------- public rules
def _per_channel(w, bits, axis, name, one_channel):
    """Apply a rule to the whole tensor (axis None) or to each channel along `axis`."""
    w = check_weights(w, name=name)
    check_bits(bits)
    axis = check_axis(axis, w.ndim, name=name)
    rows = channels(w, axis)
    if axis is None:
        return float(one_channel(rows[0]))
    return np.array([one_channel(x) for x in rows], dtype=np.float64)


def boundary_max(w, bits, *, axis=None, name=None):
    """alpha = max|w|: no clipping, the baseline (as TFLite/PyTorch MinMax observers on weights)."""
    return _per_channel(w, bits, axis, name, _absmax)


def boundary_percentile(w, bits, *, axis=None, p=PERCENTILE_P, name=None):
    """alpha = p-th percentile of |w| (as np.percentile(np.abs(w), p), linear interpolation)."""
    if isinstance(p, bool) or not (isinstance(p, numbers.Real) and 0 < p <= 100):
        raise ValueError(f"percentile p must be in (0, 100], got {p!r}")

    def one(x):
        a = np.abs(x)
        return _percentile_alpha(a, float(np.max(a)), p)
    return _per_channel(w, bits, axis, name, one)


def boundary_sigma(w, bits, *, axis=None, n=SIGMA_N, name=None):
    """alpha = min(max|w|, |mean| + n * std): a static boundary, blind to the bit width."""
    if isinstance(n, bool) or not (isinstance(n, numbers.Real) and math.isfinite(n) and n > 0):
        raise ValueError(f"sigma multiplier n must be a finite number > 0, got {n!r}")

    def one(x):
        mean, std = _mean_std(x)
        return _sigma_alpha(_absmax(x), mean, std, n)
    return _per_channel(w, bits, axis, name, one)


def boundary_aciq_gauss(w, bits, *, axis=None, name=None):
    """ACIQ for a Gaussian: alpha = min(max|w|, |mean| + c_k * std), c_k = aciq_constant(bits, 'gauss').

    NOTE: Banner et al. clip [mean - alpha, mean + alpha]; the symmetric grid is
    centred on 0, so sqref widens the boundary by |mean| to keep the same tails.
    """
    def one(x):
        mean, std = _mean_std(x)
        return _sigma_alpha(_absmax(x), mean, std, aciq_constant(bits, "gauss"))
    return _per_channel(w, bits, axis, name, one)


def boundary_aciq_laplace(w, bits, *, axis=None, name=None):
    """ACIQ for a Laplace: alpha = min(max|w|, |mean| + c_k * b), b = mean |w - mean| (as Banner et al.'s code).

    NOTE: |mean| is added as in boundary_aciq_gauss.
    """
    def one(x):
        mean, _ = _mean_std(x)
        return _sigma_alpha(_absmax(x), mean, _mean_abs_dev(x, mean), aciq_constant(bits, "laplace"))
    return _per_channel(w, bits, axis, name, one)


def boundary_kl(w, bits, *, axis=None, name=None):
    """TensorRT entropy (KL-divergence) calibration threshold on |w|; see _kl_alpha. For activations mainly.

    It needs a well-filled histogram: on a small tensor (a few hundred values in
    2048 bins) a candidate whose kept bins hold one non-empty bin has KL = 0, and
    the threshold can collapse far below the bulk of the weights.
    """
    def one(x):
        a = np.abs(x)
        return _kl_alpha(a, float(np.max(a)), bits)
    return _per_channel(w, bits, axis, name, one)


# ----------------------------------------------------------------------------- dynamic
_GRID_POINTS = 128  # first search level: geometric grid over (0, max|w|]
_REFINE_POINTS = 33  # each refinement level: linear grid between the neighbours of the best point
_REFINE_LEVELS = 5  # each level divides the step by 16: from ~10% down to ~1e-7, float32's resolution
_FINALISTS = 2  # search points evaluated exactly


def grid_scales(alphas, bits):
    """The float32 grid scales (as float64) that quantize would use for these boundaries."""
    return np.asarray(grid_params(bits=bits, alpha=np.asarray(alphas, dtype=np.float64))[0], dtype=np.float64)


def approx_sse(a, cum1, cum2, scales, qmax):
    """Sum of squared errors of the symmetric grid for each scale, from sorted |x| and its prefix sums.

    Shapes: a (n,) sorted |x|; cum1, cum2 (n + 1,) prefix sums of a and a**2;
    scales (S,) -> (S,). Level j (|code| j) takes |x| in [(j - 0.5) s, (j + 0.5) s),
    the top level qmax everything from (qmax - 0.5) s up (that is the clipping),
    and contributes sum (|x| - j s)**2 = S2 - 2 j s S1 + (j s)**2 n_j over its
    slice of the sorted array: O(qmax log n) per scale, no pass over the data.
    It differs from sum_sq_error only by float rounding (the error is the same
    on both sides of a level boundary, so ties do not matter), which is why
    the search's last word is an exact evaluation.
    """
    level = np.arange(qmax + 1)
    cut = np.searchsorted(a, (level[1:] - 0.5) * scales[:, None])  # (S, qmax) level boundaries
    lo = np.concatenate([np.zeros((scales.size, 1), dtype=cut.dtype), cut], axis=1)
    hi = np.concatenate([cut, np.full((scales.size, 1), a.size, dtype=cut.dtype)], axis=1)
    grid = level * scales[:, None]  # (S, qmax + 1) grid values j * s
    sse = (cum2[hi] - cum2[lo]) - 2.0 * grid * (cum1[hi] - cum1[lo]) + grid * grid * (hi - lo)
    return sse.sum(axis=1)


def _search(a, bits):
    """Approximate argmin of the SSE over alpha in (0, max|x|], coarse to fine; returns the best few alphas."""
    qmax = 2 ** (bits - 1) - 1
    a64 = a.astype(np.float64)
    cum1, cum2 = np.zeros(a.size + 1), np.zeros(a.size + 1)  # cum[i] = sum of the i smallest
    np.cumsum(a64, out=cum1[1:])
    np.cumsum(np.square(a64), out=cum2[1:])
    amax = float(a64[-1])
    smallest = float(a64[np.searchsorted(a64, 0.0, side="right")])  # smallest |x| > 0
    # Below the smallest |x| every boundary is worse than alpha = smallest; 2**-32 bounds the grid's
    # span; the float32 term keeps the scale a normal float32.
    low = max(smallest, amax * 2.0**-32, 2.0 * qmax * float(np.finfo(np.float32).tiny))
    alphas = np.geomspace(low, amax, _GRID_POINTS) if low < amax else np.array([amax])
    for level in range(_REFINE_LEVELS + 1):
        sse = approx_sse(a64, cum1, cum2, grid_scales(alphas, bits), qmax)
        if level == _REFINE_LEVELS:
            break
        best = int(np.argmin(sse))
        left, right = alphas[max(best - 1, 0)], alphas[min(best + 1, alphas.size - 1)]
        alphas = np.linspace(left, right, _REFINE_POINTS)
    return [float(v) for v in alphas[np.argsort(sse, kind="stable")[:_FINALISTS]]]


def _dynamic_alpha(x, bits, rounding, extra=()):
    """The dynamic boundary of one channel x (1-D); see boundary_dynamic."""
    a = np.abs(x)
    a.sort()  # in place: no second copy of a large tensor
    amax = float(a[-1])
    if amax == 0:
        return 0.0
    mean, std = _mean_std(x)
    rules = [
        amax,  # max (a[-1] is max|x|, the same number _absmax returns)
        _percentile_alpha(a, amax, PERCENTILE_P, is_sorted=True),
        _sigma_alpha(amax, mean, std, SIGMA_N),
        _sigma_alpha(amax, mean, std, aciq_constant(bits, "gauss")),
        _sigma_alpha(amax, mean, _mean_abs_dev(x, mean), aciq_constant(bits, "laplace")),
        _kl_alpha(a, amax, bits),  # the histogram does not depend on the order of a
    ]
    candidates = _search(a, bits) + rules + [float(v) for v in extra]
    scales = grid_scales(candidates, bits)
    unique, first = np.unique(scales, return_index=True)  # equal scales are the same grid
    qmax = 2 ** (bits - 1) - 1
    sse = sum_sq_error(x, unique, qmax, rounding)
    return candidates[int(first[np.argmin(sse)])]


def boundary_dynamic(w, bits, *, axis=None, rounding="half_even", name=None):
    """The paper's dynamic boundary: alpha* = argmin over alpha in (0, max|w|] of ||w - Q_alpha,k(w)||^2.

    Q is the symmetric restricted grid with the given rounding (sqref.quant).
    The boundary is re-derived from the current weights and bit width, so it
    tightens as k falls. For the asymmetric scheme sqref uses this same alpha
    to clip the tensor's [min, max] (sqref.quant.quantize); the search itself
    is on the symmetric grid.

    Algorithm, per channel (x = the whole tensor when axis is None):
      1. sort |x| once; prefix sums of |x| and |x|**2 give the SSE of any alpha
         in O(qmax log n), per quantization level (approx_sse);
      2. search a 128-point geometric grid of alphas over (0, max|x|], then,
         5 times, a 33-point linear grid between the neighbours of the best
         point (each level divides the step by 16, down to ~1e-7 relative);
      3. candidates: the 2 best search points, plus the boundary of every other
         rule with its default parameters (max, percentile 99.99, sigma 3,
         aciq-gauss, aciq-laplace, kl), computed by the same code as the
         public functions (bitwise the same numbers);
      4. evaluate each distinct candidate grid exactly (sum_sq_error, the code
         quant_mse runs) and return the best (ties: the smallest scale).
    Guarantee, by construction: quant_mse(w, alpha*) <= quant_mse(w, alpha_r)
    for every rule r with default parameters, on the same tensor, bits and
    rounding; per channel, channel by channel. It is not a certified global
    minimum (the SSE is piecewise quadratic in alpha with a kink wherever a
    weight crosses a level boundary), but on 20000 normal weights it beats a
    2000-point exact scan for every k (tests/test_clipping.py).
    Per channel (axis given), every channel's candidates also include the
    per-tensor dynamic boundary, so per-channel quantization is never worse
    than per-tensor, channel by channel (tested).
    NOTE: so per channel, alpha can exceed that channel's max|w| (never the
    tensor's): a channel whose values sit on the per-tensor grid can lose on
    every finer grid.
    Cost: one sort, two prefix sums, the other rules' statistics, and one
    cheap pass per distinct candidate (benchmarks/bench_dynamic.py).
    """
    w = check_weights(w, name=name)
    bits = check_bits(bits)
    check_rounding(rounding)
    axis = check_axis(axis, w.ndim, name=name)
    whole = _dynamic_alpha(channels(w, None)[0], bits, rounding)
    if axis is None:
        return whole
    return np.array([_dynamic_alpha(x, bits, rounding, extra=(whole,)) for x in channels(w, axis)])


_RULE_FUNCTIONS = {
    "max": boundary_max,
    "percentile": boundary_percentile,
    "sigma": boundary_sigma,
    "aciq-gauss": boundary_aciq_gauss,
    "aciq-laplace": boundary_aciq_laplace,
    "kl": boundary_kl,
    "dynamic": boundary_dynamic,
}


def boundary(w, bits, *, rule="dynamic", axis=None, **params):
    """The clipping boundary of `rule` (one of RULES); params go to the rule (p=, n=, rounding=, name=)."""
    if rule not in _RULE_FUNCTIONS:
        raise ValueError(f"unknown clipping rule {rule!r}; choose one of {RULES}")
    return _RULE_FUNCTIONS[rule](w, bits, axis=axis, **params)
