"""Backward passes of the float ops and the softmax cross-entropy loss.

Each `*_backward` takes the forward inputs and the gradient of the loss with
respect to the forward output, and returns the gradients with respect to the
inputs and parameters. Checked against central finite differences (float64)
and against torch.autograd in the tests.
"""
from __future__ import annotations

import numpy as np

from sqref import ops
from sqref.model import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
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


def layer_backward(layer, x, grad_y):
    """Dispatch on the layer type: returns (grad_x, {param name: grad})."""
    if isinstance(layer, Conv2d):
        gx, gw, gb = conv2d_backward(x, layer.weight, grad_y, stride=layer.stride, padding=layer.padding,
                                     dilation=layer.dilation, groups=layer.groups)
        return gx, ({"weight": gw, "bias": gb} if layer.bias is not None else {"weight": gw})
    if isinstance(layer, Linear):
        gx, gw, gb = linear_backward(x, layer.weight, grad_y)
        return gx, ({"weight": gw, "bias": gb} if layer.bias is not None else {"weight": gw})
    if isinstance(layer, ReLU):
        return relu_backward(x, grad_y), {}
    if isinstance(layer, MaxPool2d):
        return max_pool2d_backward(x, grad_y, kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding), {}
    if isinstance(layer, AvgPool2d):
        return avg_pool2d_backward(x, grad_y, kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding), {}
    if isinstance(layer, Flatten):
        return grad_y.reshape(x.shape), {}
    raise TypeError(f"no backward pass for layer type {type(layer).__name__}")


def model_gradients(model, x, labels, loss_fn=softmax_cross_entropy):
    """Loss and per-layer parameter gradients of `loss_fn(logits, labels) ->
    (loss, grad_logits)`, by default the mean cross-entropy.

    Returns (loss, logits, [ {param: grad} for each layer ]).
    """
    inputs = [x]
    for layer in model.layers:
        inputs.append(layer(inputs[-1]))
    logits = inputs[-1]
    loss, grad = loss_fn(logits, labels)
    grads = [None] * len(model.layers)
    for index in range(len(model.layers) - 1, -1, -1):
        grad, grads[index] = layer_backward(model.layers[index], inputs[index], grad)
    return loss, logits, grads


__all__ = [
    "conv2d_backward", "linear_backward", "relu_backward", "max_pool2d_backward",
    "avg_pool2d_backward", "softmax_cross_entropy", "check_distillation", "distillation_loss", "layer_backward", "model_gradients",
]
