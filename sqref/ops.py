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


def conv_gemm(x, w, *, stride=1, padding=0, dilation=1, groups=1, matmul=np.matmul, out_dtype=None, epilogue=None):
    """The convolution's sum without bias: one GEMM per chunk of images, W_g @ columns_g.

    Shapes: x (N, C, H, W), w (K, C/groups, KH, KW) -> (N, K, OH, OW) of out_dtype
    (default x's). `matmul(a, b)` multiplies a (G, KG, CG*KH*KW) by b
    (G, CG*KH*KW, M): np.matmul here, sqref.integer.exact_matmul for the
    integer path. Stride 1 takes its columns from `grid_im2col` (contiguous
    copies; the padded grid's extra columns are cropped from the output),
    other strides from `im2col`. The batch goes in chunks whose column matrix
    stays under IM2COL_MAX_BYTES. Padding is zeros. Arguments are not checked
    here (conv2d and integer.conv2d_accumulate check them).
    epilogue: None, or a function applied to each chunk's GEMM result, shaped
    (K, n * OH * width), before it is stored (the integer path requantizes
    there, while the chunk is in cache: sqref.integer.kernels.conv2d_requant);
    it returns an array of that shape, stored as out_dtype.
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
        if epilogue is not None:
            out = epilogue(out.reshape(K, n * OH * width))
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


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, trans_a=False, trans_b=False):
    """General matrix multiply, as ONNX Gemm: y = alpha * A' @ B' + beta * C.

    Shapes: A' = a.T if trans_a else a (M, K); B' = b.T if trans_b else b (K, N);
    c broadcasts to (M, N) (a scalar, (N,), (1, N), (M, 1) or (M, N)) or is None.
    Dtypes: float32 or float64; the result has a's dtype. alpha and beta are applied in
    that dtype (ONNX's float attributes are float32). linear(x, w, b) is gemm(x, w, b,
    trans_b=True). Oracle: numpy's matmul in float64 (tests/test_onnx_nodes.py runs ONNX's
    own Gemm cases).
    """
    a, b = _check_float("a", a), _check_float("b", b)
    _check_ndim("a", a, 2, "M, K or K, M")
    _check_ndim("b", b, 2, "K, N or N, K")
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"A' {a.shape} and B' {b.shape}: K must match (trans_a={trans_a}, trans_b={trans_b})")
    y = (a @ b.astype(a.dtype, copy=False)) * a.dtype.type(alpha)
    if c is not None:
        c = _check_float("c", c)
        try:
            y = y + c.astype(a.dtype, copy=False) * a.dtype.type(beta)
        except ValueError:
            raise ValueError(f"c shape {c.shape} does not broadcast to {y.shape}") from None
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
def pool_pads(padding) -> tuple[int, int, int, int]:
    """Pool padding as (top, left, bottom, right): an int, an (H, W) pair (symmetric, as
    torch), or four ints (ONNX's pads [begin..., end...] for two spatial axes)."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in padding):
            return tuple(int(v) for v in padding)
        raise TypeError(f"padding must be ints, got {padding!r}")
    PH, PW = pair(padding, "padding")
    return PH, PW, PH, PW


def pool_output_size(size: int, kernel: int, *, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a pool along one axis, as torch and ONNX compute it.

    floor/ceil((size + pad_begin + pad_end - dilation*(kernel-1) - 1) / stride) + 1; in ceil
    mode a last window that would start past the input and its begin padding is dropped
    (torch's pooling_output_shape; ONNX: "sliding windows that start in the right padded
    region are ignored").
    """
    span = dilation * (kernel - 1) + 1
    total = size + pad_begin + pad_end - span
    if total < 0:
        return 0
    out = (total + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1, *, upper: bool = True) -> tuple[int, int]:
    """SAME padding of one axis, as ONNX's auto_pad and TensorFlow compute it: the output is
    ceil(size / stride), the total padding max((out - 1) * stride + dilation * (kernel - 1) + 1
    - size, 0), split (before, after) with the odd one at the end (SAME_UPPER, TensorFlow's)
    or, with upper=False, at the beginning (SAME_LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def pool_geometry(shape, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """Checked pool arguments for an input of ``shape`` (..., H, W):
    ((KH, KW), (SH, SW), (top, left, bottom, right), (DH, DW), (OH, OW)); one-line ValueError
    or TypeError naming the argument otherwise."""
    KH, KW = pair(kernel_size, "kernel_size")
    SH, SW = pair(kernel_size if stride is None else stride, "stride")
    DH, DW = pair(dilation, "dilation")
    pads = pool_pads(padding)
    H, W = shape[-2:]
    if min(KH, KW, SH, SW, DH, DW) < 1 or min(pads) < 0:
        raise ValueError(f"kernel_size {kernel_size!r}, stride {stride!r} and dilation {dilation!r} must be >= 1, "
                         f"padding {padding!r} >= 0")
    span = (DH * (KH - 1) + 1, DW * (KW - 1) + 1)
    if max(pads[0], pads[2]) >= span[0] or max(pads[1], pads[3]) >= span[1]:
        raise ValueError(f"padding {padding!r} must be smaller than the window {span[0]}x{span[1]} "
                         f"(kernel_size {kernel_size!r}, dilation {dilation!r}): a window would cover padding only")
    OH = pool_output_size(H, KH, stride=SH, pad_begin=pads[0], pad_end=pads[2], dilation=DH, ceil_mode=ceil_mode)
    OW = pool_output_size(W, KW, stride=SW, pad_begin=pads[1], pad_end=pads[3], dilation=DW, ceil_mode=ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"kernel_size {kernel_size!r} does not fit input {H}x{W} with padding {padding!r}")
    return (KH, KW), (SH, SW), pads, (DH, DW), (OH, OW)


def pool_pad(x, geometry, fill):
    """x padded at (top, left) and at the end as far as the last window reaches (the declared
    end padding, or in ceil mode past it), with ``fill``. Shapes: (..., H, W) -> (..., HP, WP)."""
    (KH, KW), (SH, SW), (top, left, _, _), (DH, DW), (OH, OW) = geometry
    H, W = x.shape[-2:]
    HP, WP = (OH - 1) * SH + DH * (KH - 1) + 1, (OW - 1) * SW + DW * (KW - 1) + 1
    x = x[..., : max(HP - top, 0), : max(WP - left, 0)]  # rows no window reaches
    widths = [(0, 0)] * (x.ndim - 2) + [(top, HP - top - x.shape[-2]), (left, WP - left - x.shape[-1])]
    return np.pad(x, widths, constant_values=fill) if any(a or b for a, b in widths) else x


def pool_windows(xp, geometry, combine):
    """Reduce every window of the padded input ``xp`` with the pairwise op ``combine``
    (np.maximum or np.add).

    Separable: first across the KH (dilated) rows of each window, whole rows at a time,
    then across the KW columns of the row results: the max, or the sum added row by
    row, of every window. It reads whole rows and then KW strided views instead of
    KH*KW strided views of the input (benchmarks/bench_forward.py times it).
    """
    (KH, KW), (SH, SW), _, (DH, DW), (OH, OW) = geometry
    rows = xp[..., 0 : SH * (OH - 1) + 1 : SH, :].copy()
    for i in range(1, KH):
        combine(rows, xp[..., i * DH : i * DH + SH * (OH - 1) + 1 : SH, :], out=rows)
    y = rows[..., 0 : SW * (OW - 1) + 1 : SW].copy()
    for j in range(1, KW):
        combine(y, rows[..., j * DW : j * DW + SW * (OW - 1) + 1 : SW], out=y)
    return y


def pool_counts(shape, geometry, *, count_include_pad):
    """How many taps of every window count in an average: those on the input, and with
    ``count_include_pad`` also those on the declared padding (never the ceil-mode overhang
    past it, as torch and ONNX). Shapes: (..., H, W) -> (OH, OW) float64."""
    H, W = shape[-2:]
    top, left, bottom, right = geometry[2]
    mask = pool_pad(np.ones((H, W)), geometry, 1.0 if count_include_pad else 0.0)
    mask[top + H + bottom :, :] = 0.0  # the ceil-mode overhang
    mask[:, left + W + right :] = 0.0
    return pool_windows(mask, geometry, np.add)


def max_pool2d(x, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d and ONNX MaxPool.

    Shapes: x (N, C, H, W) -> (N, C, OH, OW); stride defaults to kernel_size (torch's
    default; ONNX's is 1: its importer passes it); padding an int, (PH, PW), or
    (top, left, bottom, right) (pool_pads), filled with -inf (it never wins); OH and OW
    as pool_output_size (floor, or ceil_mode).
    Formula: y[n, c, oh, ow] = max_{i, j} xpad[n, c, oh*SH + i*DH, ow*SW + j*DW].
    Oracle: sqref.oracle.max_pool2d.
    """
    x = _check_float("x", x)
    _check_ndim("x", x, 4, "N, C, H, W")
    geometry = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if geometry[3] != (1, 1) and pool_counts(x.shape, geometry, count_include_pad=False).min() == 0:
        raise ValueError(f"with dilation {dilation!r} and padding {padding!r} some window of kernel_size "
                         f"{kernel_size!r} touches no input element of {x.shape[-2]}x{x.shape[-1]}")
    return pool_windows(pool_pad(x, geometry, -np.inf), geometry, np.maximum)


def avg_pool2d(x, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True):
    """2-D average pooling, as torch.nn.functional.avg_pool2d and ONNX AveragePool.

    Shapes: x (N, C, H, W) -> (N, C, OH, OW); stride, padding, dilation (ONNX has it,
    torch does not) and ceil_mode as max_pool2d.
    count_include_pad=True (torch's default; ONNX's default is 0: its importer passes it):
    taps on the declared padding count in the divisor; taps past it (ceil mode) never do.
    Formula: y[n, c, oh, ow] = sum_{i, j} xpad[n, c, oh*SH + i*DH, ow*SW + j*DW] / count[oh, ow],
    summed row by row then across the row sums (pool_windows), count from pool_counts
    (KH*KW everywhere in floor mode with padding counted).
    Oracle: sqref.oracle.avg_pool2d.
    """
    x = _check_float("x", x)
    _check_ndim("x", x, 4, "N, C, H, W")
    geometry = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    total = pool_windows(pool_pad(x, geometry, 0.0), geometry, np.add)
    counts = pool_counts(x.shape, geometry, count_include_pad=count_include_pad)
    if counts.min() == 0:
        raise ValueError(f"with dilation {dilation!r} and padding {padding!r} some window of kernel_size "
                         f"{kernel_size!r} counts no element of {x.shape[-2]}x{x.shape[-1]}")
    (KH, KW) = geometry[0]
    if np.all(counts == KH * KW):
        return total / x.dtype.type(KH * KW)
    return total / counts.astype(x.dtype)


# --------------------------------------------------------------------------
# elementwise, reshape, normalisation
# --------------------------------------------------------------------------
def relu(x):
    """max(x, 0), as torch.nn.functional.relu. Shapes: any -> same."""
    x = _check_float("x", x)
    return np.maximum(x, x.dtype.type(0))


def flatten(x, *, axis=1):
    """A 2-D view, as ONNX Flatten: (d0, ..., dr-1) -> (d0 * ... * d(axis-1), d(axis) * ... * dr-1),
    on a C-ordered array. axis in [-r, r]; the default 1 is torch.flatten(x, 1): (N, prod(...))."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"flatten needs a batch axis, got shape {x.shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"flatten axis must be an int in [{-x.ndim}, {x.ndim}] for shape {x.shape}, got {axis!r}")
    axis = int(axis) + x.ndim if axis < 0 else int(axis)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))


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


# --------------------------------------------------------------------------
# graph ops: broadcasting arithmetic, concat, activations, reductions, reshape,
# batch norm (the ONNX ops a DAG model needs beyond the layer chain)
# --------------------------------------------------------------------------
def _check_number(name: str, value, *, finite: bool = True) -> float:
    """A real scalar (int, float or 0-d real array, not bool) as a float; NaN always refused,
    +-inf refused when ``finite``."""
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0 or np.asarray(value).dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if np.isnan(v) or (finite and np.isinf(v)):
        raise ValueError(f"{name} must be a {'finite' if finite else 'non-NaN'} number, got {value!r}")
    return v


def _check_flag(name: str, value) -> bool:
    """A bool, or an ONNX int attribute 0/1."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be a bool (or 0/1), got {value!r}")


def _broadcast_pair(a, b):
    """a and b as arrays of their common float dtype; ValueError naming both shapes unless
    they broadcast (NumPy's rules, which are ONNX's multidirectional broadcasting)."""
    a, b = _check_float("a", a), _check_float("b", b)
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"a shape {a.shape} and b shape {b.shape} do not broadcast") from None
    dtype = np.result_type(a, b)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def add(a, b):
    """a + b elementwise with broadcasting, as ONNX Add and torch.add.
    Shapes: broadcast(a.shape, b.shape); arithmetic in the common dtype (float32 for float32)."""
    a, b = _broadcast_pair(a, b)
    return a + b


def mul(a, b):
    """a * b elementwise with broadcasting, as ONNX Mul and torch.mul (float32 for float32)."""
    a, b = _broadcast_pair(a, b)
    return a * b


def div(a, b):
    """a / b elementwise with broadcasting, as ONNX Div and torch.div: one IEEE division in
    the common dtype (float32 for float32, as ONNX), so x / 0 is +-inf and 0 / 0 NaN,
    without NumPy's warnings."""
    a, b = _broadcast_pair(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def concat(xs, axis=1):
    """Join arrays along ``axis``, as ONNX Concat and torch.cat.

    Shapes: xs[i] (d0, ..., k_i, ..., d_{r-1}), every axis but ``axis`` equal ->
    (d0, ..., sum_i k_i, ..., d_{r-1}); axis in [-r, r-1] (default 1: channels of NCHW).
    xs is a list or tuple of float arrays; the result has their common dtype.
    """
    if not isinstance(xs, (list, tuple)):
        raise ValueError(f"xs must be a list or tuple of arrays, got {type(xs).__name__}")
    if not xs:
        raise ValueError("xs must hold at least one array, got none")
    xs = [_check_float(f"xs[{i}]", x) for i, x in enumerate(xs)]
    r = xs[0].ndim
    if r == 0:
        raise ValueError("xs[0] must have at least one axis, got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -r <= axis < r:
        raise ValueError(f"axis must be an int in [{-r}, {r - 1}] for {r}-D arrays, got {axis!r}")
    axis = int(axis) % r
    for i, x in enumerate(xs[1:], 1):
        if x.ndim != r or x.shape[:axis] != xs[0].shape[:axis] or x.shape[axis + 1 :] != xs[0].shape[axis + 1 :]:
            raise ValueError(f"xs[{i}] shape {x.shape} must match xs[0] shape {xs[0].shape} on every axis but {axis}")
    dtype = np.result_type(*xs)
    return np.concatenate([x.astype(dtype, copy=False) for x in xs], axis=axis)


def clip(x, lo=None, hi=None):
    """min(max(x, lo), hi), as ONNX Clip (min and max inputs) and torch.clamp; ReLU6 is
    clip(x, 0, 6) (torch.nn.functional.relu6).

    lo or hi None: no bound on that side (ONNX's omitted input). The bounds are rounded to
    x's dtype first (ONNX's min and max have the input's type). lo > hi gives hi everywhere
    (ONNX: "all values set to max"). NaN in x stays NaN (np.maximum and np.minimum propagate
    it, as ONNX's reference np.clip); a NaN bound is a ValueError. Shapes: any -> same.
    """
    x = _check_float("x", x)
    lo = None if lo is None else x.dtype.type(_check_number("lo", lo, finite=False))
    hi = None if hi is None else x.dtype.type(_check_number("hi", hi, finite=False))
    y = x.copy() if lo is None else np.maximum(x, lo)
    return y if hi is None else np.minimum(y, hi)


def sigmoid(x):
    """1 / (1 + exp(-x)), as ONNX Sigmoid and torch.sigmoid, with no overflow: with
    e = exp(-|x|) in (0, 1], sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0.
    NaN stays NaN. Shapes: any -> same."""
    x = _check_float("x", x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def hard_sigmoid(x, alpha=0.2, beta=0.5):
    """max(0, min(1, alpha * x + beta)), as ONNX HardSigmoid (defaults alpha 0.2, beta 0.5).

    torch.nn.functional.hardsigmoid is alpha = 1/6, beta = 0.5 (it computes
    relu6(x + 3) / 6: the same function, rounded differently). alpha and beta are rounded
    to x's dtype (ONNX's attributes are float32) and the arithmetic stays in that dtype.
    NaN stays NaN. Shapes: any -> same.
    """
    x = _check_float("x", x)
    a = x.dtype.type(_check_number("alpha", alpha))
    b = x.dtype.type(_check_number("beta", beta))
    return np.maximum(0, np.minimum(1, a * x + b))


def hard_swish(x):
    """x * hard_sigmoid(x, 1/6, 0.5) = x * max(0, min(1, x/6 + 1/2)), as ONNX HardSwish
    (its definition, alpha = 1/6) and torch.nn.functional.hardswish (x * relu6(x + 3) / 6).
    hard_swish(-inf) is NaN (-inf * 0), as in ONNX's reference and torch, without a warning.
    Shapes: any -> same."""
    x = _check_float("x", x)
    with np.errstate(invalid="ignore"):
        return x * hard_sigmoid(x, 1 / 6, 0.5)


def global_avg_pool(x):
    """Mean over H and W, as ONNX GlobalAveragePool and
    torch.nn.functional.adaptive_avg_pool2d(x, 1).

    Shapes: x (N, C, H, W), H, W >= 1 -> (N, C, 1, 1).
    Formula: y[n, c, 0, 0] = sum_{h, w} x[n, c, h, w] / (H * W), summed in float64 and
    rounded once to x's dtype.
    """
    x = _check_float("x", x)
    _check_ndim("x", x, 4, "N, C, H, W")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have H, W >= 1 to average over, got shape {x.shape}")
    return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)


def reduce_axes(axes, ndim: int) -> tuple[int, ...]:
    """ONNX reduction axes as sorted non-negative ints: an int, a sequence of ints or a 1-D int
    array, each in [-ndim, ndim-1], no axis twice; None or empty: every axis (ONNX's default,
    noop_with_empty_axes = 0)."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)) and not isinstance(axes, (bool, np.bool_)):
        axes = [axes]
    values = np.asarray(axes)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise ValueError(f"axes must be an int or a sequence of ints, got {axes!r}")
    if values.size == 0:
        return tuple(range(ndim))
    given = [int(a) for a in values]
    if min(given) < -ndim or max(given) >= ndim:
        raise ValueError(f"axes must lie in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {given}")
    out = sorted(a % ndim for a in given)
    if len(set(out)) != len(out):
        raise ValueError(f"axes must name each axis once, got {given}")
    return tuple(out)


def reduce_mean(x, axes, keepdims=True):
    """Mean over ``axes``, as ONNX ReduceMean (axes as reduce_axes: None or empty means every
    axis) and torch.mean(x, dim=axes, keepdim=keepdims).

    Shapes: the reduced axes become 1 (keepdims) or are dropped.
    Formula: the sum over the reduced axes / their element count, summed in float64 and
    rounded once to x's dtype. A reduced axis of length 0 is a ValueError (the mean of
    nothing).
    """
    x = _check_float("x", x)
    axes = reduce_axes(axes, x.ndim)
    keepdims = _check_flag("keepdims", keepdims)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"axes {list(axes)} of x shape {x.shape} include an empty axis: no mean")
    return np.asarray(x.mean(axis=axes, keepdims=keepdims, dtype=np.float64)).astype(x.dtype)


def pad2d(x, pads, value=0.0):
    """Constant padding of H and W, as ONNX Pad (mode "constant") on an NCHW tensor and
    torch.nn.functional.pad(x, (left, right, top, bottom), value=value).

    Shapes: x (N, C, H, W) -> (N, C, top + H + bottom, left + W + right); pads
    (top, left, bottom, right), each >= 0 (ONNX's [begin..., end...] order for H, W).
    TensorFlow's SAME padding of a stride-2 convolution is such an asymmetric pad
    (one more row and column at the end) followed by an unpadded convolution.
    """
    x = _check_float("x", x)
    _check_ndim("x", x, 4, "N, C, H, W")
    if not isinstance(pads, (tuple, list)) or len(pads) != 4 or any(
            isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in pads):
        raise ValueError(f"pads must be 4 integers >= 0 (top, left, bottom, right), got {pads!r}")
    top, left, bottom, right = (int(p) for p in pads)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=x.dtype.type(value))


def reshape(x, shape, allowzero=False):
    """x with a new shape, as ONNX Reshape; ``shape`` is the full target shape (batch axis
    included): a sequence of ints or a 1-D int array.

    -1 (at most one) is inferred from the element count; 0 copies x's dimension at the same
    index unless ``allowzero``, when it is a zero-length axis (0 and -1 together are then an
    error, as ONNX). Any dtype (no arithmetic; like flatten); a C-order view when NumPy can
    make one.
    """
    x = np.asarray(x)
    allowzero = _check_flag("allowzero", allowzero)
    dims = np.asarray(shape)
    if dims.ndim != 1 or (dims.size and dims.dtype.kind not in "iu"):
        raise ValueError(f"shape must be a sequence of ints, got {shape!r}")
    dims = [int(d) for d in dims]
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise ValueError(f"shape may hold ints >= 0 and at most one -1, got {dims}")
    if allowzero and 0 in dims and -1 in dims:
        raise ValueError(f"shape may not hold both 0 and -1 when allowzero is set, got {dims}")
    if not allowzero:
        for i, d in enumerate(dims):
            if d == 0:
                if i >= x.ndim:
                    raise ValueError(f"shape[{i}] = 0 copies x's axis {i}, but x shape {x.shape} has {x.ndim} axes")
                dims[i] = x.shape[i]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            raise ValueError(f"shape {dims}: cannot infer -1 for x shape {x.shape} ({x.size} elements)")
        dims[dims.index(-1)] = x.size // known
    if int(np.prod(dims, dtype=np.int64)) != x.size:
        raise ValueError(f"shape {dims} holds {int(np.prod(dims, dtype=np.int64))} elements, x shape {x.shape} {x.size}")
    return x.reshape(dims)


def batch_norm(x, gamma, beta, mean, var, eps=1e-5):
    """Inference-mode batch normalisation per channel (axis 1), as ONNX BatchNormalization
    (training_mode 0) and torch.nn.functional.batch_norm(training=False).

    Shapes: x (N, C, ...) with at least 2 axes; gamma, beta, mean, var (C,) -> x's shape.
    Formula: y[n, c, ...] = gamma[c] * (x[n, c, ...] - mean[c]) / sqrt(var[c] + eps) + beta[c],
    in float64, rounded once to x's dtype (fold_batchnorm folds the same map into a conv).
    """
    x = _check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-D (N, C, ...), got shape {x.shape}")
    C = x.shape[1]
    eps = _check_number("eps", eps)
    params = {}
    for name, p in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        p = _check_float(name, p)
        if p.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) to match x shape {x.shape}, got {p.shape}")
        params[name] = p.astype(np.float64).reshape((1, C) + (1,) * (x.ndim - 2))
    if np.any(params["var"] + eps <= 0):
        raise ValueError(f"var + eps must be positive, got min {float(np.min(params['var'])) + eps}")
    y = params["gamma"] * (x.astype(np.float64) - params["mean"]) / np.sqrt(params["var"] + eps) + params["beta"]
    return y.astype(x.dtype)
