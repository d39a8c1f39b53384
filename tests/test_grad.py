"""Backward passes: central finite differences in float64 (this file) and
torch.autograd (tests/test_backend_torch_float.py)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqref import grad, ops
from sqref.model import Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU

from test_ops import conv_cases, pool_cases

EPS = 1e-6  # central difference step: truncation O(EPS^2), rounding O(1e-16 / EPS) ~ 1e-10
FD_TOL = 1e-6  # both error terms above are far below this, for values of order 1


def numeric_grad(f, a):
    """d sum(f(a) * R) / da by central differences, R a fixed random weighting."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + EPS
        up = f()
        a[i] = old - EPS
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * EPS)
    return g


@given(conv_cases())
def test_conv2d_backward_matches_finite_differences(case):
    x, w, b, kw = case
    b = np.zeros(w.shape[0]) if b is None else b
    r = np.random.default_rng(0).standard_normal(ops.conv2d(x, w, b, **kw).shape)
    loss = lambda: float(np.sum(ops.conv2d(x, w, b, **kw) * r))  # noqa: E731
    gx, gw, gb = grad.conv2d_backward(x, w, r, **kw)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), atol=FD_TOL)
    np.testing.assert_allclose(gw, numeric_grad(loss, w), atol=FD_TOL)
    np.testing.assert_allclose(gb, numeric_grad(loss, b), atol=FD_TOL)


@given(pool_cases(), st.sampled_from(["max", "avg"]))
def test_pool_backward_matches_finite_differences(case, kind):
    x, k, s, p = case
    fwd = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    bwd = grad.max_pool2d_backward if kind == "max" else grad.avg_pool2d_backward
    r = np.random.default_rng(0).standard_normal(fwd(x, k, s, p).shape)
    loss = lambda: float(np.sum(fwd(x, k, s, p) * r))  # noqa: E731
    # Standard-normal draws have no ties within a window, so max is differentiable there.
    np.testing.assert_allclose(bwd(x, r, k, s, p), numeric_grad(loss, x), atol=FD_TOL)


def test_linear_relu_cross_entropy_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    labels = np.array([0, 2, 1, 2])
    loss = lambda: grad.softmax_cross_entropy(ops.relu(ops.linear(x, w, b)), labels)[0]  # noqa: E731
    y = ops.linear(x, w, b)
    _, gl = grad.softmax_cross_entropy(ops.relu(y), labels)
    gy = grad.relu_backward(y, gl)
    gx, gw, gb = grad.linear_backward(x, w, gy)
    for analytic, a in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(analytic, numeric_grad(loss, a), atol=FD_TOL)


def test_cross_entropy_literal():
    # logits equal -> p = 1/2 each: loss = log 2, grad = (1/2 - onehot) / N
    loss, g = grad.softmax_cross_entropy(np.zeros((2, 2)), np.array([0, 1]))
    assert loss == pytest.approx(np.log(2), rel=1e-15)
    np.testing.assert_array_equal(g, [[-0.25, 0.25], [0.25, -0.25]])


def test_model_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    model = Model((Conv2d(rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2)), MaxPool2d((2, 2), (2, 2)),
                   Flatten(), Linear(rng.standard_normal((3, 8)), rng.standard_normal(3)), ReLU(),
                   Linear(rng.standard_normal((2, 3)), None)), (1, 6, 6))
    x, labels = rng.standard_normal((3, 1, 6, 6)), np.array([0, 1, 1])

    def loss():
        return grad.softmax_cross_entropy(model.layers[-1](model.layers[-2](model.layers[-3](
            model.layers[2](model.layers[1](model.layers[0](x)))))), labels)[0]

    _, _, grads = grad.model_gradients(model, x, labels)
    np.testing.assert_allclose(grads[0]["weight"], numeric_grad(loss, model.layers[0].weight), atol=FD_TOL)
    np.testing.assert_allclose(grads[3]["bias"], numeric_grad(loss, model.layers[3].bias), atol=FD_TOL)
    assert set(grads[5]) == {"weight"}  # a bias-free layer gets no bias gradient
