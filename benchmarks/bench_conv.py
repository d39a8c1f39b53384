"""Where the small VGG's convolution time goes, layer by layer (the profile behind docs/performance.md).

    python benchmarks/bench_conv.py [--repeats 7] [--batch 64] [--chunk-mib 0.5 2 8]

For every conv layer of zoo.small_vgg at `--batch` images, medians of
`--repeats` timed calls after one warm-up:

    conv2d      sqref.ops.conv2d as shipped (grid_im2col, IM2COL_MAX_BYTES chunks)
    im2col      the same method with ops.im2col (OH rows of OW per tap), the strided convs' path
    N MiB       conv2d with IM2COL_MAX_BYTES set to N MiB (each --chunk-mib)
    GEMM only   np.matmul of the weight and the whole batch's prebuilt im2col matrix:
                the GEMM work alone, the ceiling of any im2col convolution

and two candidates for using both cores outside the GEMMs (issue 21), each
checked against conv2d before it is timed:

    split       conv2d on each half of the batch in two threads, the BLAS held
                to one thread each (threadpoolctl; skipped when it is not
                installed): the column copies, the crop and the bias run on
                both cores, the GEMMs on one each
    per-tap     no columns: the batch in zero-padded NHWC, flattened to rows of
                C channels; each kernel tap is a contiguous row offset, so
                y += x[rows + offset] @ W_tap, one scipy sgemm per tap with
                beta = 1 accumulating in place (the BLAS on both cores
                throughout), then the crop and the NCHW transpose

and the GEMM-only GFLOP/s against numpy's float32 GEMM peak (1024^3) in the
same run. The last line sums the layers.
"""
from __future__ import annotations

import argparse
import concurrent.futures

import numpy as np
from scipy.linalg import blas

from sqref import ops, zoo
from sqref.model import Conv2d

from bench_forward import gemm_peak, median_seconds


def im2col_conv(x, layer):
    """ops.conv_gemm's method with ops.im2col instead of grid_im2col, for a stride-1 layer."""
    K, CG, KH, KW = layer.weight.shape
    geo = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    first = ops.im2col(x[:1], (KH, KW), **geo)
    chunk = max(1, ops.IM2COL_MAX_BYTES // first.nbytes)
    w = layer.weight.reshape(K, -1)
    OH, OW = ops.conv2d(x[:1], layer.weight, **geo).shape[2:]
    y = np.empty((x.shape[0], K, OH, OW), np.float32)
    for n0 in range(0, x.shape[0], chunk):
        out = w @ ops.im2col(x[n0:n0 + chunk], (KH, KW), **geo)
        y[n0:n0 + chunk] = out.reshape(K, -1, OH, OW).transpose(1, 0, 2, 3)
    return y + layer.bias[:, None, None]


def split_conv(x, layer, pool, limits):
    """conv2d on the two halves of the batch, in two threads, one BLAS thread each."""
    geo = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    half = (x.shape[0] + 1) // 2
    with limits(limits=1, user_api="blas"):
        parts = pool.map(lambda xs: ops.conv2d(xs, layer.weight, layer.bias, **geo), (x[:half], x[half:]))
        return np.concatenate(list(parts))


def per_tap_conv(x, layer):
    """Stride 1, no dilation: y[r] = sum over taps (i, j) of xpad[r + i * Wp + j] @ W[:, :, i, j].T (rows r on the
    padded grid of every image, NHWC), accumulated in place by sgemm (beta = 1), cropped to the valid outputs."""
    N, C, H, W = x.shape
    K, _, KH, KW = layer.weight.shape
    (PH, PW), OH, OW = layer.padding, H + 2 * layer.padding[0] - KH + 1, W + 2 * layer.padding[1] - KW + 1
    Hp, Wp = H + 2 * PH, W + 2 * PW
    rows = np.zeros((N * Hp * Wp, C), np.float32)
    rows.reshape(N, Hp, Wp, C)[:, PH:PH + H, PW:PW + W] = x.transpose(0, 2, 3, 1)
    m = N * Hp * Wp - (KH - 1) * Wp - (KW - 1)  # rows every tap can read
    out_t = np.zeros((K, N * Hp * Wp), np.float32, order="F")  # y.T in Fortran order: y is (rows, K), C order
    taps = layer.weight.transpose(2, 3, 0, 1)  # (KH, KW, K, C)
    for i in range(KH):
        for j in range(KW):
            off = i * Wp + j
            blas.sgemm(1.0, np.asfortranarray(taps[i, j]), rows[off:off + m].T, beta=1.0, c=out_t[:, :m],
                       overwrite_c=True)
    y = out_t.T.reshape(N, Hp, Wp, K)[:, :OH, :OW].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y) + layer.bias[:, None, None]


def with_chunk(mib, fn):
    old = ops.IM2COL_MAX_BYTES
    ops.IM2COL_MAX_BYTES = int(mib * 2**20)
    try:
        return fn()
    finally:
        ops.IM2COL_MAX_BYTES = old


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk-mib", type=float, nargs="+", default=[0.5, 2, 8],
                        help="other IM2COL_MAX_BYTES sizes to time, in MiB (default: %(default)s)")
    args = parser.parse_args(argv)
    peak = gemm_peak(args.repeats)
    model = zoo.small_vgg(0)
    x = np.random.default_rng(0).random((args.batch, *model.input_shape), dtype=np.float32)
    print(f"small VGG conv layers, batch {args.batch}; numpy float32 GEMM peak {peak:.1f} GFLOP/s; "
          f"IM2COL_MAX_BYTES = {ops.IM2COL_MAX_BYTES / 2**20:g} MiB")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
        print("split: skipped (pip install threadpoolctl to time it)")
    pool = concurrent.futures.ThreadPoolExecutor(2)
    sizes = [f"{m:g} MiB ms" for m in args.chunk_mib] + ["split ms", "per-tap ms"]
    header = (f"{'layer':<6} {'C->K':>8} {'HxW':>6} {'conv2d ms':>10} {'im2col ms':>10} "
              + " ".join(f"{h:>11}" for h in sizes) + f" {'GEMM only ms':>13} {'GEMM GFLOP/s':>13} {'% of peak':>9}")
    print(header)
    print("-" * len(header))
    totals = np.zeros(3 + len(sizes))  # conv2d, im2col, the chunk sizes, split, per-tap, GEMM only
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, Conv2d):
            K, C, KH, KW = layer.weight.shape
            geo = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)

            def conv():
                return ops.conv2d(x, layer.weight, layer.bias, **geo)

            np.testing.assert_allclose(im2col_conv(x, layer), conv(), rtol=1e-4, atol=1e-4)  # same sums, other order
            times = [median_seconds(conv, args.repeats), median_seconds(lambda: im2col_conv(x, layer), args.repeats)]
            times += [with_chunk(m, lambda: median_seconds(conv, args.repeats)) for m in args.chunk_mib]
            times.append(np.nan)
            if threadpool_limits is not None:
                # one BLAS thread instead of two: the GEMM's float32 sums are split differently
                np.testing.assert_allclose(split_conv(x, layer, pool, threadpool_limits), conv(), rtol=1e-5, atol=1e-5)
                times[-1] = median_seconds(lambda: split_conv(x, layer, pool, threadpool_limits), args.repeats)
            times.append(np.nan)
            if layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1:
                # another summation order than conv2d's GEMM over K = C*KH*KW: float32 rounding differs
                np.testing.assert_allclose(per_tap_conv(x, layer), conv(), rtol=1e-4, atol=1e-4)
                times[-1] = median_seconds(lambda: per_tap_conv(x, layer), args.repeats)
            cols = ops.im2col(x, (KH, KW), **geo)
            w = layer.weight.reshape(K, -1)
            gemm = median_seconds(lambda: w @ cols, args.repeats)
            gflops = 2 * w.size * cols.shape[1] / gemm / 1e9
            totals += (*times, gemm)
            print(f"{name:<6} {f'{C}->{K}':>8} {f'{x.shape[2]}x{x.shape[3]}':>6} "
                  + " ".join(f"{1e3 * t:{10 if i < 2 else 11}.1f}" for i, t in enumerate(times))
                  + f" {1e3 * gemm:13.1f} {gflops:13.1f} {100 * gflops / peak:8.0f}%")
        x = layer(x)
    print(f"{'total':<6} {'':>8} {'':>6} " + " ".join(f"{1e3 * t:{10 if i < 2 else 11}.1f}" for i, t in enumerate(totals[:-1]))
          + f" {1e3 * totals[-1]:13.1f}")
    print(f"ratios to conv2d as shipped (> 1: faster), whole network: split {totals[0] / totals[-3]:.2f}, "
          f"per-tap {totals[0] / totals[-2]:.2f}")


if __name__ == "__main__":
    main()
