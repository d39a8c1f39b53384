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
| kl             | entropy calibration threshold, as NVIDIA's calibrator (spike   |
|                | of zeros removed: bins[0] = bins[1])                           |
| kl-slides      | entropy threshold as TensorRT's 2017 slides (Migacz 2017)      |
| dynamic        | argmin over alpha of ||w - Q_alpha,k(w)||^2 (the paper's rule, exact) |

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

from sqref.mse_search import grid_scales, prefix_sums, screen, search_scales
from sqref.quant import channel_rows, check_axis, check_bits, check_rounding, check_weights, sum_sq_error_rows

RULES = ("max", "percentile", "sigma", "aciq-gauss", "aciq-laplace", "kl", "kl-slides", "dynamic")
KL_BINS = 2048  # TensorRT's histogram size
KL_START_BIN = 128  # the fewest bins NVIDIA's calibrator keeps (its start_bin)
KL_DENSE = 0.125  # a histogram with at least this fraction of its kl candidates scored: _group_terms_rows
# (it costs about as much as scoring an eighth of the candidates pair by pair)
PERCENTILE_P = 99.99  # default p of the percentile rule
SIGMA_N = 3.0  # default n of the sigma rule
SEARCH_BLOCK = 1 << 23  # breakpoints (weights x qmax) per block of channels the dynamic rule searches together


# ----------------------------------------------------------------------------- statistics and formulas
# Each rule is a formula over a few statistics of each channel. Every function
# below takes the channels as the rows of one (C, m) array (sqref.quant.channel_rows;
# (1, n) per tensor) and returns one value per row. The statistics are computed
# by these helpers and nowhere else, on the same array, so boundary_dynamic,
# which computes them once and feeds every formula, gets bitwise the same
# boundaries as the public rule functions.

def _mean_std(x):
    return np.mean(x, axis=1, dtype=np.float64), np.std(x, axis=1, dtype=np.float64)


def _mean_abs_dev(x, mean):
    d = x.astype(np.float64)  # always a copy, so the in-place steps below are safe
    d -= mean[:, None]
    np.abs(d, out=d)
    return np.mean(d, axis=1)


def _cap(alpha, amax):
    """Put each row's boundary in (0, amax]; 0 only for an all-zero channel (amax == 0).

    A rule that clips everything (alpha <= 0 or NaN) falls back to amax: no clipping.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    return np.where(amax == 0, 0.0, np.where(alpha > 0, np.minimum(alpha, amax), amax))


def _sigma_alpha(amax, mean, spread, n):
    """|mean| + n * spread, in (0, amax]: the sigma rule (spread = std) and both ACIQ rules (n = c_k)."""
    return _cap(np.abs(mean) + n * spread, amax)


def _xlogx(v):
    """v * log(v) elementwise, with 0 log 0 = 0."""
    return v * np.log(np.where(v > 0, v, 1.0))


def _percentile_alpha(a, amax, p, *, is_sorted=False):
    """p-th percentile of each row of a = |x| with linear interpolation (numpy's default method).

    Formula: pos = (m - 1) * p / 100; alpha = a_(lo) + (pos - lo) * (a_(lo+1) - a_(lo)), lo = floor(pos),
    a_(i) the i-th smallest. np.partition finds the two order statistics without a full sort.
    """
    m = a.shape[1]
    pos = (m - 1) * (p / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    part = a if is_sorted else np.partition(a, [lo, hi], axis=1)
    v_lo, v_hi = part[:, lo].astype(np.float64), part[:, hi].astype(np.float64)
    return _cap(v_lo + (pos - lo) * (v_hi - v_lo), amax)


def _abs_histograms(a, amax):
    """Histogram of each row of a = |x| into KL_BINS bins over [0, amax]: bin floor(|x| / amax * KL_BINS), capped.

    Shapes: a (C, m), amax (C,) -> (C, KL_BINS) float64 counts (all-zero rows: all in bin 0).
    Computed in blocks of about 2**20 values (one bincount per block over
    every row's bins), so the temporaries stay small.
    """
    rows, m = a.shape
    scale = np.where(amax > 0, amax, 1.0)[:, None]
    offset = (np.arange(rows) * KL_BINS)[:, None]
    hist = np.zeros(rows * KL_BINS)
    block = 1 << 20
    for r0, r1 in _row_blocks(rows, m, block):
        for c0 in range(0, m, block):
            t = a[r0:r1, c0:c0 + block] / scale[r0:r1]  # float64
            t *= KL_BINS
            idx = t.astype(np.int64)
            np.minimum(idx, KL_BINS - 1, out=idx)
            idx += offset[r0:r1]
            hist += np.bincount(idx.ravel(), minlength=rows * KL_BINS)
    return hist.reshape(rows, KL_BINS)


def _row_blocks(rows, per_row, block=1 << 22):
    """Row ranges (r0, r1) whose temporaries hold about `block` values, for per_row values per row."""
    step = max(1, block // max(per_row, 1))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def kl_bins_kept(hist, bits):
    """The number of bins i* that NVIDIA's entropy calibrator keeps, for a histogram of |x| (the `kl` rule).

    Matches `_compute_amax_entropy` of NVIDIA's pytorch-quantization toolkit
    (TensorRT repository, tools/pytorch-quantization, calib/histogram.py; read,
    not copied), the Python entropy calibrator TensorRT users run, with its
    defaults (start_bin 128, stride 1, signed: L = 2**(k-1) levels for |x|):
      1. bins[0] = bins[1]: the spike of exact zeros (half of a ReLU output)
         is replaced by its neighbour's count before the search;
      2. for i = 128 .. B (B = len(hist)): P = bins[:i] with the outliers
         sum(bins[i:]) added to its last bin; bin b < i is in group
         floor(b * L / i) (np.digitize over linspace(0, i, L + 1)); Q spreads
         each group's mass evenly over the group's non-empty bins (Q = 0 on
         empty bins);
      3. KL(P || Q) after normalising both (scipy.stats.entropy): infinite
         where P > 0 and Q = 0 (last kept bin empty, outliers present);
      4. i* = the LAST i of least KL (a tie keeps the wider range).
    The threshold is the right edge of bin i* - 1: alpha = i* * bin width.
    Shapes: hist (B,) or (C, B) counts, B >= 2. Returns an int in
    [min(128, B), B], or a (C,) int array.
    Prefix-sum form: with H_g the mass and Z_g the non-empty bins of group g,
    P_g = H_g (+ the outliers in the last group) and N = sum P,
        KL = sum_b P_b log P_b / N - log N - sum_g (P_g / N) log(H_g / Z_g) + log(sum_g H_g).
    Tests: a literal transcription of the toolkit's loop on hand-made
    histograms (tests/test_calibration.py).
    """
    one = np.ndim(hist) == 1
    i, kl = kl_divergences(hist, bits)
    last = kl.shape[1] - 1 - np.argmin(kl[:, ::-1], axis=1)  # the last argmin
    return int(i[last[0]]) if one else i[last]


def kl_divergences(hist, bits):
    """The candidates i and the KL(P || Q) of each, as kl_bins_kept scores them: (I,), (C, I) (inf: not scored).

    hist (B,) or (C, B) counts. See kl_bins_kept for the algorithm; a row
    with at least KL_DENSE of its candidates scored is summed by
    _group_terms_rows, the others pair by pair (bitwise the same sums).
    """
    hist = np.array(hist, dtype=np.float64, ndmin=2)  # a copy: bin 0 is overwritten
    levels = 2 ** (bits - 1)
    hist[:, 0] = hist[:, 1]  # NVIDIA: the zero spike takes its neighbour's count
    rows, n_bins = hist.shape
    zero = np.zeros((rows, 1))
    total = hist.sum(axis=1, keepdims=True)
    cum_mass = np.concatenate([zero, np.cumsum(hist, axis=1)], axis=1)
    cum_nonempty = np.concatenate([zero, np.cumsum(hist > 0, axis=1)], axis=1).astype(np.int64)
    cum_xlogx = np.concatenate([zero, np.cumsum(_xlogx(hist), axis=1)], axis=1)
    i = np.arange(min(KL_START_BIN, n_bins), n_bins + 1)  # candidates: number of bins kept
    outliers = total - cum_mass[:, i]  # (C, I)
    # P > 0 where Q = 0 (last kept bin empty, outliers beyond it): KL infinite. Only the other
    # candidates are scored, which on a sparse histogram (a small channel) is a few of them.
    rows_of, cols_of = np.nonzero((hist[:, i - 1] > 0) | (outliers == 0))
    kept, beyond = i[cols_of], outliers[rows_of, cols_of]  # (P,) scored (row, candidate) pairs
    sum_p_log_p = cum_xlogx[rows_of, kept - 1] + _xlogx(hist[rows_of, kept - 1] + beyond)  # last bin + outliers
    g = np.arange(levels + 1)
    starts = (g * i[:, None] + levels - 1) // levels  # (I, L + 1): group g of candidate i starts at bin ceil(g i / L)
    log_int = np.log(np.maximum(np.arange(n_bins + 1), 1))  # log Z for the group sizes Z
    dense = np.bincount(rows_of, minlength=rows) >= KL_DENSE * i.size
    by_row = dense[rows_of]  # the pairs of the dense rows
    sum_p_log_q = np.empty(kept.size)
    sum_p_log_q[~by_row] = _group_terms_pairs(cum_mass, cum_nonempty, rows_of[~by_row], cols_of[~by_row],
                                              beyond[~by_row], starts, log_int)
    if by_row.any():
        dense_rows = np.flatnonzero(dense)
        every = _group_terms_rows(cum_mass, cum_nonempty, dense_rows, outliers[dense_rows], starts, log_int)
        sum_p_log_q[by_row] = every[np.searchsorted(dense_rows, rows_of[by_row]), cols_of[by_row]]
    kl = np.full(outliers.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero row (total 0) gives NaN; _cap maps it to 0
        kl[rows_of, cols_of] = ((sum_p_log_p - sum_p_log_q) / total[rows_of, 0] - np.log(total[rows_of, 0])
                                + np.log(cum_mass[rows_of, kept]))
    return i, kl


def _group_terms_pairs(cum_mass, cum_nonempty, rows_of, cols_of, beyond, starts, log_int):
    """sum_g P_g log(H_g / Z_g) of kl_divergences for the scored (row, candidate) pairs, pair by pair: (P,).

    cum_mass, cum_nonempty (C, B + 1): prefix sums of the counts and of the
    non-empty bins; beyond (P,): the outliers of each pair, added to its last
    group; starts (I, L + 1): the groups' first bins per candidate.
    """
    n_bins, levels = cum_mass.shape[1] - 1, starts.shape[1] - 1
    flat_mass, flat_nonempty = cum_mass.ravel(), cum_nonempty.ravel()
    out = np.empty(rows_of.size)
    for p0, p1 in _row_blocks(rows_of.size, levels + 1):
        at = starts[cols_of[p0:p1]] + (rows_of[p0:p1] * (n_bins + 1))[:, None]  # flat index into the prefix sums
        h_g = np.diff(flat_mass[at], axis=1)  # (P, L)
        z_g = np.diff(flat_nonempty[at], axis=1)
        log_q = np.log(np.maximum(h_g, 1.0))  # log(H_g / Z_g); counts: H_g = 0 (then P_g = 0) or >= 1
        log_q -= log_int[z_g]
        h_g[:, -1] += beyond[p0:p1]  # now P_g: bin i - 1 is in group floor((i - 1) L / i) = L - 1
        h_g *= log_q
        out[p0:p1] = h_g.sum(axis=1)
    return out


def _group_terms_rows(cum_mass, cum_nonempty, rows, outliers, starts, log_int):
    """The same sums for every candidate of the given rows: (len(rows), I); outliers (len(rows), I).

    For histograms with many candidates scored (large channels). The first
    L - 1 groups of all the candidates span far fewer distinct bin ranges
    than there are group terms (consecutive candidates share most of their
    groups), the same in every row: each range's term is computed once per
    row and gathered with one index shared by the rows, together with each
    candidate's last group (which holds the outliers), computed apart. Every
    term comes from the same operations as in _group_terms_pairs and each
    candidate's L terms are summed as one contiguous row in the same order,
    so the sums are bitwise the same (tests/test_calibration.py checks both
    ways).
    """
    n_bins, n_cand = cum_mass.shape[1] - 1, starts.shape[0]
    first, end = starts[:, :-2].ravel(), starts[:, 1:-1].ravel()
    ranges, which = np.unique(first * (n_bins + 1) + end, return_inverse=True)
    lo, hi = ranges // (n_bins + 1), ranges % (n_bins + 1)
    # one row of terms per histogram: the ranges' terms, then each candidate's last group; `which` picks
    # each candidate's L terms from it in group order
    which = np.concatenate([which.reshape(n_cand, -1), ranges.size + np.arange(n_cand)[:, None]], axis=1)
    out = np.empty((rows.size, n_cand))
    for r0, r1 in _row_blocks(rows.size, which.size):
        mass, nonempty = cum_mass[rows[r0:r1]], cum_nonempty[rows[r0:r1]]
        h = np.concatenate([mass[:, hi] - mass[:, lo], mass[:, starts[:, -1]] - mass[:, starts[:, -2]]], axis=1)
        term = np.log(np.maximum(h, 1.0))
        term[:, :ranges.size] -= log_int[nonempty[:, hi] - nonempty[:, lo]]
        term[:, ranges.size:] -= log_int[nonempty[:, starts[:, -1]] - nonempty[:, starts[:, -2]]]
        h[:, ranges.size:] += outliers[r0:r1]  # the last group's P_g
        term *= h
        out[r0:r1] = np.take(term, which, axis=1).sum(axis=2)
    return out


def _kl_alpha(hist, amax, bits):
    """The `kl` rule from the rows' histograms (_abs_histograms): alpha = kl_bins_kept * bin width."""
    return _cap(kl_bins_kept(hist, bits) * (amax / KL_BINS), amax)


def _kl_slides_alpha(hist, amax, bits):
    """The `kl-slides` rule: TensorRT entropy calibration as the 2017 slides give it (Migacz 2017).

    From the rows' histograms of |x| (KL_BINS bins over [0, max|x|]). For each
    candidate i (bins kept) from L = 2**(k-1) (128 for 8 bits) to KL_BINS:
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
    NOTE: the zero spike stays in bin 0, as on the slides: on a ReLU output
    (half exact zeros) it dominates P and the threshold collapses (0.37 x max
    on ReLU(N(0, 1))); the `kl` rule removes it, as NVIDIA's code does.
    """
    levels = 2 ** (bits - 1)
    rows = hist.shape[0]
    zero = np.zeros((rows, 1))
    total = hist.sum(axis=1, keepdims=True)
    cum_mass = np.concatenate([zero, np.cumsum(hist, axis=1)], axis=1)  # cum_mass[:, b] = sum(hist[:, :b])
    cum_nonempty = np.concatenate([zero, np.cumsum(hist > 0, axis=1)], axis=1).astype(np.int64)
    cum_h_log_h = np.concatenate([zero, np.cumsum(_xlogx(hist), axis=1)], axis=1)
    log_int = np.log(np.maximum(np.arange(KL_BINS + 1), 1))  # log z for the group sizes z

    i = np.arange(levels, KL_BINS + 1)  # candidates: number of bins kept
    outliers = total - cum_mass[:, i]  # (C, I)
    skip = (hist[:, i - 1] == 0) & (outliers > 0)  # KL = inf (see the NOTE)
    sum_p_log_p = cum_h_log_h[:, i - 1] + _xlogx(hist[:, i - 1] + outliers)  # P's last bin holds the outliers

    # Merged groups: L - 1 groups of `width` bins, then a last group with the remainder. P and hist
    # differ only in bin i - 1, which is in the last group, so the first L - 1 groups' terms depend on
    # the width alone: compute them once per width (at most KL_BINS // L widths), then add the last group.
    width = i // levels
    widths = np.arange(1, KL_BINS // levels + 1)
    g_start = np.arange(levels - 1) * widths[:, None]  # (widths, L - 1)
    g_stop = g_start + widths[:, None]
    h_g = cum_mass[:, g_stop] - cum_mass[:, g_start]  # (C, widths, L - 1)
    z_g = cum_nonempty[:, g_stop] - cum_nonempty[:, g_start]
    # sum_g P_g log(H_g / Z_g); an empty group (H_g = 0) has P_g = 0 and max(., 1) makes its term 0.
    head = np.sum(h_g * (np.log(np.maximum(h_g, 1.0)) - log_int[z_g]), axis=2)  # (C, widths)
    last_start = (levels - 1) * width
    h_last = cum_mass[:, i] - cum_mass[:, last_start]  # > 0 on kept candidates
    z_last = cum_nonempty[:, i] - cum_nonempty[:, last_start]
    with np.errstate(divide="ignore", invalid="ignore"):
        sum_p_log_hz = head[:, width - 1] + (h_last + outliers) * (np.log(h_last) - log_int[z_last])
        q_total = cum_mass[:, i]  # sum Q = total - outliers
        kl = sum_p_log_p / total - np.log(total) - sum_p_log_hz / total + np.log(q_total)
    kl[skip] = np.inf
    best = i[np.argmin(kl, axis=1)]
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
def _per_channel(w, bits, axis, name, rows_rule):
    """Apply a rule to the whole tensor (axis None: a float) or to each channel along `axis` (a (C,) vector).

    rows_rule maps the (C, m) channel rows (sqref.quant.channel_rows) to C boundaries.
    """
    w = check_weights(w, name=name)
    check_bits(bits)
    axis = check_axis(axis, w.ndim, name=name)
    alpha = np.asarray(rows_rule(channel_rows(w, axis)), dtype=np.float64)
    return float(alpha[0]) if axis is None else alpha


def _absmax(x):
    return np.max(np.abs(x), axis=1).astype(np.float64)


def boundary_max(w, bits, *, axis=None, name=None):
    """alpha = max|w|: no clipping, the baseline (as TFLite/PyTorch MinMax observers on weights)."""
    return _per_channel(w, bits, axis, name, _absmax)


def boundary_percentile(w, bits, *, axis=None, p=PERCENTILE_P, name=None):
    """alpha = p-th percentile of |w| (as np.percentile(np.abs(w), p), linear interpolation)."""
    if isinstance(p, bool) or not (isinstance(p, numbers.Real) and 0 < p <= 100):
        raise ValueError(f"percentile p must be in (0, 100], got {p!r}")
    return _per_channel(w, bits, axis, name, lambda x: _percentile_alpha(np.abs(x), _absmax(x), p))


def boundary_sigma(w, bits, *, axis=None, n=SIGMA_N, name=None):
    """alpha = min(max|w|, |mean| + n * std): a static boundary, blind to the bit width."""
    if isinstance(n, bool) or not (isinstance(n, numbers.Real) and math.isfinite(n) and n > 0):
        raise ValueError(f"sigma multiplier n must be a finite number > 0, got {n!r}")

    def rule(x):
        mean, std = _mean_std(x)
        return _sigma_alpha(_absmax(x), mean, std, n)
    return _per_channel(w, bits, axis, name, rule)


def boundary_aciq_gauss(w, bits, *, axis=None, name=None):
    """ACIQ for a Gaussian: alpha = min(max|w|, |mean| + c_k * std), c_k = aciq_constant(bits, 'gauss').

    NOTE: Banner et al. clip [mean - alpha, mean + alpha]; the symmetric grid is
    centred on 0, so sqref widens the boundary by |mean| to keep the same tails.
    """
    def rule(x):
        mean, std = _mean_std(x)
        return _sigma_alpha(_absmax(x), mean, std, aciq_constant(bits, "gauss"))
    return _per_channel(w, bits, axis, name, rule)


def boundary_aciq_laplace(w, bits, *, axis=None, name=None):
    """ACIQ for a Laplace: alpha = min(max|w|, |mean| + c_k * b), b = mean |w - mean| (as Banner et al.'s code).

    NOTE: |mean| is added as in boundary_aciq_gauss.
    """
    def rule(x):
        mean, _ = _mean_std(x)
        return _sigma_alpha(_absmax(x), mean, _mean_abs_dev(x, mean), aciq_constant(bits, "laplace"))
    return _per_channel(w, bits, axis, name, rule)


def boundary_kl(w, bits, *, axis=None, name=None):
    """Entropy (KL-divergence) calibration threshold on |w|, as NVIDIA's calibrator computes it (kl_bins_kept).

    The spike of exact zeros is removed first (bins[0] = bins[1]), as in
    NVIDIA's pytorch-quantization code, so a ReLU output (half exact zeros)
    keeps its range; the threshold is the right edge of the last kept bin.
    For activations mainly: on a small tensor (a few hundred values in 2048
    bins) the histogram is too sparse for the objective to mean much.
    """
    def rule(x):
        amax = _absmax(x)
        return _kl_alpha(_abs_histograms(np.abs(x), amax), amax, bits)
    return _per_channel(w, bits, axis, name, rule)


def boundary_kl_slides(w, bits, *, axis=None, name=None):
    """TensorRT's entropy threshold as its 2017 slides state it (Migacz 2017); see _kl_slides_alpha.

    Kept for comparison: the zero spike stays in bin 0, so it collapses on
    ReLU outputs (use `kl`). Candidates from 2**(k-1) bins, groups of i // L
    bins, threshold at (i* + 0.5) bin widths.
    """
    def rule(x):
        amax = _absmax(x)
        return _kl_slides_alpha(_abs_histograms(np.abs(x), amax), amax, bits)
    return _per_channel(w, bits, axis, name, rule)


# ----------------------------------------------------------------------------- dynamic
# The exact search for the MSE-optimal scale is sqref.mse_search; here, the rule around it.


def _dynamic_rows(x, bits, rounding, extra=None):
    """The dynamic boundary of each row of x (C, m); extra: None or a (C,) candidate per row. See boundary_dynamic."""
    a = np.abs(x)
    a.sort(axis=1)  # in place: no second copy of a large tensor
    amax = a[:, -1].astype(np.float64)  # the same numbers _absmax returns
    mean, std = _mean_std(x)
    hist = _abs_histograms(a, amax)  # the histogram does not depend on the order within a row
    rules = [  # every other rule, by the code of the public functions (bitwise the same numbers)
        amax,  # max
        _percentile_alpha(a, amax, PERCENTILE_P, is_sorted=True),
        _sigma_alpha(amax, mean, std, SIGMA_N),
        _sigma_alpha(amax, mean, std, aciq_constant(bits, "gauss")),
        _sigma_alpha(amax, mean, _mean_abs_dev(x, mean), aciq_constant(bits, "laplace")),
        _kl_alpha(hist, amax, bits),
        _kl_slides_alpha(hist, amax, bits),
    ] + ([] if extra is None else [np.asarray(extra, dtype=np.float64)])
    alpha = np.zeros(x.shape[0])
    live = np.flatnonzero(amax > 0)  # an all-zero channel keeps alpha = 0
    if live.size == 0:
        return alpha
    m = a.shape[1]
    blocks = _row_blocks(live.size, m * (2 ** (bits - 1) - 1), SEARCH_BLOCK)  # a few large channels at a time
    size = blocks[0][1]  # float64 buffers for one block, reused: a[rows], then cum[:, i] = sum of the i smallest
    rows, cum1, cum2 = np.empty((size, m)), np.empty((size, m + 1)), np.empty((size, m + 1))
    others = np.stack(rules, axis=1)[live]
    kept = []  # per row: the candidates that can win, in the order search, then the rules
    for r0, r1 in blocks:
        n = r1 - r0
        rows[:n] = a[r0:r1] if live.size == a.shape[0] else a[live[r0:r1]]
        prefix_sums(rows[:n], cum1[:n], cum2[:n])
        found = search_scales(rows[:n], cum1[:n], cum2[:n], bits)
        width = max(len(f) for f in found)
        found = np.array([f + f[:1] * (width - len(f)) for f in found])  # pad with a repeat (same grid)
        alphas = np.concatenate([found, others[r0:r1]], axis=1)
        for row, can_win in zip(alphas, screen(rows[:n], cum1[:n], cum2[:n], alphas, bits)):
            row = row[can_win]
            kept.append(row[np.sort(np.unique(row, return_index=True)[1])])  # each value once, first come first
    sizes = np.array([k.size for k in kept])
    for size in np.unique(sizes):  # rows with as many candidates together (a row's sums do not depend on the others)
        group = np.flatnonzero(sizes == size)
        candidates = np.array([kept[g] for g in group])  # (rows, size)
        scales = grid_scales(candidates, bits)
        order = np.argsort(scales, axis=1, kind="stable")  # ascending: a tie goes to the smallest scale
        candidates = np.take_along_axis(candidates, order, axis=1)
        x_rows = x if group.size == x.shape[0] else x[live[group]]
        sse = sum_sq_error_rows(x_rows, np.take_along_axis(scales, order, axis=1), 2 ** (bits - 1) - 1, rounding)
        alpha[live[group]] = candidates[np.arange(group.size), np.argmin(sse, axis=1)]
    return alpha


def boundary_dynamic(w, bits, *, axis=None, rounding="half_even", name=None):
    """The paper's dynamic boundary: alpha* = argmin over alpha in (0, max|w|] of ||w - Q_alpha,k(w)||^2.

    Q is the symmetric restricted grid with the given rounding (sqref.quant):
    qmax = 2**(k-1) - 1, s = float32(alpha / qmax). The boundary is re-derived
    from the current weights and bit width, so it tightens as k falls. For the
    asymmetric scheme sqref uses this same alpha to clip the tensor's
    [min, max] (sqref.quant.quantize); the search itself is on the symmetric grid.
    Shapes: w any shape; returns a float, or with `axis` a (C,) float64 vector.

    Algorithm, per channel (the whole tensor when axis is None), exact:
      1. sort |w|, prefix sums of |w| and |w|**2 (to about one rounding: mse_search.prefix_sums);
      2. the SSE is piecewise quadratic in s, with breakpoints s = |w_i| / (j - 1/2),
         j = 1..qmax, where a weight changes code (clipping is code qmax). With at
         most ENUMERATE (32768) breakpoints (258 weights at 8 bits, 1057 at 6)
         every one is enumerated; on larger channels a branch and bound over intervals
         of s (lower bounds from the prefix sums, sqref.mse_search) keeps only the
         intervals that may hold the minimum, and the breakpoints inside them
         are enumerated; each piece is minimised in closed form (s* = A / B);
      3. candidates: the float32 neighbours of the best pieces' minima, plus the
         boundary of every other rule with its default parameters (max,
         percentile 99.99, sigma 3, aciq-gauss, aciq-laplace, kl, kl-slides),
         computed by the same code as the public functions (bitwise the same);
      4. screen the candidates with the prefix-sum model (mse_search.screen):
         one whose model SSE exceeds the least by more than the model's and the
         exact sum's error bounds together cannot win and is dropped; evaluate
         the others exactly (sum_sq_error_rows, the code quant_mse runs, with
         this rounding) and return the best (ties: the smallest scale). The
         screen changes no result, only the time.
    Bound (derived in docs/method.md section 2, not only measured): every
    float value that ranks pieces or prunes intervals is within a stated
    tolerance of its exact value (tol = (64 eps + 8 (n eps)**2)
    (sum w**2 + n (qmax s_top)**2), sqref.mse_search.model_tolerance; the
    interval bounds get mse_search.bound_tolerance more), so the bracket drops
    nothing that could hold the minimum. With at most FINALIST_PIECES (8)
    pieces within 2 tol of the least, the result's MSE is the least over all
    float32 scales in the domain; with more, MSE <= optimum + (tol + the cost
    of one float32 step) / n, ~1e-14 x (mean w**2 / MSE) relative. Small and
    large tensors have the same bound, unless the bracket runs out of levels
    (BRACKET_LEVELS; then it keeps the intervals of least lower bound).
    Rounding: the SSE is continuous in s (a tie has the same error on either
    side), so the pieces do not depend on it; the exact evaluation does.
    Guarantee, by construction: quant_mse(w, alpha*) <= quant_mse(w, alpha_r)
    for every rule r with default parameters, on the same tensor, bits and
    rounding; per channel, channel by channel (alpha_r is a candidate: either
    evaluated exactly, or proven to evaluate higher than another candidate,
    with the error bounds of both sums). Tests: a plain-Python
    enumeration of every breakpoint (tests/test_clipping.py), within 1e-12.
    Per channel (axis given), every channel's candidates also include the
    per-tensor dynamic boundary, so per-channel quantization is never worse
    than per-tensor, channel by channel (tested).
    NOTE: so per channel, alpha can exceed that channel's max|w| (never the
    tensor's): a channel whose values sit on the per-tensor grid can lose on
    every finer grid.
    Cost: one sort, two prefix sums, the other rules' statistics (vectorised
    over channels), the search (O(qmax log n) per interval, a few dozen to a
    few hundred intervals; channels in blocks, level by level), the screen
    (O(qmax log n) per candidate), one pass per candidate left (usually a few),
    and per channel the per-tensor rule first (benchmarks/bench_dynamic.py).
    """
    w = check_weights(w, name=name)
    bits = check_bits(bits)
    check_rounding(rounding)
    axis = check_axis(axis, w.ndim, name=name)
    whole = float(_dynamic_rows(channel_rows(w, None), bits, rounding)[0])
    if axis is None:
        return whole
    rows = channel_rows(w, axis)
    return _dynamic_rows(rows, bits, rounding, extra=np.full(rows.shape[0], whole))


_RULE_FUNCTIONS = {
    "max": boundary_max,
    "percentile": boundary_percentile,
    "sigma": boundary_sigma,
    "aciq-gauss": boundary_aciq_gauss,
    "aciq-laplace": boundary_aciq_laplace,
    "kl": boundary_kl,
    "kl-slides": boundary_kl_slides,
    "dynamic": boundary_dynamic,
}


def boundary(w, bits, *, rule="dynamic", axis=None, **params):
    """The clipping boundary of `rule` (one of RULES); params go to the rule (p=, n=, rounding=, name=)."""
    if rule not in _RULE_FUNCTIONS:
        raise ValueError(f"unknown clipping rule {rule!r}; choose one of {RULES}")
    return _RULE_FUNCTIONS[rule](w, bits, axis=axis, **params)
