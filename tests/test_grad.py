"""Backward passes: central finite differences in float64 (this file) and
torch.autograd (tests/test_backend_torch_float.py; for the graph ops, add ... batch_norm,
also at the end of this file, skipped without torch)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sqref import grad, ops
from sqref.model import Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU

from test_ops import conv_cases, pool_cases, reshape_cases

EPS = 1e-6  # central difference step: truncation O(EPS^2), rounding O(1e-16 / EPS) ~ 1e-10
FD_TOL = 1e-6  # both error terms above are far below this, for values of order 1


def numeric_grad(f, a):
    """d sum(f(a) * R) / da by central differences, R a fixed random weighting."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index", "zerosize_ok"])
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


# ==========================================================================
# graph ops: each backward against central differences (float64), then against torch.autograd
# (float64, where torch is installed)
# ==========================================================================
seeds = st.integers(0, 2**32 - 1)
small_shapes = hnp.array_shapes(min_dims=1, max_dims=4, max_side=3)


def weighted_loss(f, r):
    """sum(f() * R): its gradient w.r.t. f's output is R."""
    return lambda: float(np.sum(f() * r))


def away_from(x, kinks, margin=1e-3):
    """x with every element within ``margin`` of a kink moved 2 * margin up: central differences
    (step EPS) across a kink measure neither side's slope."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + 2 * margin
    return x


@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3), seeds,
       st.sampled_from(["add", "mul", "div"]))
def test_add_mul_div_backward_match_finite_differences(shapes, seed, name):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shapes.input_shapes[0])
    b = rng.standard_normal(shapes.input_shapes[1])
    if name == "div":  # keep |b| >= 0.5: 1/b^2 stays moderate
        b = np.sign(b + (b == 0)) * (0.5 + np.abs(b))
    a, b = np.array(a, dtype=np.float64, ndmin=0), np.array(b, dtype=np.float64, ndmin=0)
    fwd = getattr(ops, name)
    r = rng.standard_normal(np.shape(fwd(a, b)))
    loss = weighted_loss(lambda: fwd(a, b), r)
    if name == "add":
        ga, gb = grad.add_backward(a.shape, b.shape, r)
    else:
        ga, gb = getattr(grad, f"{name}_backward")(a, b, r)
    assert ga.shape == a.shape and gb.shape == b.shape
    np.testing.assert_allclose(ga, numeric_grad(loss, a), atol=FD_TOL)
    np.testing.assert_allclose(gb, numeric_grad(loss, b), atol=FD_TOL)


@given(st.integers(1, 4), st.integers(1, 3), seeds, st.data())
def test_concat_backward_matches_finite_differences(r, n, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-r, r - 1))
    base = [data.draw(st.integers(1, 3)) for _ in range(r)]
    xs = [rng.standard_normal(base[: axis % r] + [data.draw(st.integers(0, 3))] + base[axis % r + 1 :])
          for _ in range(n)]
    g = rng.standard_normal(ops.concat(xs, axis=axis).shape)
    grads = grad.concat_backward([x.shape for x in xs], g, axis=axis)
    assert len(grads) == n
    for x, gx in zip(xs, grads):
        np.testing.assert_allclose(gx, numeric_grad(weighted_loss(lambda: ops.concat(xs, axis=axis), g), x), atol=FD_TOL)


@given(small_shapes, seeds, st.sampled_from([(0.0, 6.0), (-0.5, 0.5), (None, 0.3), (-0.2, None), (1.0, -1.0)]))
def test_clip_backward_matches_finite_differences(shape, seed, bounds):
    lo, hi = bounds
    rng = np.random.default_rng(seed)
    x = away_from(rng.standard_normal(shape) * 3, [b for b in bounds if b is not None])
    r = rng.standard_normal(shape)
    np.testing.assert_allclose(grad.clip_backward(x, r, lo, hi),
                               numeric_grad(weighted_loss(lambda: ops.clip(x, lo, hi), r), x), atol=FD_TOL)


@given(small_shapes, seeds, st.sampled_from(["sigmoid", "hard_swish"]))
def test_sigmoid_hard_swish_backward_match_finite_differences(shape, seed, name):
    rng = np.random.default_rng(seed)
    x = away_from(rng.standard_normal(shape) * 4, [-3.0, 3.0])
    r = rng.standard_normal(shape)
    fwd, bwd = getattr(ops, name), getattr(grad, f"{name}_backward")
    np.testing.assert_allclose(bwd(x, r), numeric_grad(weighted_loss(lambda: fwd(x), r), x), atol=FD_TOL)


@given(small_shapes, seeds, st.floats(0.1, 2) | st.floats(-2, -0.1), st.floats(-1, 2))
def test_hard_sigmoid_backward_matches_finite_differences(shape, seed, alpha, beta):
    rng = np.random.default_rng(seed)
    x = away_from(rng.standard_normal(shape) * 3, [-beta / alpha, (1 - beta) / alpha])
    r = rng.standard_normal(shape)
    np.testing.assert_allclose(grad.hard_sigmoid_backward(x, r, alpha, beta),
                               numeric_grad(weighted_loss(lambda: ops.hard_sigmoid(x, alpha, beta), r), x), atol=FD_TOL)


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), seeds)
def test_global_avg_pool_backward_matches_finite_differences(N, C, H, W, seed):
    rng = np.random.default_rng(seed)
    x, r = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, C, 1, 1))
    np.testing.assert_allclose(grad.global_avg_pool_backward(x.shape, r),
                               numeric_grad(weighted_loss(lambda: ops.global_avg_pool(x), r), x), atol=FD_TOL)


@given(small_shapes, seeds, st.booleans(), st.data())
def test_reduce_mean_backward_matches_finite_differences(shape, seed, keepdims, data):
    r_ = len(shape)
    axes = data.draw(st.none() | st.lists(st.integers(-r_, r_ - 1), unique_by=lambda a: a % r_, max_size=r_))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    r = rng.standard_normal(ops.reduce_mean(x, axes, keepdims=keepdims).shape)
    np.testing.assert_allclose(grad.reduce_mean_backward(x.shape, r, axes, keepdims),
                               numeric_grad(weighted_loss(lambda: ops.reduce_mean(x, axes, keepdims=keepdims), r), x),
                               atol=FD_TOL)


@given(reshape_cases())
def test_reshape_backward_matches_finite_differences(case):
    x, spec, allowzero, target = case
    x = x.astype(np.float64)
    r = np.random.default_rng(0).standard_normal(target)
    np.testing.assert_allclose(grad.reshape_backward(x.shape, r),
                               numeric_grad(weighted_loss(lambda: ops.reshape(x, spec, allowzero=allowzero), r), x),
                               atol=FD_TOL)


@given(st.integers(1, 2), st.integers(1, 3), st.lists(st.integers(1, 3), max_size=2), seeds)
def test_batch_norm_backward_matches_finite_differences(N, C, spatial, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, *spatial))
    gamma, beta, mean = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
    var, eps = rng.uniform(0.2, 2, C), 1e-3
    r = rng.standard_normal(x.shape)
    loss = weighted_loss(lambda: ops.batch_norm(x, gamma, beta, mean, var, eps=eps), r)
    gx, ggamma, gbeta = grad.batch_norm_backward(x, r, gamma, mean, var, eps)
    for analytic, a in ((gx, x), (ggamma, gamma), (gbeta, beta)):
        np.testing.assert_allclose(analytic, numeric_grad(loss, a), atol=FD_TOL)


def test_graph_op_gradients_literal():
    # clip: gradient only strictly inside (0, 6); 0 at both bounds (torch's relu6 convention)
    np.testing.assert_array_equal(grad.clip_backward(np.array([-1.0, 0, 3, 6, 7]), np.ones(5), 0, 6), [0, 0, 1, 0, 0])
    # hard_swish: 0 at and below -3, x/3 + 1/2 inside, 1 at and above 3 (torch's choice at the kinks)
    x = np.array([-4.0, -3, -1.5, 0, 1.5, 3, 4])
    np.testing.assert_array_equal(grad.hard_swish_backward(x, np.ones(7)), [0, 0, 0, 0.5, 1, 1, 1])
    # hard_sigmoid (alpha 1/6): 1/6 strictly between the kinks -3 and 3
    np.testing.assert_array_equal(grad.hard_sigmoid_backward(np.array([-3.0, 0, 3]), np.ones(3), 1 / 6, 0.5), [0, 1 / 6, 0])
    # at NaN: clip and hard_sigmoid 0 (a mask, as relu_backward), hard_swish and sigmoid NaN (a formula in x)
    nan, one = np.array([np.nan]), np.ones(1)
    assert grad.clip_backward(nan, one, 0, 6)[0] == 0 and grad.hard_sigmoid_backward(nan, one, 0.2, 0.5)[0] == 0
    assert np.isnan(grad.hard_swish_backward(nan, one)[0]) and np.isnan(grad.sigmoid_backward(nan, one)[0])
    # lo > hi: the output is constant (hi), the gradient 0
    np.testing.assert_array_equal(grad.clip_backward(np.array([-5.0, 0, 5]), np.ones(3), 1, -1), [0, 0, 0])
    # add: (2, 3) + (3,): b's gradient sums the rows
    ga, gb = grad.add_backward((2, 3), (3,), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(gb, [3, 5, 7])
    # global average pool over 2x2: a quarter each
    np.testing.assert_array_equal(grad.global_avg_pool_backward((1, 1, 2, 2), np.array([[[[4.0]]]])), np.ones((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"shape \(4,\) does not broadcast to the gradient's shape \(2, 3\)"):
        grad.add_backward((2, 3), (4,), np.zeros((2, 3)))


# --------------------------------------------------------------------------
# the same gradients against torch.autograd (float64)
# --------------------------------------------------------------------------
TORCH_TOL = dict(rtol=1e-10, atol=1e-12)  # float64 on both sides, the same formulas up to a few ulps


def torch_grads(torch, f, arrays, r):
    """Gradients of sum(f(*tensors) * r) w.r.t. every array, by torch.autograd in float64."""
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    y = f(*ts)
    y.backward(torch.tensor(r, dtype=torch.float64))
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3), seeds)
def test_add_mul_div_backward_match_torch(shapes, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal(shapes.input_shapes[0]))
    b = np.asarray(0.5 + rng.uniform(0, 1, shapes.input_shapes[1]))
    r = rng.standard_normal(shapes.result_shape)
    for name, tf in (("add", torch.add), ("mul", torch.mul), ("div", torch.div)):
        y, (ta, tb) = torch_grads(torch, tf, [a, b], r)
        ga, gb = grad.add_backward(a.shape, b.shape, r) if name == "add" else getattr(grad, f"{name}_backward")(a, b, r)
        np.testing.assert_allclose(getattr(ops, name)(a, b), y, **TORCH_TOL)
        np.testing.assert_allclose(ga, ta, **TORCH_TOL)
        np.testing.assert_allclose(gb, tb, **TORCH_TOL)


def test_concat_reshape_pool_mean_backward_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, c, 3, 3)) for c in (1, 3, 2)]
    r = rng.standard_normal((2, 6, 3, 3))
    _, want = torch_grads(torch, lambda *ts: torch.cat(ts, dim=1), xs, r)
    for mine, theirs in zip(grad.concat_backward([x.shape for x in xs], r, axis=1), want):
        np.testing.assert_array_equal(mine, theirs)  # slices of r: exact
    x = rng.standard_normal((2, 3, 4, 5))
    r = rng.standard_normal((2, 3, 20))
    _, (want,) = torch_grads(torch, lambda t: torch.reshape(t, (2, 3, 20)), [x], r)
    np.testing.assert_array_equal(grad.reshape_backward(x.shape, r), want)
    r = rng.standard_normal((2, 3, 1, 1))
    _, (want,) = torch_grads(torch, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1), [x], r)
    np.testing.assert_allclose(grad.global_avg_pool_backward(x.shape, r), want, **TORCH_TOL)
    for axes, keepdims in (((1,), True), ((0, 2), False), ((-1, -3), True), (None, False)):
        dims = tuple(range(x.ndim)) if axes is None else axes
        r = rng.standard_normal(ops.reduce_mean(x, axes, keepdims=keepdims).shape)
        _, (want,) = torch_grads(torch, lambda t: torch.mean(t, dim=dims, keepdim=keepdims), [x], r)
        np.testing.assert_allclose(grad.reduce_mean_backward(x.shape, r, axes, keepdims), want, **TORCH_TOL)


# the activations at random points and at their kinks (exactly, and one ulp either side); NaN in the
# middle of the tensor: torch's vectorised kernels and its scalar loop (a tensor's last few elements)
# disagree at NaN (relu6 and hardtanh 0 vs grad_y, hardswish NaN vs grad_y); sqref gives what the
# vectorised kernels give, and the NaN sits where they compute it
KINKS = np.array([-3, 0, 3, 6], dtype=np.float64)
SPECIAL = np.concatenate([KINKS, np.nextafter(KINKS, -np.inf), np.nextafter(KINKS, np.inf), [-7.5, 7.5]])


@pytest.mark.parametrize("name", ["relu6", "clip", "sigmoid", "hard_sigmoid", "hard_swish"])
def test_activation_backward_matches_torch_at_kinks_and_nan(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    x = np.concatenate([SPECIAL, rng.standard_normal(100) * 4, [np.nan], rng.standard_normal(100) * 4])
    r = rng.standard_normal(x.shape)
    tol = TORCH_TOL
    if name == "relu6":
        _, (want,) = torch_grads(torch, F.relu6, [x], r)
        mine = grad.clip_backward(x, r, 0, 6)
    elif name == "clip":  # hardtanh: the same convention as relu6, any bounds
        _, (want,) = torch_grads(torch, lambda t: F.hardtanh(t, -3.0, 3.0), [x], r)
        mine = grad.clip_backward(x, r, -3, 3)
    elif name == "sigmoid":
        _, (want,) = torch_grads(torch, torch.sigmoid, [x], r)
        mine = grad.sigmoid_backward(x, r)
    elif name == "hard_sigmoid":
        _, (want,) = torch_grads(torch, F.hardsigmoid, [x], r)
        mine = grad.hard_sigmoid_backward(x, r, 1 / 6, 0.5)
        tol = dict(rtol=1e-7, atol=0)  # torch multiplies by a float32 1/6 even in float64: 3e-8 relative
    else:
        _, (want,) = torch_grads(torch, F.hardswish, [x], r)
        mine = grad.hard_swish_backward(x, r)
    np.testing.assert_allclose(mine, want, equal_nan=True, **tol)


def test_one_sided_clip_backward_matches_torch_clamp():
    # away from the bound torch.clamp and hardtanh agree; at it clamp passes the gradient, sqref does not
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x, r = rng.standard_normal(50), rng.standard_normal(50)
    _, (want,) = torch_grads(torch, lambda t: torch.clamp(t, min=-0.2), [x], r)
    np.testing.assert_array_equal(grad.clip_backward(x, r, -0.2, None), want)
    _, (want,) = torch_grads(torch, lambda t: torch.clamp(t, max=0.3), [x], r)
    np.testing.assert_array_equal(grad.clip_backward(x, r, None, 0.3), want)


@given(st.integers(1, 3), st.integers(1, 4), st.lists(st.integers(1, 3), max_size=2), seeds)
def test_batch_norm_backward_matches_torch(N, C, spatial, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, *spatial))
    gamma, beta, mean, var = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C), rng.uniform(0.2, 2, C)
    r = rng.standard_normal(x.shape)

    def bn(tx, tg, tb):  # eval mode: running statistics are constants
        return torch.nn.functional.batch_norm(tx, torch.tensor(mean), torch.tensor(var), tg, tb, training=False, eps=1e-3)

    y, (tx, tg, tb) = torch_grads(torch, bn, [x, gamma, beta], r)
    np.testing.assert_allclose(ops.batch_norm(x, gamma, beta, mean, var, eps=1e-3), y, **TORCH_TOL)
    gx, ggamma, gbeta = grad.batch_norm_backward(x, r, gamma, mean, var, 1e-3)
    for mine, theirs in ((gx, tx), (ggamma, tg), (gbeta, tb)):
        np.testing.assert_allclose(mine, theirs, **TORCH_TOL)


# ----------------------------------------------------------------------------- graphs


def graph_model(rng):
    """Every branching op in one small graph, float64: a residual Add, a Concat of
    two branches, Mul by a constant, ReLU6, hard-swish, a depthwise conv, a
    global average pool and a tensor read three times."""
    from sqref.model import INPUT, Add, Clip, Concat, GlobalAvgPool, HardSwish, Mul

    def conv(k, c, groups=1):
        return Conv2d(rng.standard_normal((k, c // groups, 3, 3)) * 0.5, rng.standard_normal(k) * 0.1,
                      padding=(1, 1), groups=groups)

    layers = (conv(4, 2), Clip(0.0, 6.0), conv(4, 4, groups=4), Add(), HardSwish(),
              Mul(const=rng.standard_normal((4, 1, 1))), Concat(1), GlobalAvgPool(keepdims=False),
              Linear(rng.standard_normal((3, 8)), rng.standard_normal(3)))
    names = ("c1", "relu6", "dw", "add", "hswish", "scale", "cat", "gap", "fc")
    wiring = ((INPUT,), ("c1",), ("relu6",), ("dw", "relu6"), ("add",), ("relu6",), ("hswish", "scale"), ("cat",),
              ("gap",))
    return Model(layers, (2, 5, 5), names, wiring=wiring)


def test_graph_gradients_match_finite_differences():
    """A tensor read by several layers gets the sum of their gradients (relu6 is read three times)."""
    import sqref

    rng = np.random.default_rng(7)
    model = graph_model(rng)
    x, labels = rng.standard_normal((3, 2, 5, 5)), np.array([0, 2, 1])

    def loss():
        return grad.softmax_cross_entropy(sqref.run(model, x), labels)[0]

    _, _, grads = grad.model_gradients(model, x, labels)
    for index in (0, 2, 8):  # the first conv (behind every branch), the depthwise conv, the classifier
        layer = model.layers[index]
        np.testing.assert_allclose(grads[index]["weight"], numeric_grad(loss, layer.weight), atol=FD_TOL)
        np.testing.assert_allclose(grads[index]["bias"], numeric_grad(loss, layer.bias), atol=FD_TOL)
    assert all(g == {} for i, g in enumerate(grads) if i not in (0, 2, 8))


def test_graph_gradients_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(8)
    model = graph_model(rng)
    x, labels = rng.standard_normal((4, 2, 5, 5)), np.array([0, 2, 1, 1])
    _, _, grads = grad.model_gradients(model, x, labels)
    t = {f"{name}.{key}": torch.tensor(getattr(layer, key), requires_grad=True)
         for name, layer in zip(model.names, model.layers) if isinstance(layer, (Conv2d, Linear))
         for key in ("weight", "bias")}
    c1 = F.conv2d(torch.tensor(x), t["c1.weight"], t["c1.bias"], padding=1)
    relu6 = F.relu6(c1)
    dw = F.conv2d(relu6, t["dw.weight"], t["dw.bias"], padding=1, groups=4)
    hswish = F.hardswish(dw + relu6)
    scale = relu6 * torch.tensor(model.layers[5].const)
    logits = F.linear(torch.cat([hswish, scale], 1).mean((2, 3)), t["fc.weight"], t["fc.bias"])
    F.cross_entropy(logits, torch.tensor(labels)).backward()
    for i, name in ((0, "c1"), (2, "dw"), (8, "fc")):
        for key in ("weight", "bias"):  # float64 on both sides: only summation order differs
            np.testing.assert_allclose(grads[i][key], t[f"{name}.{key}"].grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layers_that_do_not_reach_the_logits_get_zero_gradients():
    from sqref.model import INPUT

    rng = np.random.default_rng(9)
    side = Linear(rng.standard_normal((2, 4)), rng.standard_normal(2))
    main = Linear(rng.standard_normal((3, 4)), rng.standard_normal(3))
    model = Model((side, main), (4,), ("side", "main"), wiring=((INPUT,), (INPUT,)), outputs=("main",))
    _, _, grads = grad.model_gradients(model, rng.standard_normal((2, 4)), np.array([0, 1]))
    assert not np.any(grads[0]["weight"]) and not np.any(grads[0]["bias"])
