"""Float ops and their gradients against PyTorch (forward and autograd)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from sqref import grad, ops  # noqa: E402

from test_ops import conv_cases, pool_cases  # noqa: E402

# float64 on both sides; sums over at most a few dozen terms in different
# orders (im2col GEMM vs torch's kernels): a few ulps.
TOL = dict(rtol=1e-10, atol=1e-10)


def t(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@settings(max_examples=40)
@given(conv_cases())
def test_conv2d_forward_backward_match_torch(case):
    x, w, b, kw = case
    tx, tw = t(x), t(w)
    tb = t(b) if b is not None else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    np.testing.assert_allclose(ops.conv2d(x, w, b, **kw), ty.detach().numpy(), **TOL)
    r = np.random.default_rng(0).standard_normal(ty.shape)
    ty.backward(torch.tensor(r))
    gx, gw, gb = grad.conv2d_backward(x, w, r, **kw)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **TOL)
    np.testing.assert_allclose(gw, tw.grad.numpy(), **TOL)
    if b is not None:
        np.testing.assert_allclose(gb, tb.grad.numpy(), **TOL)


@settings(max_examples=40)
@given(st.sampled_from(["max", "avg"]).flatmap(lambda kind: st.tuples(st.just(kind),
                                                                      pool_cases(kind, torch_compatible=True))))
def test_pooling_forward_backward_match_torch(kind_case):
    kind, (x, kw) = kind_case
    tx = t(x)
    if kind == "max":
        ty = torch.nn.functional.max_pool2d(tx, **kw)
        y, bwd = ops.max_pool2d(x, **kw), grad.max_pool2d_backward
    else:
        ty = torch.nn.functional.avg_pool2d(tx, **kw)
        y, bwd = ops.avg_pool2d(x, **kw), grad.avg_pool2d_backward
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL)
    r = np.random.default_rng(1).standard_normal(ty.shape)
    ty.backward(torch.tensor(r))
    np.testing.assert_allclose(bwd(x, r, **kw), tx.grad.numpy(), **TOL)


@given(st.integers(1, 5), st.integers(1, 7), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_linear_and_cross_entropy_match_torch(N, IN, OUT, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, IN)), rng.standard_normal((OUT, IN)), rng.standard_normal(OUT)
    labels = rng.integers(0, OUT, N)
    tx, tw, tb = t(x), t(w), t(b)
    logits = torch.nn.functional.linear(tx, tw, tb)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
    loss.backward()
    y = ops.linear(x, w, b)
    np.testing.assert_allclose(y, logits.detach().numpy(), **TOL)
    my_loss, gl = grad.softmax_cross_entropy(y, labels)
    assert my_loss == pytest.approx(loss.item(), rel=1e-12)  # float64, same formula
    gx, gw, gb = grad.linear_backward(x, w, gl)
    for mine, theirs in ((gx, tx), (gw, tw), (gb, tb)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), **TOL)


@given(st.integers(1, 5), st.integers(2, 6), st.floats(0.5, 8.0), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_distillation_loss_matches_torch(N, classes, temperature, alpha, seed):
    rng = np.random.default_rng(seed)
    s, teacher = rng.standard_normal((N, classes)) * 3, rng.standard_normal((N, classes)) * 3
    labels = rng.integers(0, classes, N)
    ts, F = t(s), torch.nn.functional
    loss = ((1 - alpha) * F.cross_entropy(ts, torch.tensor(labels))
            + alpha * temperature**2 * F.kl_div(F.log_softmax(ts / temperature, -1),
                                                 F.log_softmax(torch.tensor(teacher) / temperature, -1),
                                                 log_target=True, reduction="batchmean"))
    loss.backward()
    my_loss, g = grad.distillation_loss(s, labels, teacher, temperature=temperature, alpha=alpha)
    assert my_loss == pytest.approx(loss.item(), rel=1e-12, abs=1e-14)  # float64; abs for a loss near 0
    np.testing.assert_allclose(g, ts.grad.numpy(), **TOL)


def test_softmax_matches_torch():
    x = np.random.default_rng(0).standard_normal((4, 10)) * 30
    np.testing.assert_allclose(ops.softmax(x), torch.softmax(torch.tensor(x), -1).numpy(), **TOL)
    np.testing.assert_allclose(ops.log_softmax(x), torch.log_softmax(torch.tensor(x), -1).numpy(), **TOL)


# --------------------------------------------------------------------------
# graph ops, forward, float32 on both sides: each tolerance with its reason
# --------------------------------------------------------------------------
F32 = np.float32


def activation_inputs():
    """Normal draws scaled by 4 (the kinks at -3, 0, 3, 6 are crossed), the kinks themselves and
    one ulp either side, +-inf and NaN."""
    kinks = np.array([-3, 0, 3, 6], F32)
    special = np.concatenate([kinks, np.nextafter(kinks, F32(-np.inf)), np.nextafter(kinks, F32(np.inf)),
                              np.array([-np.inf, np.inf, np.nan, -100, 100], F32)])
    x = (np.random.default_rng(10).standard_normal((4, 8, 16, 16)) * 4).astype(F32)
    x.flat[: special.size] = special
    return x


def test_add_mul_div_match_torch_exactly():
    # tolerance 0: one IEEE float32 operation per element on each side, correctly rounded by both
    rng = np.random.default_rng(11)
    a = rng.standard_normal((4, 8, 16, 16)).astype(F32)
    for b in (rng.standard_normal((8, 1, 1)).astype(F32), rng.standard_normal((4, 1, 16, 1)).astype(F32),
              rng.standard_normal(16).astype(F32)):
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        np.testing.assert_array_equal(ops.add(a, b), torch.add(ta, tb).numpy())
        np.testing.assert_array_equal(ops.mul(a, b), torch.mul(ta, tb).numpy())
        np.testing.assert_array_equal(ops.div(a, b), torch.div(ta, tb).numpy())
        np.testing.assert_array_equal(ops.div(b, a), torch.div(tb, ta).numpy())  # a broadcast numerator too


def test_concat_reshape_match_torch_exactly():
    # tolerance 0: copies
    rng = np.random.default_rng(12)
    xs = [rng.standard_normal((2, c, 5, 5)).astype(F32) for c in (3, 1, 4)]
    np.testing.assert_array_equal(ops.concat(xs), torch.cat([torch.from_numpy(x) for x in xs], dim=1).numpy())
    np.testing.assert_array_equal(ops.concat(xs[:1] * 2, axis=-1), torch.cat([torch.from_numpy(xs[0])] * 2, dim=-1).numpy())
    x = xs[0]
    for spec, torch_shape in (([0, -1], (2, 75)), ([2, 3, 25], (2, 3, 25)), ([-1], (150,)), ([0, 0, 5, 5, 1], (2, 3, 5, 5, 1))):
        np.testing.assert_array_equal(ops.reshape(x, spec), torch.reshape(torch.from_numpy(x), torch_shape).numpy())


def test_relu6_and_clip_match_torch_exactly():
    # tolerance 0: comparisons only; NaN stays NaN on both sides (assert_array_equal matches NaN to NaN)
    x = activation_inputs()
    tx = torch.from_numpy(x)
    np.testing.assert_array_equal(ops.clip(x, 0, 6), torch.nn.functional.relu6(tx).numpy())
    np.testing.assert_array_equal(ops.clip(x, -1.5, 2.25), torch.clamp(tx, -1.5, 2.25).numpy())
    np.testing.assert_array_equal(ops.clip(x, lo=-1.5), torch.clamp(tx, min=-1.5).numpy())
    np.testing.assert_array_equal(ops.clip(x, hi=2.25), torch.clamp(tx, max=2.25).numpy())


def test_sigmoid_and_hard_activations_match_torch():
    F = torch.nn.functional
    x = activation_inputs()
    tx = torch.from_numpy(x)
    # sigmoid: torch's vectorised float32 exp and NumPy's differ by an ulp or two, and the formulas differ
    # (sqref: e / (1 + e) with e = exp(-|x|)); relative, since the values span 1e-44 .. 1: rtol 1e-6
    # (3e-7 seen on 2e6 draws); the denormal tail below 1e-37 (x < -85) is compared absolutely
    np.testing.assert_allclose(ops.sigmoid(x), torch.sigmoid(tx).numpy(), rtol=1e-6, atol=1e-37)
    # hardsigmoid: torch computes relu6(x + 3) / 6, sqref x * float32(1/6) + 1/2, clipped: two roundings
    # of a value in [0, 1] each side, at most an ulp of 1/2 .. 1 apart: atol 2**-23 (6e-8 seen)
    np.testing.assert_allclose(ops.hard_sigmoid(x, 1 / 6, 0.5), F.hardsigmoid(tx).numpy(), rtol=0, atol=2.0**-23)
    # hardswish: torch computes x * relu6(x + 3) / 6; for |x| >= 3 its x * 6 / 6 can miss x by an ulp
    # (rtol 2**-22; 9e-8 seen); inside (-3, 3) a few roundings of values below 4, each at most an
    # ulp of 2 .. 4 = 2.4e-7 (atol 1e-6; 4.8e-7 seen); -inf gives NaN (-inf * 0) on both sides
    np.testing.assert_allclose(ops.hard_swish(x), F.hardswish(tx).numpy(), rtol=2.0**-22, atol=1e-6)


def test_global_avg_pool_and_reduce_mean_match_torch():
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((4, 8, 16, 16)) * 4).astype(F32)
    tx = torch.from_numpy(x)
    # sqref sums in float64 and rounds once; torch sums in float32 (in its own order): the error of a
    # float32 sum of K = 256 terms of size ~4 is ~sqrt(K) * 4 * 2**-24 / K ~ 4e-8 on the mean: atol 1e-6
    np.testing.assert_allclose(ops.global_avg_pool(x), torch.nn.functional.adaptive_avg_pool2d(tx, 1).numpy(),
                               rtol=1e-6, atol=1e-6)
    for axes, keepdims in (([1], True), ([0, 2, 3], False), ([-1], True), (None, False)):
        dims = tuple(range(x.ndim)) if axes is None else tuple(axes)
        np.testing.assert_allclose(ops.reduce_mean(x, axes, keepdims=keepdims),
                                   torch.mean(tx, dim=dims, keepdim=keepdims).numpy(), rtol=1e-6, atol=1e-6)  # as above


def test_batch_norm_matches_torch_eval():
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((4, 8, 16, 16)) * 4).astype(F32)
    gamma, beta, mean = (rng.standard_normal(8).astype(F32) * 3 for _ in range(3))
    var = rng.uniform(0.05, 2, 8).astype(F32)
    want = torch.nn.functional.batch_norm(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(var),
                                          torch.from_numpy(gamma), torch.from_numpy(beta), training=False,
                                          eps=1e-5).numpy()
    # torch folds to x * a + (beta - mean * a), a = gamma / sqrt(var + eps), in float32; sqref computes the
    # formula in float64 and rounds once. torch's error is a few ulps of its largest intermediate
    # (|x * a|, |mean * a|, |beta|), not of the result, which may cancel: atol 4 ulps of that scale
    # (here 5.8e-5 for a scale of 121; 7.6e-6 seen)
    a = np.abs(gamma / np.sqrt(var.astype(np.float64) + 1e-5))
    scale = np.max(np.abs(x)) * a.max() + np.max(np.abs(mean) * a) + np.max(np.abs(beta))
    np.testing.assert_allclose(ops.batch_norm(x, gamma, beta, mean, var), want, rtol=0, atol=4 * 2.0**-23 * scale)
