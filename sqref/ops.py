"""Forward ops of the float engine: NCHW activations, OIHW weights.

Every op is a pure function on NumPy arrays and matches a PyTorch functional
op (named in its docstring). The loop nests in `sqref.oracle` are the source
of truth; the tests check these fast versions against them.

Dtypes: float32 or float64 in; the result has the inputs' common float dtype
(float32 for float32 inputs). Integer inputs are a TypeError: the integer
path lives elsewhere and says so.
"""
from __future__ import annotations

import numpy as np

# im2col chunk size: the batch is processed in chunks whose column matrix
# (C*KH*KW x n_chunk*OH*W' elements) stays below this many bytes, or holds one
# image, whichever is larger. Small enough to stay in cache between the
# slice copies that write it and the GEMM that reads it; on the small VGG
# at batch 64 1 MiB chunks made the convolutions faster than 2, 8 or 32 MiB
# ones (benchmarks/bench_conv.py --chunk-mib compares sizes).
IM2COL_MAX_BYTES = 1 * 2**20


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def pair(value, name: str) -> tuple[int, int]:
    """Return `value` as an (H, W) pair of ints: 3 -> (3, 3), (1, 2) -> (1, 2)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_float(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    return a


def _check_ndim(name: str, a: np.ndarray, ndim: int, layout: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D ({layout}), got shape {a.shape}")


def output_size(size: int, kernel: int, *, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length along one axis: (size + 2*padding - dilation*(kernel-1) - 1) // stride + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------
def im2col(x, kernel, *, stride=1, padding=0, dilation=1):
    """Column matrix of 2-D cross-correlation patches.

    Shapes: x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW), rows ordered (C, KH, KW)
    like a flattened OIHW weight, columns ordered (N, OH, OW).

    Built from KH*KW strided slice copies of the padded input (one per kernel
    tap) rather than `sliding_window_view` + reshape: the slices are
    contiguous reads and the copy lands directly in GEMM layout, which
    measured about 2.5x faster on VGG-sized layers.
    Formula: cols[(c, i, j), (n, oh, ow)] = xpad[n, c, oh*SH + i*DH, ow*SW + j*DW].
    """
    KH, KW = pair(kernel, "kernel")
    SH, SW = pair(stride, "stride")
    PH, PW = pair(padding, "padding")
    DH, DW = pair(dilation, "dilation")
    N, C, H, W = x.shape
    OH = output_size(H, KH, stride=SH, padding=PH, dilation=DH)
    OW = output_size(W, KW, stride=SW, padding=PW, dilation=DW)
    # C first so that each tap's slice copies into one contiguous block.
    xt = x.transpose(1, 0, 2, 3)
    if PH or PW:
        xt = np.pad(xt, ((0, 0), (0, 0), (PH, PH), (PW, PW)))
    cols = np.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    for i in range(KH):
        h0 = i * DH
        for j in range(KW):
            w0 = j * DW
            cols[:, i, j] = xt[:, :, h0 : h0 + SH * (OH - 1) + 1 : SH, w0 : w0 + SW * (OW - 1) + 1 : SW]
    return cols.reshape(C * KH * KW, N * OH * OW)


def grid_im2col(x, kernel, *, padding=0, dilation=1):
    """Stride-1 column matrix on the padded grid, built from contiguous runs.

    Shapes: x (N, C, H, W) -> cols (C*KH*KW, N*OH*Wp), Wp = W + 2*PW: rows
    ordered (C, KH, KW), columns (n, oh, ow') for every ow' in [0, Wp), of
    which the first OW are the convolution's; the caller crops the rest
    from the GEMM output (`conv_gemm`), which is C*KH*KW/K times smaller
    than the columns.
    Formula: with f = each zero-padded image flattened per channel and
    followed by DW*(KW-1) zeros,
    cols[(c, i, j), (n, oh, ow')] = f[c, n, (oh + i*DH)*Wp + ow' + j*DW],
    so each kernel tap of each image is ONE contiguous slice of f of length
    OH*Wp, instead of OH rows of OW as in `im2col` (8x8 maps have 32-byte
    rows): benchmarks/bench_conv.py compares the two.
    """
    KH, KW = pair(kernel, "kernel")
    PH, PW = pair(padding, "padding")
    DH, DW = pair(dilation, "dilation")
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * PH, W + 2 * PW
    OH = Hp - DH * (KH - 1)
    L = OH * Wp
    f = np.zeros((C, N, Hp * Wp + DW * (KW - 1)), dtype=x.dtype)
    f[:, :, : Hp * Wp].reshape(C, N, Hp, Wp)[:, :, PH : PH + H, PW : PW + W] = x.transpose(1, 0, 2, 3)
    cols = np.empty((C, KH, KW, N, L), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            start = i * DH * Wp + j * DW
            cols[:, i, j] = f[:, :, start : start + L]
    return cols.reshape(C * KH * KW, N * L)


def col2im(cols, x_shape, kernel, *, stride=1, padding=0, dilation=1):
    """Adjoint of `im2col`: scatter-add columns back onto an (N, C, H, W) array.

    Used by the conv backward pass (gradient w.r.t. the input).
    """
    KH, KW = pair(kernel, "kernel")
    SH, SW = pair(stride, "stride")
    PH, PW = pair(padding, "padding")
    DH, DW = pair(dilation, "dilation")
    N, C, H, W = x_shape
    OH = output_size(H, KH, stride=SH, padding=PH, dilation=DH)
    OW = output_size(W, KW, stride=SW, padding=PW, dilation=DW)
    cols = cols.reshape(C, KH, KW, N, OH, OW)
    xt = np.zeros((C, N, H + 2 * PH, W + 2 * PW), dtype=cols.dtype)
    for i in range(KH):
        h0 = i * DH
        for j in range(KW):
            w0 = j * DW
            xt[:, :, h0 : h0 + SH * (OH - 1) + 1 : SH, w0 : w0 + SW * (OW - 1) + 1 : SW] += cols[:, i, j]
    return xt[:, :, PH : PH + H, PW : PW + W].transpose(1, 0, 2, 3)


# --------------------------------------------------------------------------
# convolution and linear
# --------------------------------------------------------------------------
def check_conv_args(x, w, b, *, stride, padding, dilation, groups):
    """Validate conv2d arguments; return (x, w, b) as arrays. Errors name the shapes."""
    x = _check_float("x", x)
    w = _check_float("w", w)
    _check_ndim("x", x, 4, "N, C, H, W")
    _check_ndim("w", w, 4, "K, C/groups, KH, KW")
    for name, v, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if min(pair(v, name)) < low:
            raise ValueError(f"{name} must be >= {low}, got {v!r}")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    N, C, H, W = x.shape
    K, CG, KH, KW = w.shape
    if C % groups or K % groups:
        raise ValueError(f"groups={groups} must divide C={C} and K={K}")
    if CG != C // groups:
        raise ValueError(f"w shape {w.shape} needs C/groups = {C // groups} input channels (x shape {x.shape}, groups={groups})")
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    OH = output_size(H, KH, stride=SH, padding=PH, dilation=DH)
    OW = output_size(W, KW, stride=SW, padding=PW, dilation=DW)
    if OH < 1 or OW < 1:
        raise ValueError(f"kernel {KH}x{KW} (dilation {dilation}) does not fit input {H}x{W} with padding {padding}")
    if b is not None:
        b = _check_float("b", b)
        if b.shape != (K,):
            raise ValueError(f"b must have shape ({K},), got {b.shape}")
    return x, w, b


def conv_gemm(x, w, *, stride=1, padding=0, dilation=1, groups=1, matmul=np.matmul, out_dtype=None):
    """The convolution's sum without bias: one GEMM per chunk of images, W_g @ columns_g.

    Shapes: x (N, C, H, W), w (K, C/groups, KH, KW) -> (N, K, OH, OW) of out_dtype
    (default x's). `matmul(a, b)` multiplies a (G, KG, CG*KH*KW) by b
    (G, CG*KH*KW, M): np.matmul here, sqref.integer.exact_matmul for the
    integer path. Stride 1 takes its columns from `grid_im2col` (contiguous
    copies; the padded grid's extra columns are cropped from the output),
    other strides from `im2col`. The batch goes in chunks whose column matrix
    stays under IM2COL_MAX_BYTES. Padding is zeros. Arguments are not checked
    here (conv2d and integer.conv2d_accumulate check them).
    """
    N, C, H, W = x.shape
    K, CG, KH, KW = w.shape
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    OH = output_size(H, KH, stride=SH, padding=PH, dilation=DH)
    OW = output_size(W, KW, stride=SW, padding=PW, dilation=DW)
    grid = (SH, SW) == (1, 1)
    width = W + 2 * PW if grid else OW  # columns per output row
    G, KG, kdim = groups, K // groups, CG * KH * KW
    w_mat = w.reshape(G, KG, kdim)
    y = np.empty((N, K, OH, OW), dtype=out_dtype or x.dtype)
    chunk = max(1, IM2COL_MAX_BYTES // (C * KH * KW * OH * width * x.dtype.itemsize))
    for n0 in range(0, N, chunk):
        xs = x[n0 : n0 + chunk]
        n = xs.shape[0]
        if grid:
            cols = grid_im2col(xs, (KH, KW), padding=(PH, PW), dilation=(DH, DW))
        else:
            cols = im2col(xs, (KH, KW), stride=(SH, SW), padding=(PH, PW), dilation=(DH, DW))
        out = matmul(w_mat, cols.reshape(G, kdim, n * OH * width))  # (G, KG, n*OH*width)
        y[n0 : n0 + n] = out.reshape(K, n, OH, width)[..., :OW].transpose(1, 0, 2, 3)
    return y


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    Shapes: x (N, C, H, W), w (K, C/groups, KH, KW), b (K,) -> y (N, K, OH, OW),
            OH = (H + 2*PH - DH*(KH-1) - 1) // SH + 1 (likewise OW).
    Formula: y[n, k, oh, ow] = b[k] + sum_{c, i, j} w[k, c, i, j] *
             xpad[n, g*C/G + c, oh*SH + i*DH, ow*SW + j*DW],  g = k // (K/G).
    Method: `conv_gemm` (the column matrix of a chunk of images, one GEMM per
    chunk and group), then the bias.
    Oracle: sqref.oracle.conv2d (loop nest).
    """
    x, w, b = check_conv_args(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    dtype = np.result_type(x, w)
    x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
    y = conv_gemm(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if b is not None:
        y += b.astype(dtype, copy=False)[None, :, None, None]
    return y


def linear(x, w, b=None):
    """Affine map, as torch.nn.functional.linear.

    Shapes: x (N, IN), w (OUT, IN), b (OUT,) -> y (N, OUT).
    Formula: y[n, o] = b[o] + sum_i x[n, i] * w[o, i].
    Oracle: sqref.oracle.linear.
    """
    x = _check_float("x", x)
    w = _check_float("w", w)
    _check_ndim("x", x, 2, "N, IN")
    _check_ndim("w", w, 2, "OUT, IN")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x shape {x.shape} and w shape {w.shape}: IN must match")
    y = x @ w.T
    if b is not None:
        b = _check_float("b", b)
        if b.shape != (w.shape[0],):
            raise ValueError(f"b must have shape ({w.shape[0]},), got {b.shape}")
        y = y + b
    return y


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------
def _pool(x, kernel, stride, padding, fill, combine):
    """Reduce every pooling window with the pairwise op `combine` (np.maximum or np.add).

    Separable: first across the KH rows of each window (whole rows at a time),
    then across the KW columns of the row results. For max this is exactly
    the max over the window (max is associative and commutative). It reads
    whole rows and then KW strided views, instead of KH*KW strided views of
    the input (benchmarks/bench_forward.py times the models that use it).
    """
    KH, KW = pair(kernel, "kernel_size")
    SH, SW = pair(kernel if stride is None else stride, "stride")
    PH, PW = pair(padding, "padding")
    N, C, H, W = x.shape
    if min(KH, KW, SH, SW) < 1 or min(PH, PW) < 0:
        raise ValueError(f"kernel_size {kernel!r} and stride {stride!r} must be >= 1, padding {padding!r} >= 0")
    if PH > KH // 2 or PW > KW // 2:
        raise ValueError(f"padding {padding!r} must be at most half of kernel_size {kernel!r}")
    OH = output_size(H, KH, stride=SH, padding=PH)
    OW = output_size(W, KW, stride=SW, padding=PW)
    if OH < 1 or OW < 1:
        raise ValueError(f"kernel_size {kernel!r} does not fit input {H}x{W} with padding {padding!r}")
    if PH or PW:
        x = np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=fill)
    rows = x[:, :, 0 : SH * (OH - 1) + 1 : SH].copy()
    for i in range(1, KH):
        combine(rows, x[:, :, i : i + SH * (OH - 1) + 1 : SH], out=rows)
    y = rows[:, :, :, 0 : SW * (OW - 1) + 1 : SW].copy()
    for j in range(1, KW):
        combine(y, rows[:, :, :, j : j + SW * (OW - 1) + 1 : SW], out=y)
    return y


def max_pool2d(x, *, kernel_size, stride=None, padding=0):
    """2-D max pooling, as torch.nn.functional.max_pool2d (floor mode).

    Shapes: x (N, C, H, W) -> (N, C, OH, OW); stride defaults to kernel_size;
    padding pads with -inf (it never wins).
    Formula: y[n, c, oh, ow] = max_{i, j} xpad[n, c, oh*SH + i, ow*SW + j].
    Oracle: sqref.oracle.max_pool2d.
    """
    x = _check_float("x", x)
    _check_ndim("x", x, 4, "N, C, H, W")
    return _pool(x, kernel_size, stride, padding, -np.inf, np.maximum)


def avg_pool2d(x, *, kernel_size, stride=None, padding=0):
    """2-D average pooling, as torch.nn.functional.avg_pool2d (floor mode,
    count_include_pad=True: padded zeros count in the divisor KH*KW).

    Shapes: x (N, C, H, W) -> (N, C, OH, OW).
    Formula: y[n, c, oh, ow] = sum_{i, j} xpad[n, c, oh*SH + i, ow*SW + j] / (KH*KW),
    summed row by row then across the row sums (see `_pool`).
    Oracle: sqref.oracle.avg_pool2d.
    """
    x = _check_float("x", x)
    _check_ndim("x", x, 4, "N, C, H, W")
    KH, KW = pair(kernel_size, "kernel_size")
    return _pool(x, kernel_size, stride, padding, 0.0, np.add) / x.dtype.type(KH * KW)


# --------------------------------------------------------------------------
# elementwise, reshape, normalisation
# --------------------------------------------------------------------------
def relu(x):
    """max(x, 0), as torch.nn.functional.relu. Shapes: any -> same."""
    x = _check_float("x", x)
    return np.maximum(x, x.dtype.type(0))


def flatten(x):
    """(N, ...) -> (N, prod(...)), as torch.flatten(x, 1) on a C-ordered array."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"flatten needs a batch axis, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def log_softmax(x, axis=-1):
    """log(softmax(x)), as torch.nn.functional.log_softmax, computed stably:
    x - max - log(sum(exp(x - max)))."""
    x = _check_float("x", x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)), as torch.nn.functional.softmax (max subtracted first)."""
    x = _check_float("x", x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def fold_batchnorm(w, b, *, gamma, beta, mean, var, eps=1e-5):
    """Fold an inference-mode batch norm into the preceding conv or linear layer.

    BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta, per output channel
    (axis 0 of OIHW or OUT x IN). With t = gamma / sqrt(var + eps):
        w' = w * t (broadcast over axis 0),  b' = (b - mean) * t + beta.
    Shapes: w (K, ...), b (K,) or None, gamma/beta/mean/var (K,) -> (w', b').
    Oracle: conv2d(x, w', b') == BN(conv2d(x, w, b)) (tested).
    """
    w = _check_float("w", w)
    K = w.shape[0]
    b = np.zeros(K, dtype=w.dtype) if b is None else _check_float("b", b)
    params = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
    for name, p in params.items():
        p = np.asarray(p)
        if p.shape != (K,):
            raise ValueError(f"{name} must have shape ({K},) to match w shape {w.shape}, got {p.shape}")
    if np.any(np.asarray(var) + eps <= 0):
        raise ValueError(f"var + eps must be positive, got min {np.min(np.asarray(var)) + eps}")
    t = (np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps))
    w_f = (w.astype(np.float64) * t.reshape((K,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    b_f = ((b.astype(np.float64) - np.asarray(mean, np.float64)) * t + np.asarray(beta, np.float64)).astype(w.dtype)
    return w_f, b_f
