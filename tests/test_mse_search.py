"""sqref.mse_search: the search batched over channels gives each channel what it gives that channel alone,
its sums keep their fixed orders, and boundary_dynamic keeps the boundaries it returned before the search
was batched (golden values). Its exactness against every breakpoint: tests/test_clipping.py.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqref import clipping, mse_search


def prefix_sums(x):
    """Sorted |x| of each row (float64) and the prefix sums of a and a**2, as boundary_dynamic builds them."""
    a = np.sort(np.abs(x), axis=1).astype(np.float64)
    cum1, cum2 = np.zeros((a.shape[0], a.shape[1] + 1)), np.zeros((a.shape[0], a.shape[1] + 1))
    np.cumsum(a, axis=1, out=cum1[:, 1:])
    np.cumsum(np.square(a), axis=1, out=cum2[:, 1:])
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


def test_level_sums_keep_their_order():
    # 1 + 126 halves of an ulp: a running sum rounds each addition back to 1; numpy's pairwise sum adds
    # most of the halves among themselves first, so it ends above 1.
    terms = np.tile(np.concatenate([[1.0], np.full(126, 2.0**-53)]), (2, 1))
    got = mse_search.level_sum(terms, np.array([False, True]))
    assert got[0] == 1.0
    assert got[1] == terms[1].sum() > 1.0


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
