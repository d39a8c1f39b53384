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


@given(st.sampled_from(["max", "avg"]).flatmap(lambda kind: st.tuples(st.just(kind), pool_cases(kind))))
def test_pool_backward_matches_finite_differences(kind_case):
    kind, (x, kw) = kind_case
    fwd = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    bwd = grad.max_pool2d_backward if kind == "max" else grad.avg_pool2d_backward
    r = np.random.default_rng(0).standard_normal(fwd(x, **kw).shape)
    loss = lambda: float(np.sum(fwd(x, **kw) * r))  # noqa: E731
    # Standard-normal draws have no ties within a window, so max is differentiable there.
    np.testing.assert_allclose(bwd(x, r, **kw), numeric_grad(loss, x), atol=FD_TOL)


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


def test_distillation_literal():
    # Student logits equal, teacher at T = 2 gives p_T(t) = (e/(1+e), 1/(1+e)) for t = (2, 0);
    # student p_T(s) = (1/2, 1/2). Hard term: log 2. Soft term: KL(p_T(t) || 1/2) = sum p log(2p).
    s, t, labels = np.zeros((1, 2)), np.array([[2.0, 0.0]]), np.array([0])
    p = np.array([np.e / (1 + np.e), 1 / (1 + np.e)])
    kl = np.sum(p * np.log(2 * p))
    loss, g = grad.distillation_loss(s, labels, t, temperature=2.0, alpha=0.25)
    assert loss == pytest.approx(0.75 * np.log(2) + 0.25 * 4 * kl, rel=1e-14)
    np.testing.assert_allclose(g, 0.75 * np.array([[-0.5, 0.5]]) + 0.25 * 2 * (0.5 - p)[None], rtol=1e-14)


def test_distillation_alpha_zero_is_cross_entropy_and_teacher_optimum_has_zero_soft_gradient():
    rng = np.random.default_rng(3)
    s, labels = rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    ce, g_ce = grad.softmax_cross_entropy(s, labels)
    loss, g = grad.distillation_loss(s, labels, rng.standard_normal((4, 5)), temperature=3.0, alpha=0.0)
    assert loss == ce
    np.testing.assert_array_equal(g, g_ce)
    # a student equal to its teacher: KL = 0 and the soft gradient vanishes
    loss, g = grad.distillation_loss(s, labels, s, temperature=3.0, alpha=1.0)
    assert loss == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(g, 0.0, atol=1e-16)


@given(st.integers(1, 4), st.integers(2, 6), st.floats(0.5, 8.0), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_distillation_gradient_matches_finite_differences(N, classes, temperature, alpha, seed):
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal((N, classes)) * 3, rng.standard_normal((N, classes)) * 3
    labels = rng.integers(0, classes, N)
    _, g = grad.distillation_loss(s, labels, t, temperature=temperature, alpha=alpha)
    loss = lambda: grad.distillation_loss(s, labels, t, temperature=temperature, alpha=alpha)[0]  # noqa: E731
    np.testing.assert_allclose(g, numeric_grad(loss, s), atol=FD_TOL)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0, alpha=0.5), "temperature must be a finite number > 0, got 0.0"),
    (dict(temperature=float("inf"), alpha=0.5), "temperature must be a finite number > 0, got inf"),
    (dict(temperature=2.0, alpha=1.5), r"alpha must be in \[0, 1\], got 1.5"),
])
def test_distillation_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        grad.distillation_loss(np.zeros((1, 2)), np.array([0]), np.zeros((1, 2)), **kwargs)


def test_distillation_rejects_teacher_of_another_shape():
    with pytest.raises(ValueError, match=r"teacher_logits must have the logits' shape \(1, 2\), got \(1, 3\)"):
        grad.distillation_loss(np.zeros((1, 2)), np.array([0]), np.zeros((1, 3)), temperature=2.0, alpha=0.5)
