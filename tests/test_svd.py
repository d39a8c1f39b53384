"""Truncated SVD of FC layers: reconstruction, Eckart-Young, rank rules, break-even."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqref import svd
from sqref.model import Linear


def layer(out, inp, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return Linear(rng.standard_normal((out, inp)).astype(dtype), rng.standard_normal(out).astype(dtype))


@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_rank_r_error_is_eckart_young(out, inp, seed):
    lin = layer(out, inp, seed)
    s = svd.singular_values(lin.weight)
    for r in range(1, min(out, inp) + 1):
        first, second, report = svd.factor_linear(lin, r, allow_past_break_even=True)
        w_r = second.weight @ first.weight
        err = np.linalg.norm(lin.weight - w_r)
        # float64 SVD: backward error ~ 1e-15 * ||W||
        assert err == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), abs=1e-12 * np.linalg.norm(s))
        assert report["frobenius_error"] == pytest.approx(err, abs=1e-12 * np.linalg.norm(s))


def test_full_rank_reconstructs_float32_layer_and_output():
    lin = layer(30, 50, dtype=np.float32)
    first, second, report = svd.factor_linear(lin, 30, allow_past_break_even=True)
    assert first.bias is None and np.array_equal(second.bias, lin.bias)
    assert first.weight.shape == (30, 50) and second.weight.shape == (30, 30)
    # float32 factors: each entry of U sqrt(S) sqrt(S) V^T carries ~30 float32 roundings of size
    # ~|W| * 2^-24; 1e-5 relative to max|W| bounds it.
    np.testing.assert_allclose(second.weight @ first.weight, lin.weight, atol=1e-5 * np.abs(lin.weight).max())
    x = np.random.default_rng(1).standard_normal((4, 50)).astype(np.float32)
    np.testing.assert_allclose(second(first(x)), lin(x), rtol=1e-4, atol=1e-4)  # same float32 bound through 50-term sums
    assert report["kept_energy"] == pytest.approx(1.0, abs=1e-12)


def test_balanced_split_gives_both_factors_the_same_singular_values():
    first, second, _ = svd.factor_linear(layer(40, 60), 10)
    np.testing.assert_allclose(svd.singular_values(first.weight), svd.singular_values(second.weight), rtol=1e-10)


def test_energy_and_ratio_pick_the_documented_rank():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # s^2 = 16, 4, 1, 1; total 22
    assert svd.rank_for_energy(s, tau=16 / 22) == 1
    assert svd.rank_for_energy(s, tau=16.5 / 22) == 2
    assert svd.rank_for_energy(s, tau=21 / 22) == 4 - 1
    assert svd.rank_for_energy(s, tau=1.0) == 4
    # 500x800: r * 1300 <= 0.1 * 400000 -> r = 30
    assert svd.rank_for_ratio(500, 800, ratio=0.1) == 30
    assert svd.break_even_rank(500, 800) == 307  # 307 * 1300 = 399100 < 400000 <= 308 * 1300


@pytest.mark.parametrize("rank, message", [
    (0, r"rank must be in \[1, 10\]"), (11, r"rank must be in \[1, 10\]"),
    (6, "rank 6 is past break-even"), (2.0, "rank must be an int"),
])
def test_bad_ranks_are_refused(rank, message):
    with pytest.raises((ValueError, TypeError), match=message):
        svd.factor_linear(layer(10, 12), rank, name="fc1")


@pytest.mark.parametrize("tau", [0, -0.5, 1.5, float("nan")])
def test_energy_outside_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match="energy must be in"):
        svd.rank_for_energy(np.ones(3), tau=tau)


def test_randomized_solver_is_near_the_eckart_young_optimum():
    rng = np.random.default_rng(0)
    # a 300x500 matrix with a decaying spectrum s_i = 0.9^i plus small noise
    u, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    v, _ = np.linalg.qr(rng.standard_normal((500, 300)))
    w = (u * 0.9 ** np.arange(300)) @ v.T + 1e-4 * rng.standard_normal((300, 500))
    lin = Linear(w, np.zeros(300))
    for r in (5, 20, 60):
        exact = svd.factor_linear(lin, r)[2]["frobenius_error"]
        first, second, report = svd.factor_linear(lin, r, decomposition=svd.decompose_randomized(w, r))
        actual = np.linalg.norm(w - second.weight @ first.weight)
        assert actual <= 1.01 * exact  # 4 power iterations: within 1% of the optimum on this spectrum
        # the reported error (from ||W||_F and the kept values) matches the factors' real error
        assert report["frobenius_error"] == pytest.approx(actual, rel=1e-6)
