"""Float forward throughput: sqref vs PyTorch (CPU), measured side by side.

    python benchmarks/bench_forward.py [--repeats 7] [--threads 2]

Prints images/s for each model and batch size, the ratio sqref / PyTorch,
sqref's achieved GFLOP/s, and numpy's own float32 GEMM peak measured in the
same run (so the ratios, not the absolute numbers, are what to compare
across noisy machines). Median of `--repeats` timed runs after one warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import sqref
from sqref import zoo
from sqref.model import Conv2d, Linear, infer_shapes


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the conv and linear layers for one image."""
    flops = 0
    for layer, out in zip(model.layers, infer_shapes(model)):
        if isinstance(layer, Conv2d):
            K, CG, KH, KW = layer.weight.shape
            flops += 2 * K * CG * KH * KW * out[1] * out[2]
        elif isinstance(layer, Linear):
            flops += 2 * layer.weight.size
    return flops


def gemm_peak(repeats: int) -> float:
    """numpy float32 GEMM GFLOP/s on a 1024^3 product (a compute-bound size)."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
    return 2 * 1024**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def torch_model(model):
    import torch

    layers = []
    for layer in model.layers:
        kind = layer.kind
        if kind == "conv2d":
            m = torch.nn.Conv2d(layer.weight.shape[1] * layer.groups, layer.weight.shape[0], layer.weight.shape[2:],
                                stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            m.weight.data = torch.from_numpy(layer.weight.copy())
            m.bias.data = torch.from_numpy(layer.bias.copy())
        elif kind == "linear":
            m = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            m.weight.data = torch.from_numpy(layer.weight.copy())
            m.bias.data = torch.from_numpy(layer.bias.copy())
        elif kind == "max_pool2d":
            m = torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif kind == "relu":
            m = torch.nn.ReLU()
        elif kind == "flatten":
            m = torch.nn.Flatten()
        else:
            raise ValueError(f"no torch equivalent for {kind}")
        layers.append(m)
    return torch.nn.Sequential(*layers).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed (pip install -e '.[backends]'): printing sqref alone")
    if torch is not None:
        torch.set_num_threads(args.threads)
    peak = gemm_peak(args.repeats)
    print(f"numpy float32 GEMM peak (1024^3): {peak:.1f} GFLOP/s; torch threads {args.threads}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    header = f"{'model':<10} {'batch':>5} {'sqref img/s':>12} {'torch img/s':>12} {'ratio':>6} {'sqref GFLOP/s':>14} {'% of peak':>9}"
    print(header)
    print("-" * len(header))
    for name in ("lenet5", "small_vgg"):
        model = zoo.ARCHITECTURES[name](0)
        flops = forward_flops(model)
        tm = torch_model(model) if torch is not None else None
        for batch in (64, 1):
            x = np.random.default_rng(0).random((batch, *model.input_shape), dtype=np.float32)
            t_sqref = median_seconds(lambda: sqref.run(model, x), args.repeats)
            rate = batch / t_sqref
            gflops = flops * batch / t_sqref / 1e9
            if tm is not None:
                tx = torch.from_numpy(x)
                with torch.inference_mode():
                    t_torch = median_seconds(lambda: tm(tx), args.repeats)
                    np.testing.assert_allclose(sqref.run(model, x), tm(tx).numpy(), rtol=1e-3, atol=1e-3)
                torch_rate = f"{batch / t_torch:12.0f}"
                ratio = f"{t_torch / t_sqref:6.2f}"
            else:
                torch_rate, ratio = f"{'-':>12}", f"{'-':>6}"
            print(f"{name:<10} {batch:>5} {rate:12.0f} {torch_rate} {ratio} {gflops:14.1f} {100 * gflops / peak:8.0f}%")


if __name__ == "__main__":
    main()
