"""Backward passes of the float ops and the softmax cross-entropy loss.

Each `*_backward` takes the forward inputs and the gradient of the loss with
respect to the forward output, and returns the gradients with respect to the
inputs and parameters. Checked against central finite differences (float64)
and against torch.autograd in the tests.
"""
from __future__ import annotations

import numpy as np

from sqref import ops
from sqref.model import (INPUT, PARAM_LAYERS, Add, AvgPool2d, BatchNorm, Clip, Concat, Conv2d, Div, Flatten,
                         GlobalAvgPool, HardSigmoid, HardSwish, Linear, MaxPool2d, Mul, Pad, ReLU, Reshape, Sigmoid,
                         layer_arrays, run)
from sqref.ops import col2im, im2col


def conv2d_backward(x, w, grad_y, *, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of y = conv2d(x, w, b): returns (grad_x, grad_w, grad_b).

    With cols = im2col(x) per group g, y_g = W_g @ cols_g, hence
        grad_W_g = grad_y_g @ cols_g^T,  grad_cols_g = W_g^T @ grad_y_g,
        grad_x = col2im(grad_cols),      grad_b = sum over N, OH, OW of grad_y.
    Shapes: x (N, C, H, W), w (K, CG, KH, KW), grad_y (N, K, OH, OW).
    """
    N, C, H, W = x.shape
    K, CG, KH, KW = w.shape
    G, KG = groups, K // groups
    OH, OW = grad_y.shape[2:]
    L = N * OH * OW
    cols = im2col(x, (KH, KW), stride=stride, padding=padding, dilation=dilation).reshape(G, CG * KH * KW, L)
    gy = grad_y.transpose(1, 0, 2, 3).reshape(G, KG, L)
    w_mat = w.reshape(G, KG, CG * KH * KW)
    grad_w = np.matmul(gy, cols.transpose(0, 2, 1)).reshape(w.shape)
    grad_cols = np.matmul(w_mat.transpose(0, 2, 1), gy).reshape(C * KH * KW, L)
    grad_x = col2im(grad_cols, x.shape, (KH, KW), stride=stride, padding=padding, dilation=dilation)
    grad_b = grad_y.sum(axis=(0, 2, 3))
    return grad_x, grad_w, grad_b


def linear_backward(x, w, grad_y):
    """Gradients of y = x @ w.T + b: (grad_y @ w, grad_y.T @ x, sum_n grad_y)."""
    return grad_y @ w, grad_y.T @ x, grad_y.sum(axis=0)


def relu_backward(x, grad_y):
    """d relu / dx = 1 where x > 0, else 0 (0 at x == 0, as torch)."""
    return grad_y * (x > 0)


def _pool_backward(x, grad_y, geometry, route):
    """Scatter grad_y back through each of the KH*KW window taps; ``route(tap)`` gives the
    share of grad_y that tap (row-major index i*KW + j) receives. Shares landing on
    padding are dropped."""
    (KH, KW), (SH, SW), (top, left, _, _), (DH, DW), (OH, OW) = geometry
    N, C, H, W = x.shape
    HP, WP = (OH - 1) * SH + DH * (KH - 1) + 1, (OW - 1) * SW + DW * (KW - 1) + 1
    grad_xp = np.zeros((N, C, max(HP, top + H), max(WP, left + W)), dtype=grad_y.dtype)
    for i in range(KH):
        for j in range(KW):
            window = (slice(None), slice(None), slice(i * DH, i * DH + SH * (OH - 1) + 1, SH),
                      slice(j * DW, j * DW + SW * (OW - 1) + 1, SW))
            grad_xp[window] += route(i * KW + j)
    return grad_xp[:, :, top : top + H, left : left + W]


def max_pool2d_backward(x, grad_y, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The gradient goes to the first maximum of each window (row-major tap order), as
    torch's max_pool2d picks one index per window. Arguments as sqref.ops.max_pool2d."""
    geometry = ops.pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    (KH, KW), (SH, SW), _, (DH, DW), (OH, OW) = geometry
    xp = ops.pool_pad(x, geometry, -np.inf)
    y = ops.pool_windows(xp, geometry, np.maximum)
    taken = np.zeros(y.shape, dtype=bool)
    shares = []
    for i in range(KH):
        for j in range(KW):
            view = xp[:, :, i * DH : i * DH + SH * (OH - 1) + 1 : SH, j * DW : j * DW + SW * (OW - 1) + 1 : SW]
            first = (view == y) & ~taken
            taken |= first
            shares.append(np.where(first, grad_y, 0))
    return _pool_backward(x, grad_y, geometry, lambda tap: shares[tap])


def avg_pool2d_backward(x, grad_y, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        count_include_pad=True):
    """Each tap of a window receives grad_y / count (sqref.ops.pool_counts: KH*KW in floor
    mode with padding counted). Arguments as sqref.ops.avg_pool2d."""
    geometry = ops.pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    share = grad_y / ops.pool_counts(x.shape, geometry, count_include_pad=count_include_pad).astype(grad_y.dtype)
    return _pool_backward(x, grad_y, geometry, lambda tap: share)


# --------------------------------------------------------------------------
# graph ops (sqref.ops.add ... batch_norm)
# --------------------------------------------------------------------------
def unbroadcast(g, shape):
    """Sum ``g`` over the axes broadcasting added (leading) or stretched (length 1 in
    ``shape``), giving an array of ``shape``: the adjoint of np.broadcast_to(., g.shape)."""
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    try:
        fits = lead >= 0 and np.broadcast_shapes(shape, g.shape) == g.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"shape {shape} does not broadcast to the gradient's shape {g.shape}")
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g.reshape(shape)


def add_backward(a_shape, b_shape, grad_y):
    """Gradients of y = a + b (broadcast): (grad_y summed back to a_shape, to b_shape)."""
    return unbroadcast(grad_y, a_shape), unbroadcast(grad_y, b_shape)


def mul_backward(a, b, grad_y):
    """Gradients of y = a * b (broadcast): (sum of grad_y * b to a's shape, of grad_y * a to b's)."""
    return unbroadcast(grad_y * b, np.shape(a)), unbroadcast(grad_y * a, np.shape(b))


def div_backward(a, b, grad_y):
    """Gradients of y = a / b (broadcast): d/da = 1 / b, d/db = -a / b^2, computed as
    q = grad_y / b, grad_a = q, grad_b = -q * (a / b) (no b^2 to overflow); each summed back
    to its input's shape. IEEE results (inf, NaN) where b = 0, without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = grad_y / b
        return unbroadcast(q, np.shape(a)), unbroadcast(-q * (a / b), np.shape(b))


def concat_backward(shapes, grad_y, axis=1):
    """Gradients of y = concat(xs, axis): grad_y cut along ``axis`` back into pieces of
    ``shapes`` (xs' shapes, in order); returns a list of arrays (views of grad_y)."""
    axis = int(axis) % grad_y.ndim
    sizes = [s[axis] for s in shapes]
    if sum(sizes) != grad_y.shape[axis]:
        raise ValueError(f"shapes {list(shapes)} add up to {sum(sizes)} on axis {axis}, grad_y shape {grad_y.shape}")
    return np.split(grad_y, np.cumsum(sizes)[:-1], axis=axis)


def clip_backward(x, grad_y, lo=None, hi=None):
    """Gradient of y = clip(x, lo, hi): grad_y where lo < x < hi, 0 where x <= lo or x >= hi.

    At x == lo or x == hi the gradient is 0: torch's convention for relu6 and hardtanh
    (their backward zeroes x <= min_val and x >= max_val), so ReLU6's gradient matches
    torch.nn.functional.relu6 at 0 and 6. (torch.clamp's gradient passes at equality
    instead; sqref follows relu6.) A NaN x is not inside, so its gradient is 0, as relu_backward
    and torch's vectorised relu6 kernel (torch's scalar loop, for the last few elements of a
    tensor, passes grad_y there instead). The bounds are rounded to x's dtype, as the forward
    rounds them; lo > hi gives 0 everywhere (the output is constant).
    """
    inside = np.ones(np.shape(x), dtype=bool)
    if lo is not None:
        inside &= x > x.dtype.type(lo)
    if hi is not None:
        inside &= x < x.dtype.type(hi)
    return np.where(inside, grad_y, 0)


def sigmoid_backward(x, grad_y):
    """Gradient of y = sigmoid(x): grad_y * s * (1 - s), s = sigmoid(x)."""
    s = ops.sigmoid(x)
    return grad_y * s * (1 - s)


def hard_sigmoid_backward(x, grad_y, alpha=0.2, beta=0.5):
    """Gradient of y = hard_sigmoid(x, alpha, beta): grad_y * alpha where
    0 < alpha * x + beta < 1 (computed as the forward computes it, in x's dtype), else 0.

    0 at both kinks: torch's hardsigmoid convention (alpha = 1/6: gradient 1/6 for
    -3 < x < 3, 0 at -3 and 3 and outside); 0 at NaN, as torch.
    """
    t = x.dtype.type(alpha) * x + x.dtype.type(beta)
    return np.where((t > 0) & (t < 1), grad_y * alpha, 0)


def hard_swish_backward(x, grad_y):
    """Gradient of y = hard_swish(x) = x * clip(x/6 + 1/2, 0, 1):
    0 for x <= -3, grad_y * (x/3 + 1/2) for -3 < x < 3, grad_y for x >= 3.

    The kinks take their outer side, as torch.nn.functional.hardswish's gradient does
    (measured on torch 2.13: 0 at x = -3, 1 at x = 3, not the inner -1/2 and 3/2). A NaN x
    gets a NaN gradient (x/3 + 1/2 of NaN), as torch's vectorised kernel gives (its scalar
    loop, for the last few elements of a tensor, gives grad_y).
    """
    return np.where(x <= -3, 0, np.where(x >= 3, grad_y, grad_y * (x / 3 + 0.5)))


def global_avg_pool_backward(x_shape, grad_y):
    """Gradient of y = global_avg_pool(x): every x[n, c, h, w] gets grad_y[n, c, 0, 0] / (H * W).
    Shapes: grad_y (N, C, 1, 1) -> x_shape (N, C, H, W)."""
    H, W = x_shape[2], x_shape[3]
    return np.broadcast_to(grad_y / (H * W), tuple(x_shape)).copy()


def reduce_mean_backward(x_shape, grad_y, axes, keepdims=True):
    """Gradient of y = reduce_mean(x, axes, keepdims): grad_y (with the reduced axes put back
    when not keepdims) / the reduced element count, spread over the reduced axes."""
    axes = ops.reduce_axes(axes, len(x_shape))
    count = int(np.prod([x_shape[a] for a in axes], dtype=np.int64))
    if not keepdims:
        grad_y = np.expand_dims(grad_y, axes)
    return np.broadcast_to(grad_y / count, tuple(x_shape)).copy()


def reshape_backward(x_shape, grad_y):
    """Gradient of y = reshape(x, ...): grad_y reshaped back to x_shape."""
    return grad_y.reshape(x_shape)


def pad2d_backward(x_shape, grad_y, pads):
    """Gradient of y = pad2d(x, pads): the part of grad_y over x (the padding is a constant)."""
    top, left = pads[0], pads[1]
    H, W = x_shape[2], x_shape[3]
    return np.ascontiguousarray(grad_y[:, :, top : top + H, left : left + W])


def batch_norm_backward(x, grad_y, gamma, mean, var, eps=1e-5):
    """Gradients of inference-mode y = batch_norm(x, gamma, beta, mean, var, eps), statistics
    fixed (constants, as torch's batch_norm with training=False): returns
    (grad_x, grad_gamma, grad_beta).

    With s[c] = 1 / sqrt(var[c] + eps) and x_hat = (x - mean[c]) * s[c]:
        grad_x = grad_y * gamma[c] * s[c],
        grad_gamma[c] = sum over n and the spatial axes of grad_y * x_hat,
        grad_beta[c] = sum over n and the spatial axes of grad_y.
    Computed in float64; returned in grad_y's dtype.
    """
    C = x.shape[1]
    shape = (1, C) + (1,) * (x.ndim - 2)
    s = 1 / np.sqrt(np.asarray(var, np.float64) + eps)
    g64 = np.asarray(grad_y, np.float64)
    x_hat = (np.asarray(x, np.float64) - np.asarray(mean, np.float64).reshape(shape)) * s.reshape(shape)
    axes = (0,) + tuple(range(2, x.ndim))
    grad_x = g64 * (np.asarray(gamma, np.float64) * s).reshape(shape)
    dtype = grad_y.dtype
    return grad_x.astype(dtype), (g64 * x_hat).sum(axis=axes).astype(dtype), g64.sum(axis=axes).astype(dtype)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, as
    torch.nn.functional.cross_entropy; returns (loss, grad_logits).

    loss = -mean_n log_softmax(logits)[n, labels[n]];
    grad = (softmax(logits) - onehot(labels)) / N.
    """
    labels = np.asarray(labels)
    N, classes = logits.shape
    if labels.shape != (N,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
        raise ValueError(f"labels must be shape ({N},) with values in [0, {classes}), got shape {labels.shape}")
    logp = ops.log_softmax(logits)
    loss = -logp[np.arange(N), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(N), labels] -= 1
    return loss, grad / logits.dtype.type(N)


def check_distillation(temperature, alpha) -> None:
    """Raise ValueError unless temperature > 0 (finite) and alpha is in [0, 1]."""
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


def distillation_loss(logits, labels, teacher_logits, *, temperature: float, alpha: float):
    """Knowledge distillation (Hinton, Vinyals and Dean, 2015): the student
    learns the labels and the teacher's softened class probabilities.
    Returns (loss, grad_logits); with alpha = 0 it is softmax_cross_entropy.

    With s, t the student's and the teacher's logits, T the temperature and
    p_T(z) = softmax(z / T), mean over the N rows:
        loss = (1 - alpha) CE(softmax(s), labels) + alpha T^2 KL(p_T(t) || p_T(s)),
        grad = (1 - alpha) (softmax(s) - onehot(labels)) / N + alpha T (p_T(s) - p_T(t)) / N.
    The T^2 keeps the soft term's gradient the same size at every T. As torch:
    (1 - alpha) * cross_entropy(s, y) + alpha * T**2 * kl_div(log_softmax(s / T),
    log_softmax(t / T), log_target=True, reduction="batchmean").
    """
    check_distillation(temperature, alpha)
    if np.shape(teacher_logits) != logits.shape:
        raise ValueError(f"teacher_logits must have the logits' shape {logits.shape}, got {np.shape(teacher_logits)}")
    hard_loss, hard_grad = softmax_cross_entropy(logits, labels)
    dtype = logits.dtype.type
    T = dtype(temperature)
    log_student = ops.log_softmax(logits / T)
    log_teacher = ops.log_softmax(np.asarray(teacher_logits, dtype=logits.dtype) / T)
    teacher = np.exp(log_teacher)
    N = logits.shape[0]
    soft_loss = np.sum(teacher * (log_teacher - log_student)) / N
    soft_grad = (np.exp(log_student) - teacher) * (T / dtype(N))
    a = dtype(alpha)
    return (1 - a) * hard_loss + a * T * T * soft_loss, (1 - a) * hard_grad + a * soft_grad


def _params(layer, gw, gb):
    return {"weight": gw, "bias": gb} if layer.bias is not None else {"weight": gw}


def layer_backward(layer, xs, grad_y):
    """Dispatch on the layer type: (the layer's input tensors, the gradient of its
    output) -> ([gradient of each input], {param name: grad}). Parameters are
    the weights and biases of Conv2d and Linear (the ones sqref trains)."""
    x = xs[0]
    if isinstance(layer, Conv2d):
        gx, gw, gb = conv2d_backward(x, layer.weight, grad_y, stride=layer.stride, padding=layer.padding,
                                     dilation=layer.dilation, groups=layer.groups)
        return [gx], _params(layer, gw, gb)
    if isinstance(layer, Linear):
        gx, gw, gb = linear_backward(x, layer.weight, grad_y)
        return [gx], _params(layer, gw, gb)
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        pool = dict(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, ceil_mode=layer.ceil_mode)
        if isinstance(layer, MaxPool2d):
            return [max_pool2d_backward(x, grad_y, **pool)], {}
        return [avg_pool2d_backward(x, grad_y, **pool, count_include_pad=layer.count_include_pad)], {}
    if isinstance(layer, (Add, Mul, Div)):
        b = layer.const if layer.const is not None else xs[1]
        if isinstance(layer, Add):
            grads = add_backward(x.shape, np.shape(b), grad_y)
        else:
            grads = (mul_backward if isinstance(layer, Mul) else div_backward)(x, b, grad_y)
        return list(grads[:1] if layer.const is not None else grads), {}
    if isinstance(layer, Concat):
        return list(concat_backward([a.shape for a in xs], grad_y, axis=layer.axis)), {}
    if isinstance(layer, GlobalAvgPool):
        return [global_avg_pool_backward(x.shape, grad_y.reshape(x.shape[:2] + (1, 1)))], {}
    if isinstance(layer, (Flatten, Reshape)):
        return [reshape_backward(x.shape, grad_y)], {}
    if isinstance(layer, Pad):
        return [pad2d_backward(x.shape, grad_y, layer.pads)], {}
    if isinstance(layer, BatchNorm):
        gx, _, _ = batch_norm_backward(x, grad_y, layer.gamma, layer.mean, layer.var, eps=layer.eps)
        return [gx], {}
    elementwise = {
        ReLU: lambda: relu_backward(x, grad_y),
        Clip: lambda: clip_backward(x, grad_y, None if layer.lo == -np.inf else layer.lo,
                                    None if layer.hi == np.inf else layer.hi),
        Sigmoid: lambda: sigmoid_backward(x, grad_y),
        HardSigmoid: lambda: hard_sigmoid_backward(x, grad_y, layer.alpha, layer.beta),
        HardSwish: lambda: hard_swish_backward(x, grad_y),
    }
    if type(layer) in elementwise:
        return [elementwise[type(layer)]()], {}
    raise TypeError(f"no backward pass for layer type {type(layer).__name__}")


def model_gradients(model, x, labels, loss_fn=softmax_cross_entropy):
    """Loss and per-layer parameter gradients of `loss_fn(logits, labels) ->
    (loss, grad_logits)`, by default the mean cross-entropy, for a model with
    one output (the logits). Backpropagates through the graph in reverse layer
    order; a tensor read by several layers receives the sum of their gradients.

    Returns (loss, logits, [ {param: grad} for each layer ]).
    """
    if len(model.outputs) != 1:
        raise ValueError(f"training needs a model with one output (the logits), this one has {list(model.outputs)}")
    logits, tensors = run(model, x, return_intermediates=True)
    tensors[INPUT] = x
    loss, grad_logits = loss_fn(logits, labels)
    pending = {model.outputs[0]: grad_logits}  # tensor name -> gradient of the loss, summed over its readers
    grads = [{} for _ in model.layers]
    for index in range(len(model.layers) - 1, -1, -1):
        name, layer, reads = model.names[index], model.layers[index], model.wiring[index]
        grad_y = pending.pop(name, None)
        if grad_y is None:  # nothing downstream of this layer reaches the logits
            grads[index] = {key: np.zeros_like(a) for key, a in layer_arrays(layer).items()
                            if isinstance(layer, PARAM_LAYERS)}
            continue
        input_grads, grads[index] = layer_backward(layer, [tensors[r] for r in reads], grad_y)
        for r, g in zip(reads, input_grads):
            if r != INPUT:
                pending[r] = g if r not in pending else pending[r] + g
    return loss, logits, grads


__all__ = [
    "conv2d_backward", "linear_backward", "relu_backward", "max_pool2d_backward",
    "avg_pool2d_backward", "softmax_cross_entropy", "check_distillation", "distillation_loss", "layer_backward", "model_gradients",
    "unbroadcast", "add_backward", "mul_backward", "div_backward", "concat_backward", "clip_backward", "sigmoid_backward",
    "hard_sigmoid_backward", "hard_swish_backward", "global_avg_pool_backward", "reduce_mean_backward", "reshape_backward",
    "batch_norm_backward", "pad2d_backward",
]
