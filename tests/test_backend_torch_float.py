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
