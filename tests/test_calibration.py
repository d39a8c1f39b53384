"""The `kl` rule (sqref.clipping.kl_bins_kept) against a literal transcription of the
implementation TensorRT users run, NVIDIA's pytorch-quantization `_compute_amax_entropy`,
on hand-made histograms; and the zero spike of ReLU outputs, in the rule and in
activation calibration (sqref.integer.calibration).
"""
import numpy as np
import pytest
from scipy.stats import entropy

from sqref import clipping
from sqref.integer import calibration


def nvidia_amax_entropy(hist, bin_edges, num_bits, unsigned=False, stride=1, start_bin=128):
    """NVIDIA pytorch-quantization's entropy calibration (calib/histogram.py), step by step, in plain loops.

    Returns the threshold bin_edges[i*] and i*. Written from the published code's steps:
    zero the spike (bins[0] = bins[1]); for each i from start_bin: P = bins[:i] with everything
    beyond folded into its last bin; map bin b to group digitize(b, linspace(0, i, nbins + 1)) - 1,
    empty bins excluded; Q = each group's mass over its non-empty bins; KL = scipy entropy(P, Q);
    the LAST argmin wins.
    """
    bins = np.array(hist, dtype=np.float64)
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences, arguments = [], []
    for i in range(start_bin, len(bins) + 1, stride):
        space = np.linspace(0, i, num=nbins + 1)
        group_of = np.digitize(range(i), space) - 1
        group_of[bins[:i] == 0] = -1  # empty bins take no part in Q
        mass = np.zeros(nbins)
        members = np.zeros(nbins)
        for b in range(i):
            if group_of[b] != -1:
                mass[group_of[b]] += bins[b]
                members[group_of[b]] += 1
        q = np.zeros(i)
        for b in range(i):
            if group_of[b] != -1:
                q[b] = mass[group_of[b]] / members[group_of[b]]
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        divergences.append(entropy(p, q))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    best = arguments[last_argmin]
    return float(bin_edges[best]), best, dict(zip(arguments, divergences))


def hand_made(kind, n_bins=512):
    """Histograms with the features that matter: a zero spike, empty bins, a far outlier, ties."""
    rng = np.random.default_rng(3)
    if kind == "relu":  # half the mass in bin 0, a half-normal tail
        h = np.bincount(np.minimum((np.abs(rng.normal(size=20000)) / 4.2 * n_bins).astype(int), n_bins - 1),
                        minlength=n_bins)
        h[0] += 20000
    elif kind == "flat-with-spike":
        h = np.ones(n_bins, dtype=int)
        h[0] = 1000
    elif kind == "gaps-and-outlier":
        h = np.zeros(n_bins, dtype=int)
        h[:200:3] = rng.integers(1, 50, 67)
        h[-1] = 2
    elif kind == "decaying":
        h = np.round(1000 * np.exp(-np.arange(n_bins) / 40.0)).astype(int)
        h[-1] += 1
    else:  # "sparse-random"
        h = rng.integers(0, 4, n_bins) * (rng.random(n_bins) < 0.3)
        h[1], h[-1] = 5, 1
    return h


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", ["relu", "flat-with-spike", "gaps-and-outlier", "decaying", "sparse-random"])
def test_kl_matches_nvidia_on_hand_made_histograms(kind, bits):
    hist = hand_made(kind)
    edges = np.linspace(0.0, 3.0, hist.size + 1)
    _, best, kl = nvidia_amax_entropy(hist, edges, bits)
    got = clipping.kl_bins_kept(hist, bits)
    # The prefix-sum form and the loop sum in different orders: equal KLs may differ by ~1e-15 and
    # swap a tie, so the chosen i must be a minimum to that precision; on these histograms it is the same i.
    assert kl[got] <= min(kl.values()) + 1e-12
    assert got == best


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kl_sums_are_bitwise_the_same_pair_by_pair_or_row_by_row(bits):
    # kl_divergences scores a histogram with most candidates scored row by row (one shared index) and
    # the others pair by pair. Forced each way on the hand-made histograms and on full-size ones, no
    # divergence may differ in any bit (so neither can the chosen bins).
    rng = np.random.default_rng(5)
    hand = np.stack([hand_made(kind) for kind in ("relu", "flat-with-spike", "gaps-and-outlier", "decaying",
                                                  "sparse-random")])
    full = np.stack([np.bincount(np.minimum((np.abs(rng.standard_t(df, 30000)) / 6 * 2048).astype(int), 2047),
                                 minlength=2048) for df in (2, 5, 30)])
    for block in (hand, full):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(clipping, "KL_DENSE", 0.0)  # every row by row
            i, rows = clipping.kl_divergences(block, bits)
            patch.setattr(clipping, "KL_DENSE", 2.0)  # every pair by pair
            j, pairs = clipping.kl_divergences(block, bits)
        np.testing.assert_array_equal(i, j)
        assert np.isfinite(rows).sum() > block.shape[0]  # something was scored
        np.testing.assert_array_equal(rows.view(np.int64), pairs.view(np.int64))


def test_kl_literal_histogram():
    # 160 bins, 8 bits (L = 128): bins 0..127 hold 2 each, bins 128..158 are empty, bin 159 holds 1.
    # i in 129..159: the last kept bin is empty and there are outliers: KL infinite.
    # i = 128: P = [2 x 127, 3] against Q = [2 x 128] (one bin per group): KL > 0.
    # i = 160: bin b is in group floor(b * 128 / 160); every group's non-empty bins hold equal counts
    # (2, or bin 159 alone in group 127), and Q spreads a group's mass over its non-empty bins only,
    # so Q = P and KL = 0: i* = 160, threshold = 160 bin widths.
    hist = np.zeros(160)
    hist[:128] = 2
    hist[159] = 1
    assert clipping.kl_bins_kept(hist, 8) == 160
    assert nvidia_amax_entropy(hist, np.arange(161.0), 8)[1] == 160


def relu_normal(n, seed=0):
    return np.maximum(np.random.default_rng(seed).normal(size=n), 0.0)


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_kl_keeps_the_range_of_relu_outputs(n):
    x = relu_normal(n)
    assert clipping.boundary_kl(x, 8) >= 0.8 * x.max()
    # the slides' variant keeps the spike and collapses (documented in docs/method.md section 2)
    assert clipping.boundary_kl_slides(x, 8) < 0.6 * x.max()


def test_kl_on_relu_outputs_has_a_small_uint8_error():
    # The measure: the uint8 error of the calibrated range (0.44 x max gave MSE 8.1e-3).
    x = relu_normal(100_000)
    lo, hi = calibration.activation_range(x, rule="kl")
    p = calibration.act_params(lo, hi)
    q = np.clip(np.rint(x / p.scale) + p.zero_point, 0, 255)
    mse = np.mean((x - p.scale * (q - p.zero_point)) ** 2)
    assert lo == 0.0 and hi >= 0.8 * x.max() and mse < 1e-4


def test_calibration_kl_uses_the_nvidia_variant():
    x = relu_normal(50_000, seed=1).astype(np.float32)
    lo, hi = calibration.activation_range(x, rule="kl")
    assert hi == clipping.boundary_kl(x.astype(np.float64), 8)
    assert hi != clipping.boundary_kl_slides(x.astype(np.float64), 8)
