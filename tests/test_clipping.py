"""sqref.clipping: the ACIQ constants against the published table, hand-computed
boundaries for every rule, the kl-slides rule against the TensorRT slides' loop
(the kl rule against NVIDIA's code: tests/test_calibration.py), the dynamic rule
against a plain-Python enumeration of every breakpoint, and hypothesis
properties: every boundary in (0, max|w|], the dynamic rule never worse than
any other rule, per-channel never worse than per-tensor.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special

from sqref import clipping, mse_search, quant
from sqref.clipping import RULES, aciq_constant, boundary
from sqref.quant import quant_mse
from test_quant import bits_st, roundings, weight_tensors  # tests/ is on sys.path (pytest's default import mode)

OTHER_RULES = tuple(r for r in RULES if r != "dynamic")


# ----------------------------------------------------------------------------- ACIQ constants
# Banner et al. 2019, table of alpha* / spread; the same numbers are in their code (ACIQ, Distiller).
PUBLISHED = {"gauss": {2: 1.71, 3: 2.15, 4: 2.55, 8: 3.92}, "laplace": {2: 2.83, 3: 3.89, 4: 5.03, 8: 9.89}}


def aciq_error(c, bits, distribution):
    rounding = c * c / (3 * 4.0**bits)
    if distribution == "laplace":
        return 2 * math.exp(-c) + rounding
    return (c * c + 1) * special.erfc(c / math.sqrt(2)) - math.sqrt(2 / math.pi) * c * math.exp(-c * c / 2) + rounding


@pytest.mark.parametrize("distribution", ["gauss", "laplace"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_aciq_constants_match_the_published_table(distribution, bits):
    c = aciq_constant(bits, distribution)
    published = PUBLISHED[distribution][bits]
    # The table gives 2 decimals, but not always rounded: 2.559 is printed 2.55, 3.897 -> 3.89 and
    # 9.897 -> 9.89 (truncated) while 5.0286 -> 5.03 (rounded). So: within 0.01, and equal to the
    # computed value either truncated or rounded to 2 decimals.
    assert abs(c - published) < 0.01
    assert round(published * 100) in (math.floor(c * 100), round(c * 100))
    # and it is a minimum of the analytic error, to the optimiser's tolerance (xatol 1e-10)
    for step in (1e-6, -1e-6):
        assert aciq_error(c, bits, distribution) <= aciq_error(c + step, bits, distribution)


def test_aciq_constants_are_cached():
    aciq_constant.cache_clear()
    aciq_constant(4, "gauss")
    aciq_constant(4, "gauss")
    assert aciq_constant.cache_info().hits == 1 and aciq_constant.cache_info().misses == 1
    with pytest.raises(ValueError, match="'gauss' or 'laplace'"):
        aciq_constant(4, "cauchy")


# ----------------------------------------------------------------------------- literal cases
# |W10| sorted = [0 x 8, 10, 10]; mean 0, std = sqrt(200 / 10) = sqrt(20) = 4.4721, b = mean|w| = 2.
W10 = np.array([-10.0, 0, 0, 0, 0, 0, 0, 0, 0, 10])
# W10 + 1: mean 1, same std and b; |w| sorted = [1 x 8, 9, 11].
W11 = W10 + 1


def test_max_literal():
    assert boundary(W10, 4, rule="max") == 10.0
    assert boundary(W11, 4, rule="max") == 11.0


def test_percentile_literal():
    # pos = (n - 1) * p / 100 = 9 * 0.9999 = 8.9991, between a_(8) = 10 and a_(9) = 10
    assert boundary(W10, 4, rule="percentile") == 10.0
    # p = 85: pos = 7.65, between a_(7) = 0 and a_(8) = 10 -> 6.5
    assert boundary(W10, 4, rule="percentile", p=85) == pytest.approx(6.5, rel=1e-15)
    # p = 50: pos = 4.5 -> 0, which would clip everything: falls back to max|w| = 10
    assert boundary(W10, 4, rule="percentile", p=50) == 10.0
    # W11 default: a_(8) = 9, a_(9) = 11 -> 9 + 0.9991 * 2 = 10.9982
    assert boundary(W11, 4, rule="percentile") == pytest.approx(10.9982, rel=1e-12)  # float lerp
    # the same number as numpy's default (linear) method
    a = np.abs(np.random.default_rng(1).standard_t(2.5, 1001))
    assert boundary(a, 4, rule="percentile", p=97.3) == pytest.approx(np.percentile(a, 97.3), rel=1e-12)


def test_sigma_literal():
    assert boundary(W10, 4, rule="sigma", n=1.0) == pytest.approx(math.sqrt(20), rel=1e-14)  # 4.4721
    assert boundary(W10, 4, rule="sigma") == 10.0  # 3 * 4.4721 = 13.4 > max: capped
    assert boundary(W11, 4, rule="sigma", n=1.0) == pytest.approx(1 + math.sqrt(20), rel=1e-14)  # |mean| + std


def test_aciq_literal():
    # gauss, 2 bits: 1.71064 * 4.4721 = 7.6502;  with the mean: 8.6502
    assert boundary(W10, 2, rule="aciq-gauss") == pytest.approx(7.6502, rel=1e-4)  # 5 digits written
    assert boundary(W11, 2, rule="aciq-gauss") == pytest.approx(1 + aciq_constant(2, "gauss") * math.sqrt(20))
    # laplace, 2 bits: 2.83068 * b = 2.83068 * 2 = 5.6614; with the mean: 6.6614
    assert boundary(W10, 2, rule="aciq-laplace") == pytest.approx(5.6614, rel=1e-4)
    assert boundary(W11, 2, rule="aciq-laplace") == pytest.approx(1 + 2 * aciq_constant(2, "laplace"))
    # laplace, 4 bits: 5.02864 * 2 = 10.06 > max: capped
    assert boundary(W10, 4, rule="aciq-laplace") == 10.0


def test_kl_slides_literal():
    # 2 bits (2 levels), bin width 2048 / 2048 = 1: hist[0] = 30, hist[1] = 10, hist[2047] = 1.
    # i = 2: P = [30, 11] / 41, Q = [30, 10] / 40 -> KL = 30/41 ln(40/41) + 11/41 ln(44/41) = 0.00088
    # i in 3..2047: the last kept bin is empty but there is an outlier -> KL infinite (skipped)
    # i = 2048: groups [0, 1024) and [1024, 2048): Q = [20, 20, ..., 1] vs P = [30, 10, ..., 1]
    #           -> KL = (30 ln 1.5 + 10 ln 0.5) / 41 = 0.1276
    # best i = 2 -> alpha = (2 + 0.5) * 1 = 2.5
    w = np.array([0.5] * 30 + [-1.5] * 10 + [2048.0])
    assert boundary(w, 2, rule="kl-slides") == 2.5


def test_kl_literal():
    # The same tensor under NVIDIA's rule: bins[0] = bins[1] = 10, so hist = [10, 10, 0 ..., 0, 1].
    # Candidates start at i = 128: bins 2..127 are empty and the outlier sits in bin 2047, so every
    # i < 2048 has P > 0 where Q = 0 (KL infinite); i = 2048 keeps everything: alpha = 2048 (= max|w|).
    w = np.array([0.5] * 30 + [-1.5] * 10 + [2048.0])
    assert boundary(w, 2, rule="kl") == 2048.0
    # 1000 exact zeros, then one value in each bin 1..2047 (bin width 1): hist = [1000, 1, 1, ..., 1].
    # bins[0] = bins[1] makes it flat; at i = 2048 P == Q exactly (KL = 0), and every i < 2048 has the
    # outliers piled in its last bin (KL > 0): alpha = 2048 * 1 = max|w|.
    w = np.concatenate([np.zeros(1000), np.arange(1, 2047) + 0.5, [2048.0]])
    assert boundary(w, 8, rule="kl") == 2048.0


def test_dynamic_literal():
    # 2 bits: grid {-alpha, 0, alpha}. w = [1 x 8, 3]. For alpha < 2 every 1 rounds to alpha and 3 clips
    # to alpha: SSE = 8 (1 - alpha)^2 + (3 - alpha)^2, least at alpha = 11/9 with SSE 32/9. For alpha >= 2
    # the ones round to 0: SSE >= 8. So alpha* = 11/9, MSE = 32/81.
    w = np.array([1.0] * 8 + [3.0])
    alpha = boundary(w, 2)
    # qmax = 1, so s = alpha: the float32 nearest 11/9 (either neighbour; 9 (s - 11/9)^2 decides)
    assert alpha in (float(np.nextafter(np.float32(11 / 9), np.float32(0))), float(np.float32(11 / 9)),
                     float(np.nextafter(np.float32(11 / 9), np.float32(2))))
    assert abs(alpha - 11 / 9) <= float(np.spacing(np.float32(11 / 9))) / 2
    assert quant_mse(w, alpha=alpha, bits=2) == pytest.approx(32 / 81, rel=1e-13)  # flat at the minimum: 9 eps^2
    # values on the grid s = 0.25 (3 bits, alpha = 0.75) are reproduced exactly
    w = np.array([-0.75, -0.25, 0, 0.25, 0.5, 0.75])
    alpha = boundary(w, 3)
    assert quant_mse(w, alpha=alpha, bits=3) == 0.0 and quant.grid_params(bits=3, alpha=alpha)[0] == 0.25


def test_dynamic_issue_example():
    # The audit's example: 144 Laplace weights at 5 bits. The old grid search returned 6.0212
    # (MSE 0.013454); the exact argmin is 5.557283163070679 (MSE 0.013237, 1.6% lower).
    x = np.random.default_rng(183).laplace(size=144)
    alpha = boundary(x, 5)
    assert alpha == pytest.approx(5.557283163070679, rel=1e-7)
    assert quant_mse(x, alpha=alpha, bits=5) == pytest.approx(0.013237421961723646, rel=1e-12)
    assert quant_mse(x, alpha=alpha, bits=5) == pytest.approx(oracle_mse(x, 5), rel=1e-12)


def test_per_channel_literal():
    w = np.stack([W10, W11])
    np.testing.assert_allclose(boundary(w, 2, rule="aciq-laplace", axis=0),
                               [2 * aciq_constant(2, "laplace"), 1 + 2 * aciq_constant(2, "laplace")], rtol=1e-15)
    np.testing.assert_array_equal(boundary(w, 4, rule="max", axis=0), [10.0, 11.0])
    np.testing.assert_array_equal(boundary(w.T, 4, rule="max", axis=1), [10.0, 11.0])
    np.testing.assert_array_equal(boundary(np.zeros((3, 4)), 4, rule="dynamic", axis=0), [0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- KL against the slides
def kl_oracle(a, bits):
    """KL(P || Q) for every candidate i, as the TensorRT slides' loop (Migacz 2017), plainly."""
    amax = a.max()
    hist = np.bincount(np.minimum((a / amax * 2048).astype(np.int64), 2047), minlength=2048).astype(np.float64)
    levels = 2 ** (bits - 1)
    kl = {}
    for i in range(levels, 2049):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers into the last bin
        q = np.zeros(i)
        width = i // levels
        for g in range(levels):  # merge, then expand over the non-empty bins
            lo, hi = g * width, (i if g == levels - 1 else (g + 1) * width)
            nonempty = hist[lo:hi] > 0
            if nonempty.any():
                q[lo:hi][nonempty] = hist[lo:hi].sum() / nonempty.sum()
        if q.sum() == 0:  # every kept bin is empty: all of P is outliers, Q is nothing
            kl[i] = math.inf
            continue
        p, q = p / p.sum(), q / q.sum()
        if ((p > 0) & (q == 0)).any():
            kl[i] = math.inf
        else:
            kl[i] = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
    return kl, amax / 2048


@pytest.mark.parametrize("kind, bits", [("normal", 2), ("normal", 4), ("laplace", 3), ("student_t", 8),
                                        ("skewed", 4), ("sparse", 2)])
def test_kl_slides_matches_the_slides_loop(kind, bits):
    rng = np.random.default_rng(7)
    x = {"normal": rng.normal(size=20000), "laplace": rng.laplace(size=20000),
         "student_t": rng.standard_t(2.5, 20000), "skewed": rng.lognormal(0, 0.75, 20000) - 0.4,
         "sparse": rng.normal(size=300)}[kind]
    kl, width = kl_oracle(np.abs(x), bits)
    alpha = boundary(x, bits, rule="kl-slides")
    i = 2048 if alpha == np.abs(x).max() else round(alpha / width - 0.5)
    # The prefix-sum formula and the loop sum in different orders; near-equal KLs may swap by ~1e-15.
    assert kl[i] <= min(kl.values()) + 1e-12


# ----------------------------------------------------------------------------- dynamic against every breakpoint
TINY32 = float(np.finfo(np.float32).tiny)


def oracle_sse(x, bits, rounding="half_even"):
    """The least SSE over every float32 scale s in (0, s_top], enumerating every piece in plain Python.

    Breakpoints: s = |x_i| / (j - 1/2), j = 1..qmax (a weight changes code there; code qmax is
    clipping). Between two consecutive ones the codes are fixed (computed directly, by rounding at
    the piece's midpoint) and SSE(s) = S2 - 2 s A + s^2 B: least at s = A / B, clamped into the
    piece. The float32 neighbours of the best pieces' least points are evaluated exactly.
    """
    a = sorted(abs(float(v)) for v in np.ravel(x))
    qmax = 2 ** (bits - 1) - 1
    if a[-1] == 0:
        return 0.0
    s_top = float(np.float32(a[-1] / qmax))  # the float32 scale of alpha = max|x|
    cuts = {v / (j - 0.5) for v in a if v > 0 for j in range(1, qmax + 1)}
    cuts = sorted({c for c in cuts if TINY32 < c < s_top} | {TINY32, s_top})
    s2 = sum(v * v for v in a)
    pieces = []
    for lo, hi in zip(cuts, cuts[1:]):
        mid = (lo + hi) / 2
        codes = [min(round(v / mid), qmax) for v in a]
        big_a, big_b = sum(c * v for c, v in zip(codes, a)), sum(c * c for c in codes)
        s = min(max(big_a / big_b, lo), hi) if big_b else hi
        pieces.append((s2 - 2 * s * big_a + s * s * big_b, s))
    least = min(p[0] for p in pieces)
    slack = 1e-9 * least + 256 * np.finfo(np.float64).eps * s2  # the float rounding of S2 - 2 s A + s^2 B
    scales = set()
    for sse, s in pieces:
        if sse <= least + slack:
            f = np.float32(s)
            for g in (np.nextafter(f, np.float32(0)), f, np.nextafter(f, np.float32(np.inf))):
                scales.add(min(max(float(g), TINY32), s_top))
    return float(quant.sum_sq_error(np.ravel(x), sorted(scales), qmax, rounding).min())


def oracle_mse(x, bits, rounding="half_even"):
    return oracle_sse(x, bits, rounding) / np.size(x)


@st.composite
def small_channels(draw, max_channels=1):
    """A (C, n) tensor, n <= 24, of one of the issue's distributions; ties and zeros drawn on purpose."""
    kind = draw(st.sampled_from(["normal", "laplace", "t2", "t3", "lognormal", "bimodal", "sparse", "constant"]))
    shape = (draw(st.integers(1, max_channels)), draw(st.integers(1, 24)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = {"normal": lambda: rng.normal(size=shape), "laplace": lambda: rng.laplace(size=shape),
         "t2": lambda: rng.standard_t(2, shape), "t3": lambda: rng.standard_t(3, shape),
         "lognormal": lambda: rng.lognormal(0, 1, shape),
         "bimodal": lambda: rng.normal(0, 0.2, shape) + rng.choice([-1.5, 1.5], shape),
         "sparse": lambda: rng.normal(size=shape) * (rng.random(shape) < 0.2),
         "constant": lambda: np.full(shape, draw(st.sampled_from([1.0, -0.37, 0.0])))}[kind]()
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (w * 10.0 ** draw(st.floats(-3, 3))).astype(dtype)


def assert_close_to_oracle(got, want):
    assert got <= want * (1 + 1e-12) + 1e-300 and got >= want * (1 - 1e-12), (got, want, got / want - 1 if want else 0)


@given(small_channels(), bits_st, roundings)
def test_dynamic_is_the_exact_argmin_per_tensor(w, bits, rounding):
    got = quant_mse(w, alpha=boundary(w, bits, rounding=rounding), bits=bits, rounding=rounding)
    assert_close_to_oracle(got, oracle_mse(w, bits, rounding))


@given(small_channels(max_channels=3), bits_st, roundings)
def test_dynamic_is_the_exact_argmin_per_channel(w, bits, rounding):
    # Per channel, the per-tensor boundary is one more candidate (it may exceed the channel's max|w|),
    # so each channel gets the better of its own exact optimum and the per-tensor grid.
    got = quant_mse(w, alpha=boundary(w, bits, axis=0, rounding=rounding), bits=bits, axis=0, rounding=rounding)
    whole = quant_mse(w, alpha=boundary(w, bits, rounding=rounding), bits=bits, axis=0, rounding=rounding)
    for c in range(w.shape[0]):
        assert_close_to_oracle(got[c], min(oracle_mse(w[c], bits, rounding), whole[c]))


@given(small_channels(), bits_st)
def test_the_bracket_is_exact_too(w, bits):
    # Force the large-tensor path (branch and bound, then enumeration inside the bracket) on small
    # tensors, where the oracle can check it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mse_search, "ENUMERATE", 0)
        patch.setattr(mse_search, "BRACKET_BUDGET", 8)
        alpha = boundary(w, bits)
    assert_close_to_oracle(quant_mse(w, alpha=alpha, bits=bits), oracle_mse(w, bits))


@pytest.mark.parametrize("kind", ["normal", "laplace", "t3", "lognormal"])
def test_dynamic_on_large_tensors_is_within_the_stated_bound(kind):
    # 20,000 weights: above ENUMERATE breakpoints from 4 bits up, so the bracket is used. Compare with
    # the full enumeration of every breakpoint (the small-tensor path, forced): the stated bound is
    # tol / n, tol = mse_search.model_tolerance.
    rng = np.random.default_rng(11)
    x = {"normal": rng.normal(size=20000), "laplace": rng.laplace(size=20000), "t3": rng.standard_t(3, 20000),
         "lognormal": rng.lognormal(0, 0.75, 20000) - 0.4}[kind]
    for bits in (3, 5, 8):
        got = quant_mse(x, alpha=boundary(x, bits), bits=bits)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mse_search, "ENUMERATE", 1 << 40)
            full = quant_mse(x, alpha=boundary(x, bits), bits=bits)
        qmax = 2 ** (bits - 1) - 1
        s_top = float(np.float32(np.abs(x).max() / qmax))
        tol = mse_search.model_tolerance(float(np.sum(x * x)), x.size, qmax, s_top)
        assert got <= full + tol / x.size, (bits, got, full)


# ----------------------------------------------------------------------------- properties
@given(weight_tensors(), bits_st, st.sampled_from([None, 0]))
def test_every_rule_stays_in_zero_to_max(w, bits, axis):
    x = w.astype(np.float64)
    if axis is None:
        top, whole = np.abs(x).max(), np.abs(x).max()
    else:
        top, whole = np.abs(x).reshape(w.shape[0], -1).max(axis=1), np.abs(x).max()
    for rule in RULES:
        alpha = np.asarray(boundary(w, bits, rule=rule, axis=axis))
        assert alpha.shape == (() if axis is None else (w.shape[0],))
        np.testing.assert_array_equal(alpha == 0, top == 0)  # 0 exactly for all-zero channels
        assert (alpha >= 0).all()
        if rule == "dynamic" and axis is not None:
            # a channel may take the per-tensor boundary instead (boundary_dynamic's NOTE), never more
            assert ((alpha <= top) | (alpha == boundary(w, bits))).all() and (alpha <= whole).all()
        else:
            assert (alpha <= top).all()


@given(weight_tensors(), bits_st, roundings, st.sampled_from([None, 0]))
def test_dynamic_is_never_worse_than_any_other_rule(w, bits, rounding, axis):
    dynamic = quant_mse(w, alpha=boundary(w, bits, axis=axis, rounding=rounding), bits=bits, axis=axis, rounding=rounding)
    for rule in OTHER_RULES:
        other = quant_mse(w, alpha=boundary(w, bits, rule=rule, axis=axis), bits=bits, axis=axis, rounding=rounding)
        # exact: the other rule's boundary is a candidate, evaluated exactly unless proven to lose (mse_search.screen)
        assert (np.asarray(dynamic) <= other).all(), (rule, dynamic, other)


@given(weight_tensors(), bits_st, st.sampled_from([None, 0]))
def test_the_guarantee_does_not_rest_on_the_search(w, bits, axis):
    # With a search that only proposes max|w| / 2, the dynamic rule must still beat every other
    # rule: their boundaries are its candidates.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clipping, "search_scales", lambda a, cum1, cum2, bits: [[float(row[-1]) / 2] for row in a])
        dynamic = quant_mse(w, alpha=boundary(w, bits, axis=axis), bits=bits, axis=axis)
    for rule in OTHER_RULES:
        assert (np.asarray(dynamic) <= quant_mse(w, alpha=boundary(w, bits, rule=rule, axis=axis), bits=bits, axis=axis)).all()


@given(weight_tensors(), bits_st, roundings, st.sampled_from([None, 0]))
def test_no_rule_beats_the_result_nor_ties_it_at_a_smaller_scale(w, bits, rounding, axis):
    # The mechanism of the guarantee: every other rule's boundary is a candidate, evaluated exactly
    # unless the prefix-sum model proves it worse (mse_search.screen), and a tie goes to the smallest
    # scale. So the result's (SSE, scale) is at most every rule's, as the exact sum computes the SSE
    # (sum_sq_error, before any division by n, which could merge two sums one ulp apart).
    qmax = 2 ** (bits - 1) - 1
    rows = quant.channel_rows(w, axis)

    def sse_and_scale(alpha):
        alpha = np.broadcast_to(np.atleast_1d(alpha), (rows.shape[0],))
        scales = quant.grid_params(bits=bits, alpha=alpha)[0].astype(np.float64)
        return [(float(quant.sum_sq_error(row, [s], qmax if a > 0 else 0, rounding)[0]), float(s))
                for row, s, a in zip(rows, scales, alpha)]

    mine = sse_and_scale(boundary(w, bits, axis=axis, rounding=rounding))
    for rule in OTHER_RULES:
        for c, (ours, theirs) in enumerate(zip(mine, sse_and_scale(boundary(w, bits, rule=rule, axis=axis)))):
            assert ours <= theirs, (rule, c, ours, theirs)


@given(weight_tensors(min_ndim=2), bits_st, roundings)
def test_per_channel_dynamic_is_never_worse_than_per_tensor(w, bits, rounding):
    per_channel = quant_mse(w, alpha=boundary(w, bits, axis=0, rounding=rounding), bits=bits, axis=0, rounding=rounding)
    per_tensor = quant_mse(w, alpha=boundary(w, bits, rounding=rounding), bits=bits, axis=0, rounding=rounding)
    # exact, channel by channel: the per-tensor boundary is a candidate of every channel
    assert (per_channel <= per_tensor).all()
    # and so for the whole tensor (channels have equal sizes); the two means sum in different orders
    assert per_channel.mean() <= quant_mse(w, alpha=boundary(w, bits, rounding=rounding), bits=bits) * (1 + 1e-12)


@given(weight_tensors(kinds=("normal", "laplace", "student_t", "skewed")), bits_st, st.floats(0.01, 1.0))
def test_fast_sse_model_agrees_with_the_exact_sum(w, bits, fraction):
    x = w.astype(np.float64).ravel()
    a = np.sort(np.abs(x))[None]
    cum1, cum2 = np.empty((1, a.size + 1)), np.empty((1, a.size + 1))
    mse_search.prefix_sums(a, cum1, cum2)
    qmax = 2 ** (bits - 1) - 1
    scale = mse_search.grid_scales([fraction * a[0, -1]], bits)
    fast = mse_search.approx_sse(a, cum1, cum2, np.zeros(1, dtype=np.int64), scale, qmax)
    exact = quant.sum_sq_error(x, scale, qmax)
    # S2 - 2 c S1 + c^2 n cancels: its rounding is a few eps times the size of the terms, not of the
    # result; model_tolerance bounds it (the SSE at a scale <= s_top is what the bound is derived for)
    atol = mse_search.model_tolerance(float(cum2[0, -1]), a.size, qmax, scale[0])
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=atol)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_dynamic_finds_the_minimum_of_a_smooth_curve(bits):
    # 20000 normal weights: the MSE curve is smooth, so a dense exact scan brackets the true minimum.
    x = np.random.default_rng(3).normal(size=20000)
    qmax = 2 ** (bits - 1) - 1
    alphas = np.linspace(0.01, 1, 2000) * np.abs(x).max()
    scan = quant.sum_sq_error(x, mse_search.grid_scales(alphas, bits), qmax).min() / x.size
    # The search ends with steps of ~1e-7 relative, far finer than the scan's 1/2000 of max|w|, so it
    # must do at least as well; 1e-7 relative is the float rounding of the search's prefix-sum SSE
    # model (~1e-9 here), which may steer it between points whose MSEs differ by less than that.
    assert quant_mse(x, alpha=boundary(x, bits), bits=bits) <= scan * (1 + 1e-7)


def test_dynamic_boundary_tightens_as_bits_fall():
    x = np.random.default_rng(4).normal(size=20000)
    alphas = [boundary(x, bits) for bits in range(2, 9)]
    assert all(a < b for a, b in zip(alphas, alphas[1:])), alphas


# ----------------------------------------------------------------------------- dispatch and bad input
def test_rules_and_dispatch():
    assert RULES == ("max", "percentile", "sigma", "aciq-gauss", "aciq-laplace", "kl", "kl-slides", "dynamic")
    for rule in RULES:
        function = getattr(clipping, "boundary_" + rule.replace("-", "_"))
        assert boundary(W11, 3, rule=rule) == function(W11, 3)
    assert boundary(W11, 3) == clipping.boundary_dynamic(W11, 3)  # dynamic is the default
    with pytest.raises(ValueError, match="unknown clipping rule 'minmax'.*'kl'"):
        boundary(W11, 3, rule="minmax")
    with pytest.raises(TypeError, match="'q'"):
        boundary(W11, 3, rule="percentile", q=99)
    with pytest.raises(ValueError, match="must be in \\(0, 100\\], got 0"):
        boundary(W11, 3, rule="percentile", p=0)
    with pytest.raises(ValueError, match="n must be a finite number > 0, got -1"):
        boundary(W11, 3, rule="sigma", n=-1)


@pytest.mark.parametrize("rule", RULES)
def test_bad_input_for_every_rule(rule):
    for bits, error in ((1, ValueError), (9, ValueError), (2.5, TypeError), ("8", TypeError), (True, TypeError)):
        with pytest.raises(error, match=repr(bits) if error is TypeError else str(bits)):
            boundary(W11, bits, rule=rule)
    w = np.array([0.5, np.nan])
    with pytest.raises(ValueError, match="layer 'conv2' weight contains NaN"):
        boundary(w, 4, rule=rule, name="conv2")
    with pytest.raises(ValueError, match="empty"):
        boundary(np.zeros(0), 4, rule=rule)
    with pytest.raises(ValueError, match="axis 1 is out of range"):
        boundary(W11, 4, rule=rule, axis=1)
    assert boundary(np.zeros(5, np.float32), 4, rule=rule) == 0.0  # all zero -> 0 -> scale 1.0
