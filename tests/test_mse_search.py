"""sqref.mse_search: the search batched over channels gives each channel what it gives that channel alone,
its sums keep their fixed orders, and boundary_dynamic keeps the boundaries it returned before the search
was batched (golden values). Its exactness against every breakpoint: tests/test_clipping.py.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqref import clipping, mse_search, quant
from test_quant import exact_sse, weight_tensors  # tests/ is on sys.path (pytest's default import mode)


def prefix_sums(x):
    """Sorted |x| of each row (float64) and the prefix sums of a and a**2, as boundary_dynamic builds them."""
    a = np.sort(np.abs(x), axis=1).astype(np.float64)
    cum1, cum2 = np.empty((a.shape[0], a.shape[1] + 1)), np.empty((a.shape[0], a.shape[1] + 1))
    mse_search.prefix_sums(a, cum1, cum2)
    return a, cum1, cum2


@st.composite
def channel_blocks(draw):
    """(C, m) channels of mixed distributions, none all zero; ties and zeros drawn on purpose."""
    rows, m = draw(st.integers(1, 5)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = [lambda: rng.normal(size=m), lambda: rng.laplace(size=m), lambda: rng.standard_t(2, m),
             lambda: rng.lognormal(0, 1, m), lambda: rng.integers(-20, 21, m) * 0.125,
             lambda: rng.normal(size=m) * (rng.random(m) < 0.2)]
    x = np.stack([kinds[draw(st.integers(0, len(kinds) - 1))]() for _ in range(rows)])
    x[:, 0] = 1.0  # no all-zero channel (boundary_dynamic does not search those)
    return x.astype(draw(st.sampled_from([np.float32, np.float64])))


@given(channel_blocks(), st.integers(2, 8), st.sampled_from([(1 << 15, 1 << 13), (0, 8), (0, 200)]))
def test_a_channel_gets_the_same_scales_alone_or_in_a_block(x, bits, limits):
    # (0, 8) and (0, 200): the bracket forced on small channels, so that it stops at different levels
    # (and falls back at the last one) in different channels of the same block.
    a, cum1, cum2 = prefix_sums(x)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mse_search, "ENUMERATE", limits[0])
        patch.setattr(mse_search, "BRACKET_BUDGET", limits[1])
        together = mse_search.search_scales(a, cum1, cum2, bits)
        alone = [mse_search.search_scales(a[r:r + 1], cum1[r:r + 1], cum2[r:r + 1], bits)[0] for r in range(len(a))]
    assert together == alone


# ----------------------------------------------------------------------------- prefix sums and the model's tolerance
EPS = np.finfo(np.float64).eps


def test_prefix_sums_literal():
    # 1 + four halves of an ulp: a running sum rounds each addition back to 1 (a tie, to even); the
    # exact sum 1 + 2**-51 is a float64, and the corrected prefix sums end on it.
    a = np.array([[1.0] + [2.0**-53] * 4])
    cum1, cum2 = np.empty((1, 6)), np.empty((1, 6))
    mse_search.prefix_sums(a, cum1, cum2)
    assert np.cumsum(a).tolist() == [1.0] * 5
    assert cum1[0, 3] == 1.0 + 2.0**-52 and cum1[0, 5] == 1.0 + 2.0**-51  # the exact sums (both float64)


@given(st.lists(st.lists(st.one_of(st.just(0.0), st.floats(1e-100, 1e100)), min_size=1, max_size=40),
                min_size=1, max_size=3).filter(lambda r: len({len(v) for v in r}) == 1),
       st.integers(1, 9))
def test_prefix_sums_are_within_one_rounding_of_the_exact_sums(rows, chunk):
    # Naive loop oracle in exact rationals. Bound (docs/method.md, "Bound"): |cum - P_i| <= (eps/2 +
    # (i eps)**2) P_i for the sums of a; the sums of a**2 round each square first (eps/2 more). The
    # chunk is drawn small so that the correction crosses chunk boundaries.
    a = np.array(rows)
    cum1, cum2 = np.empty((a.shape[0], a.shape[1] + 1)), np.empty((a.shape[0], a.shape[1] + 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mse_search, "PREFIX_CHUNK", chunk)
        mse_search.prefix_sums(a, cum1, cum2)
    for r, row in enumerate(a):
        p1 = p2 = Fraction(0)
        for i, v in enumerate(row, start=1):
            p1, p2 = p1 + Fraction(v), p2 + Fraction(v) ** 2
            assert abs(Fraction(cum1[r, i]) - p1) <= Fraction(EPS / 2 + (i * EPS) ** 2) * p1
            assert abs(Fraction(cum2[r, i]) - p2) <= Fraction(EPS + (i * EPS) ** 2) * p2


def running_sum_worst_case(n, start=0.25):
    """n ascending float64 values near `start` whose running sum rounds up by almost half an ulp at every step."""
    out, total, v = [], 0.0, start
    for _ in range(n):
        exact = Fraction(total) + Fraction(v)
        ulp = Fraction(math.ulp(float(exact)))
        v = float(Fraction(v) + (ulp / 2 - exact % ulp) % ulp + Fraction(math.ulp(v)))  # just past the tie
        out.append(v)
        total += v
    return np.array(out)


@pytest.mark.parametrize("bits", [2, 8])
def test_the_model_stays_within_tol_where_a_running_sum_does_not(bits):
    # approx_sse (the upper bound U and the ranking of scales) against the SSE in exact rationals, on
    # 1,000 values built to make np.cumsum drift: its prefix sums put the model 2.6 tol off; the
    # corrected ones must keep it within tol, as the bound in docs/method.md derives.
    a = running_sum_worst_case(1000)[None]
    qmax = 2 ** (bits - 1) - 1
    s_top = float(mse_search.grid_scales(a[:, -1], bits)[0])
    tol = mse_search.model_tolerance(float(np.sum(a * a)), a.size, qmax, s_top)
    plain = [np.concatenate([[0.0], np.cumsum(v)])[None] for v in (a[0], a[0] ** 2)]
    _, cum1, cum2 = prefix_sums(a)
    row = np.zeros(1, dtype=np.int64)
    for s in (s_top, 0.7 * s_top, 0.3 * s_top):
        exact = exact_sse(a[0], s, qmax)
        model = mse_search.approx_sse(a, cum1, cum2, row, np.array([s]), qmax)[0]
        assert abs(Fraction(model) - exact) <= Fraction(tol)
        if s == s_top:
            drift = mse_search.approx_sse(a, plain[0], plain[1], row, np.array([s]), qmax)[0]
            assert abs(Fraction(drift) - exact) > 2 * Fraction(tol)  # the case still defeats a running sum


@pytest.mark.parametrize("values, bits", [("normal", 8), ("laplace", 4)])
def test_the_pieces_sums_stay_within_their_bound(values, bits):
    # pieces' A against the exact rational sum of code x |x| at the piece's midpoint, on float64 weights
    # (their sums round at every step; float32 ones often add up exactly). Derived bound (docs/method.md
    # section 2): |2 s (A - A_exact)| <= 12 eps Z and second-order terms, below tol / 4. B is an integer.
    rng = np.random.default_rng(5)
    x = rng.standard_normal(3000) if values == "normal" else rng.laplace(size=3000)
    a, cum1, cum2 = prefix_sums(x[None])
    qmax = 2 ** (bits - 1) - 1
    s_top = float(mse_search.grid_scales(a[:, -1], bits)[0])
    tol = mse_search.model_tolerance(float(cum2[0, -1]), a.size, qmax, s_top)
    left, right, big_a, big_b = mse_search.pieces(a, cum1, 0, qmax, np.array([0.05 * s_top]), np.array([s_top]))
    assert big_a.size > 5000  # many breakpoints: long running sums
    exact = [Fraction(v) for v in a[0]]
    for p in np.linspace(0, big_a.size - 1, 30).astype(int):
        if not left[p] < right[p]:
            continue
        codes = np.minimum(np.floor(a[0] / ((left[p] + right[p]) / 2) + 0.5), qmax).astype(int)
        assert big_b[p] == int(np.sum(codes * codes))
        want = sum(int(c) * v for c, v in zip(codes, exact) if c)
        assert abs(2 * Fraction(right[p]) * (Fraction(big_a[p]) - want)) <= Fraction(tol) / 4


# Per-channel and per-tensor boundaries returned before the search was batched (commit 44bfe27).
GOLDEN = {
    3: ([1.9552311301231384, 1.904021680355072, 3.395087242126465, 3.6266995668411255, 4.608355164527893,
         3.9061156511306763], 3.4624621868133545),
    5: ([2.9625575244426727, 3.105902597308159, 5.90061217546463, 6.948305815458298, 11.12281858921051,
         8.500132262706757], 7.910417318344116),
    8: ([3.640398535877466, 4.0352501310408115, 7.190805517137051, 8.816349767148495, 17.009363293647766,
         14.399914786219597], 16.274694368243217),
}


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_boundaries_are_bitwise_those_of_the_unbatched_search(bits):
    rng = np.random.default_rng(2024)
    w = np.concatenate([rng.normal(size=(2, 3000)), rng.laplace(size=(2, 3000)),
                        rng.standard_t(3, (2, 3000))]).astype(np.float32)  # 3000 weights: the bracket runs
    per_channel, per_tensor = GOLDEN[bits]
    assert clipping.boundary_dynamic(w, bits, axis=0).tolist() == per_channel
    assert clipping.boundary_dynamic(w, bits) == per_tensor


# ----------------------------------------------------------------------------- the bracket's bounds
def cuts_at(a, scale, qmax):
    """The first index of each level j = 1..qmax at this scale: np.searchsorted(a, (j - 1/2) scale), (1, qmax)."""
    return np.searchsorted(a, (np.arange(1, qmax + 1) - 0.5) * scale)[None]


def narrow_bound(x, bits, lo, hi):
    a, cum1, cum2 = prefix_sums(np.asarray([x], dtype=np.float64))
    qmax = 2 ** (bits - 1) - 1
    bound, inside = mse_search.narrow_lower_bound(cum1, cum2, np.zeros(1, dtype=np.int64), np.array([lo]),
                                                  np.array([hi]), cuts_at(a[0], lo, qmax), cuts_at(a[0], hi, qmax),
                                                  qmax)
    return float(bound[0]), int(inside[0])


def exact_least_sse(x, bits, lo, hi):
    """The least SSE over s in [lo, hi], in plain Python and exact rationals: every piece between breakpoints,
    minimised in closed form."""
    a = [abs(Fraction(v)) for v in x]
    lo, hi = Fraction(lo), Fraction(hi)
    qmax = 2 ** (bits - 1) - 1
    ends = sorted({lo, hi} | {v / (j - Fraction(1, 2)) for v in a for j in range(1, qmax + 1)
                              if lo < v / (j - Fraction(1, 2)) < hi})
    least = min(exact_sse(x, s, qmax) for s in (lo, hi))
    for left, right in zip(ends, ends[1:]):
        codes = [min(math.floor(2 * v / (left + right) + Fraction(1, 2)), qmax) for v in a]
        big_a, big_b = sum(c * v for c, v in zip(codes, a)), sum(c * c for c in codes)
        s = min(max(big_a / big_b, left), right) if big_b else right
        least = min(least, sum((v - s * c) ** 2 for c, v in zip(codes, a)))
    return least


def test_narrow_bound_literal():
    # qmax = 3, s in [1, 1.1]: 2.55 changes from code 2 (at hi) to code 3 at t = 2.55 / 2.5 = 1.02.
    # SSE_hi(s) = (2.55 - 2 s)**2, D = 2.55 - 2.5 lo = 0.05, and the bound is the least over [1, 1.1] of
    #     q(s) = (2.55 - 2 s)**2 - 2 s (1.1 - s) / 0.1 * 0.05 = 5 s**2 - 11.3 s + 6.5025,
    # which falls all the way (q' = 10 s - 11.3 < 0): q(1.1) = 0.35**2, the exact least SSE (code 2 at hi).
    # abs: about ten roundings of terms up to 6.5 (S2 - 2 s A + s**2 B)
    assert narrow_bound([2.55], 3, 1.0, 1.1) == (pytest.approx(0.35**2, abs=1e-14), 1)
    assert exact_least_sse([2.55], 3, 1.0, 1.1) == (Fraction(2.55) - 2 * Fraction(1.1)) ** 2  # code 2 at hi
    # [1, 1.24] is still narrow (< 2.5 / 2), and 3.05 reaches code 3 exactly at s = 3.05 / 3: least SSE 0.
    # t = 1.22, D = 3.05 - 2.5 = 0.55, q(s) = (3.05 - 2 s)**2 - 2 s (1.24 - s) / 0.24 * 0.55
    #     = 103/12 s**2 - 1073/60 s + 3721/400, least at s = 1073/1030 (inside): -77/6180, below 0, as a
    # lower bound of 0 may be (between the ends, the chord overstates what the move saves).
    least_q = Fraction(3721, 400) - Fraction(1073, 60) ** 2 / (4 * Fraction(103, 12))
    assert narrow_bound([3.05], 3, 1.0, 1.24) == (pytest.approx(float(least_q), abs=1e-14), 1)  # abs: as above
    assert float(least_q) < 0
    assert exact_least_sse([3.05], 3, 1.0, 1.24) == 0


@given(st.lists(st.floats(-8, 8, allow_nan=False, allow_subnormal=False), min_size=1, max_size=30),
       st.integers(2, 6), st.floats(0.02, 1.0), st.one_of(st.none(), st.integers(0, 29)),
       st.one_of(st.floats(0.0, 1.0), st.floats(0.95, 1.0)))
def test_the_narrow_bound_never_exceeds_the_least_sse(x, bits, where, anchor, width):
    # Any narrow interval, up to the limit hi / lo < (qmax - 1/2) / (qmax - 1), anywhere below s_top; or
    # (anchor) with lo just below some |x| / qmax, where a wide-enough interval lets that weight reach
    # code qmax exactly (the second literal case).
    qmax = 2 ** (bits - 1) - 1
    top = max(abs(v) for v in x)
    if top == 0:
        return
    lo = where * top / qmax if anchor is None else abs(x[anchor % len(x)]) / qmax * (1 - 1e-3 * where)
    if lo < np.finfo(np.float32).tiny:  # below the search's domain (search_scales: s >= float32 tiny)
        return
    hi = lo * (1 + width * (0.5 / (qmax - 1) if qmax > 1 else 1.0))
    if not hi * (qmax - 1) < lo * (qmax - 0.5):
        return
    bound, _ = narrow_bound(x, bits, lo, hi)
    least = exact_least_sse(x, bits, lo, hi)
    # slack: the prefix-sum form's float rounding (S2 - 2 s A + s^2 B): model_tolerance, tighter than the
    # bound_tolerance the search allows a bound on top of it
    assert bound <= least + mse_search.model_tolerance(sum(v * v for v in x), len(x), qmax, hi)


def exact_narrow_bound(x, qmax, lo, hi):
    """The narrow bound in exact rationals, weight by weight: the least over s in [lo, hi] of
    SSE_hi(s) - 2 s (hi - s) / (hi - lo) * sum over the changing |x| of (|x| - (j - 1/2) lo)."""
    lo, hi = Fraction(lo), Fraction(hi)
    c0 = c1 = c2 = d = Fraction(0)  # the bound as c0 + c1 s + c2 s**2
    for v in (abs(Fraction(v)) for v in x):
        code = min(math.floor(v / hi + Fraction(1, 2)), qmax)  # the code at hi (ties go up, as _cuts counts them)
        c0, c1, c2 = c0 + v * v, c1 - 2 * code * v, c2 + code * code
        j = code + 1
        if j <= qmax and (j - Fraction(1, 2)) * lo <= v:  # it changes to code j inside [lo, hi)
            d += v - (j - Fraction(1, 2)) * lo
    # - 2 s (hi - s) d / w = (- 2 hi d / w) s + (2 d / w) s**2
    c1, c2 = c1 - 2 * hi * d / (hi - lo), c2 + 2 * d / (hi - lo)
    ends = [lo, hi] + ([-c1 / (2 * c2)] if c2 > 0 and lo < -c1 / (2 * c2) < hi else [])
    return min(c0 + c1 * s + c2 * s * s for s in ends)


@given(st.lists(st.floats(-8, 8, allow_nan=False, allow_subnormal=False), min_size=1, max_size=25),
       st.integers(2, 6), st.integers(0, 24), st.integers(1, 31), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_the_narrow_bound_is_its_formula_to_within_bound_tolerance(x, bits, anchor, level, where, width):
    # Oracle: the formula of narrow_lower_bound's docstring evaluated weight by weight in exact rationals.
    # Exact arithmetic needs no slack: that bound never exceeds the least SSE. The float bound is within
    # bound_tolerance (docs/method.md section 2, "Bound") of it, both ways (from below, what the float
    # minimiser's tangent loses is second order). The interval is drawn around the breakpoint of one
    # weight (anchor) at one level, so that at least that weight changes code inside it.
    qmax = 2 ** (bits - 1) - 1
    t = abs(x[anchor % len(x)]) / (1 + level % qmax - 0.5)
    spread = width * (0.5 / (qmax - 1) if qmax > 1 else 1.0)  # hi / lo - 1, up to the narrow limit
    lo = t / (1 + where * spread)  # t in [lo, hi)
    hi = lo * (1 + spread)
    if lo < np.finfo(np.float32).tiny:  # below the search's domain (search_scales: s >= float32 tiny)
        return
    if not lo < hi or not hi * (qmax - 1) < lo * (qmax - 0.5):
        return
    exact = exact_narrow_bound(x, qmax, lo, hi)
    assert exact <= exact_least_sse(x, bits, lo, hi)
    bound, _ = narrow_bound(x, bits, lo, hi)
    allowed = mse_search.bound_tolerance(sum(v * v for v in x), len(x), qmax, hi)
    assert abs(Fraction(bound) - exact) <= Fraction(allowed)


@given(channel_blocks(), st.integers(2, 8))
def test_the_first_level_rules_out_only_scales_that_cannot_win(x, bits):
    # Every scale below the first interval costs more than the upper bound U (the SSE at a probe), and
    # the intervals tile [s_clip, s_top] edge to edge, narrow when there are at most TILES of them.
    a, cum1, cum2 = prefix_sums(x)
    qmax = 2 ** (bits - 1) - 1
    rows = np.arange(len(a))
    s_top = mse_search.grid_scales(a[:, -1], bits)
    s_lo = np.minimum(np.array([r[np.searchsorted(r, 0.0, side="right")] for r in a]) / (qmax - 0.5), s_top)
    rows = rows[s_lo < s_top]  # (the others are all clipped at every scale: search_scales searches no interval)
    if rows.size == 0:
        return
    ch, lo, hi, _, _, upper = mse_search.first_level(a, cum1, cum2, rows, qmax, s_lo, s_top, np.zeros(len(a)))
    for r in rows:
        mine = ch == r
        assert lo[mine][0] >= s_lo[r] and hi[mine][-1] == s_top[r]
        np.testing.assert_array_equal(lo[mine][1:], hi[mine][:-1])
        if qmax > 1 and mine.sum() <= mse_search.TILES and mine.sum() > mse_search.BRACKET_GRID:
            assert (hi[mine] * (qmax - 1) < lo[mine] * (qmax - 0.5)).all()
        below = lo[mine][0] * (1 - 2.0 ** -np.arange(1, 40))  # up to just below s_clip
        for s in np.concatenate([np.geomspace(s_lo[r], lo[mine][0], 9)[:-1], below[below >= s_lo[r]]]):
            codes = np.minimum(np.round(a[r] / s), qmax)
            # 1e-12: U is the prefix-sum model's SSE, which rounds differently from this direct sum
            assert np.sum((a[r] - s * codes) ** 2) > upper[r] * (1 - 1e-12)


# ----------------------------------------------------------------------------- the screen before the exact evaluation
def float32_steps(alphas, bits, steps=8):
    """The boundaries whose float32 scales are 1..steps float32 steps either side of these boundaries' scales."""
    down = up = mse_search.grid_scales(np.asarray(alphas), bits).astype(np.float32)
    out = []
    for _ in range(steps):
        down, up = np.nextafter(down, np.float32(0)), np.nextafter(up, np.float32(np.inf))
        out += [down, up]
    near = np.concatenate(out).astype(np.float64) * (2 ** (bits - 1) - 1)  # exact: float32(alpha / qmax) is the step
    return near[near > 0]


def assert_screen_sound(x, alphas, bits, rounding):
    """Every candidate the screen drops evaluates strictly above the least kept one, row by row."""
    a, cum1, cum2 = prefix_sums(x)
    keep = mse_search.screen(a, cum1, cum2, alphas, bits)
    sse = quant.sum_sq_error_rows(x, mse_search.grid_scales(alphas, bits), 2 ** (bits - 1) - 1, rounding)
    for r in range(len(x)):
        assert keep[r].any()
        assert (sse[r][~keep[r]] > sse[r][keep[r]].min()).all(), r


@pytest.mark.parametrize("bits, seed", [(3, 86), (4, 183), (5, 82)])
def test_the_screen_keeps_the_winner_that_the_model_ranks_lower(bits, seed):
    # Found by a search over seeds: on these 20 N(0, 1) float64 weights, the prefix-sum model puts the
    # exact winner (a float32 scale near the search's) strictly above another candidate, which the exact
    # sum puts 2e-16 to 1.2e-15 of SSE above the winner. Without its margin (tol + 2 E) the screen would
    # drop the winner.
    x = np.random.default_rng(seed).normal(size=(1, 20))
    x[0, 0] = 1.0
    a, cum1, cum2 = prefix_sums(x)
    found = mse_search.search_scales(a, cum1, cum2, bits)[0]
    alphas = np.concatenate([found, float32_steps(found, bits)])[None]
    scales = mse_search.grid_scales(alphas, bits)
    qmax = 2 ** (bits - 1) - 1
    model = mse_search.approx_sse(a, cum1, cum2, np.zeros(alphas.size, dtype=np.int64), scales.ravel(), qmax)
    sse = quant.sum_sq_error_rows(x, scales, qmax)[0]
    # the case is what it claims to be
    assert model[np.argmin(sse)] > model.min() and (sse[model == model.min()] > sse.min()).all()
    assert_screen_sound(x, alphas, bits, "half_even")


@given(st.one_of(channel_blocks(), weight_tensors(min_ndim=2).map(lambda w: quant.channel_rows(w, 0))),
       st.integers(2, 8), st.sampled_from(quant.ROUNDINGS), st.integers(0, 2**32 - 1))
def test_the_screen_drops_only_candidates_that_evaluate_worse(x, bits, rounding, seed):
    # Candidates: the search's own float32 scales and those up to 8 float32 steps either side (near
    # ties, where the prefix-sum model and the exact sum may rank differently), boundaries anywhere in
    # (0, 2 max|x|] (per channel, the per-tensor candidate can exceed the channel's max), and every
    # other rule's boundary.
    x = x[np.abs(x).max(axis=1) > 0]  # (all-zero channels are not searched)
    if x.size == 0:
        return
    a, cum1, cum2 = prefix_sums(x)
    rng = np.random.default_rng(seed)
    rows = []
    for r, found in enumerate(mse_search.search_scales(a, cum1, cum2, bits)):
        rules = [clipping.boundary(x[r], bits, rule=rule) for rule in clipping.RULES if rule != "dynamic"]
        rows.append(np.concatenate([found, float32_steps(found, bits), rng.uniform(0.01, 2.0, 6) * a[r, -1], rules]))
    width = max(len(r) for r in rows)
    alphas = np.array([np.concatenate([r, np.repeat(r[:1], width - len(r))]) for r in rows])
    assert_screen_sound(x, alphas, bits, rounding)
