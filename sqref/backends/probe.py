"""Which accumulation a backend's u8 x s8 kernels use on this machine, measured, never assumed.

On x86 CPUs without VNNI, onnxruntime's and fbgemm's u8 x s8 kernels
(VPMADDUBSW) add adjacent products along K in saturating int16; with
AVX-512 VNNI or AVX-VNNI (and on ARM) they accumulate exactly, except
fbgemm's depthwise kernels, which saturate on every x86 CPU measured so far
(docs/backends.md). So the expectation of a test or a golden file is chosen
from a probe: a one-output product whose exact value and int16-saturated
value requantize to different codes.

    x = [255, 255] (uint8, zero point 0), w = [-128, -128] (int8)
    exact sum      255 * -128 * 2 = -65280 ; / 512 = -127.5 -> -128 ; + 200 = 72
    int16 pairs    sat16(-65280) = -32768  ; / 512 = -64          ; + 200 = 136

``accumulation(backend, kernel)`` runs that product through one kernel kind
("matmul", "conv" (a 1x1 conv over two channels) or "depthwise" (a 3x3
depthwise conv over 8 channels whose first tap pair saturates)) and returns
"exact" or "int16-pairs"; anything else is a RuntimeError (the backend
computes neither). Results are cached per process: a probe takes
milliseconds, and the CPU does not change under a running process.
"""
from __future__ import annotations

import functools
import platform

import numpy as np

from sqref.backends.onnx import ort_session  # imports onnxruntime only when called
from sqref.backends.torch import fbgemm_engine  # imports torch only when entered

PROBED_BACKENDS = ("onnxruntime", "torch")
KERNELS = ("matmul", "conv", "depthwise")
# the probe's output code under each accumulation (module docstring)
PROBE_CODES = {72: "exact", 136: "int16-pairs"}
PROBE_SCALE, PROBE_ZERO_POINT = 512.0, 200


def classify(code: int, *, where: str) -> str:
    """The accumulation that produced the probe's output ``code`` (see PROBE_CODES)."""
    try:
        return PROBE_CODES[int(code)]
    except KeyError:
        raise RuntimeError(f"{where} gave {int(code)} on the accumulation probe; exact gives 72, int16-pair "
                           f"saturation 136: it computes neither") from None


def probe_operands(kernel: str):
    """(x uint8, w int8) of the probe for one kernel kind, NCHW/OIHW for the convs.

    matmul     x (1, 2), w (2, 1) as (IN, OUT)
    conv       a 1x1 conv: x (1, 2, 1, 1), w (1, 2, 1, 1); the pair runs along C
    depthwise  3x3 depthwise over C = 8 channels, padding 1 (fbgemm takes its depthwise
               kernel only then): x all 255, weights -128 in channel 0's first two taps
               (row-major, the order fbgemm pairs them), 0 elsewhere; output channel 0
               at the centre, whose window is the whole 3x3 input, is the probe
    """
    if kernel == "matmul":
        return np.full((1, 2), 255, np.uint8), np.full((2, 1), -128, np.int8)
    if kernel == "conv":
        return np.full((1, 2, 1, 1), 255, np.uint8), np.full((1, 2, 1, 1), -128, np.int8)
    if kernel == "depthwise":
        w = np.zeros((8, 1, 3, 3), np.int8)
        w[0, 0, 0, :2] = -128
        return np.full((1, 8, 3, 3), 255, np.uint8), w
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _onnxruntime_code(kernel: str) -> int:
    from onnx import TensorProto, helper, numpy_helper

    x, w = probe_operands(kernel)
    consts = [numpy_helper.from_array(np.array(1.0, np.float32), "s1"),
              numpy_helper.from_array(np.array(0, np.uint8), "zx"),
              numpy_helper.from_array(np.array(0, np.int8), "zw"),
              numpy_helper.from_array(np.array(PROBE_SCALE, np.float32), "sy"),
              numpy_helper.from_array(np.array(PROBE_ZERO_POINT, np.uint8), "zy"),
              numpy_helper.from_array(w, "w")]
    if kernel == "matmul":
        node = helper.make_node("QLinearMatMul", ["x", "s1", "zx", "w", "s1", "zw", "sy", "zy"], ["y"])
    else:
        depthwise = kernel == "depthwise"
        node = helper.make_node("QLinearConv", ["x", "s1", "zx", "w", "s1", "zw", "sy", "zy"], ["y"],
                                group=int(w.shape[0]) if depthwise else 1, pads=[int(depthwise)] * 4)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    y = ort_session(model).run(None, {"x": x})[0]
    return int(y[0, 0, 1, 1] if kernel == "depthwise" else y.ravel()[0])


def _torch_code(kernel: str) -> int:
    with fbgemm_engine() as torch:
        x, w = probe_operands(kernel)
        if kernel == "matmul":
            w = w.T  # torch's linear weight is (OUT, IN)
        qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), 1.0, 0)
        qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(w)), 1.0, 0)
        bias = torch.zeros(w.shape[0])
        if kernel == "matmul":
            y = torch.ops.quantized.linear(qx, torch.ops.quantized.linear_prepack(qw, bias), PROBE_SCALE,
                                           PROBE_ZERO_POINT)
            return int(y.int_repr().ravel()[0])
        groups = int(w.shape[0]) if kernel == "depthwise" else 1
        pad = int(kernel == "depthwise")
        packed = torch.ops.quantized.conv2d_prepack(qw, bias, [1, 1], [pad, pad], [1, 1], groups)
        y = torch.ops.quantized.conv2d(qx, packed, PROBE_SCALE, PROBE_ZERO_POINT).int_repr()
        return int(y[0, 0, 1, 1] if kernel == "depthwise" else y.ravel()[0])


@functools.lru_cache(maxsize=None)
def accumulation(backend: str, kernel: str = "matmul") -> str:
    """"exact" or "int16-pairs": how ``backend``'s ``kernel`` accumulates u8 x s8 on this machine.

    backend "onnxruntime" or "torch" (fbgemm). ImportError when the backend is not
    installed; RuntimeError when it computes neither (module docstring); ValueError when
    the torch build has no fbgemm engine.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if backend == "onnxruntime":
        code = _onnxruntime_code(kernel)
    elif backend == "torch":
        code = _torch_code(kernel)
    else:
        raise ValueError(f"backend must be one of {PROBED_BACKENDS}, got {backend!r}")
    return classify(code, where=f"{backend} {kernel}")


# The backend whose kernels each requantization mode models (None: int8 x int8 or float64
# arithmetic, which accumulates exactly; nothing to probe).
MODE_BACKEND = {"onnxruntime": "onnxruntime", "fbgemm": "torch", "onnx-reference": None, "tflite": None,
                "tflite-single": None}


def resolve_accumulate(mode: str) -> tuple[str, dict]:
    """What ``accumulate="auto"`` means for ``mode`` on this machine: (accumulation, report).

    The mode's backend is probed on its dense kernels (matmul and 1x1 conv, which must
    agree). Modes of exactly accumulating backends, and a backend that is not installed,
    give "exact", sqref's definition. The report (JSON-able) says what was found; golden
    files keep it.
    """
    backend = MODE_BACKEND[mode]
    report = {"requested": "auto", "mode": mode, "machine": platform.machine()}
    if backend is None:
        return "exact", {**report, "probe": f"none needed: mode {mode!r} accumulates exactly"}
    try:
        found = {kernel: accumulation(backend, kernel) for kernel in ("matmul", "conv")}
    except ImportError:
        return "exact", {**report, "probe": f"{backend} is not installed: exact, sqref's definition"}
    if found["matmul"] != found["conv"]:
        raise RuntimeError(f"{backend}'s matmul accumulates {found['matmul']} but its conv {found['conv']}: "
                           f"one accumulate= setting cannot model both")
    return found["matmul"], {**report, "backend": backend, "probe": found}


def layer_kernel(layer) -> str | None:
    """The kind of u8 x s8 kernel a backend runs for an integer layer: "depthwise" (a conv with one
    input and one output channel per group, more than one group), "conv" (any other conv: dense,
    grouped, 1x1), "matmul" (a linear layer), or None (no integer GEMM)."""
    kind = getattr(layer, "kind", None)
    if kind == "linear":
        return "matmul"
    if kind != "conv2d":
        return None
    w = layer.weight
    return "depthwise" if w.shape[1] == 1 and layer.groups == w.shape[0] and layer.groups > 1 else "conv"


def resolve_layer_accumulate(mode: str, imodel) -> tuple[dict, dict]:
    """What ``accumulate="auto"`` means for each conv and linear layer of ``imodel``: ({layer name:
    accumulation}, report). The mode's backend is probed once per kind of kernel the model has
    (layer_kernel: "matmul", "conv", "depthwise"), so a depthwise layer can saturate where a dense
    one does not (fbgemm on VNNI CPUs, docs/backends.md). Modes of exactly accumulating backends,
    and a backend that is not installed, give "exact" everywhere (sqref's definition)."""
    kinds = {name: layer_kernel(layer) for name, layer in zip(imodel.names, imodel.layers)}
    kinds = {name: k for name, k in kinds.items() if k is not None}
    backend = MODE_BACKEND[mode]
    report = {"requested": "auto", "mode": mode, "machine": platform.machine()}
    if backend is None:
        return dict.fromkeys(kinds, "exact"), {**report, "probe": f"none needed: mode {mode!r} accumulates exactly"}
    try:
        found = {k: accumulation(backend, k) for k in sorted(set(kinds.values()))}
    except ImportError:
        return dict.fromkeys(kinds, "exact"), {**report,
                                               "probe": f"{backend} is not installed: exact, sqref's definition"}
    return {name: found[k] for name, k in kinds.items()}, {**report, "backend": backend, "probe": found}
