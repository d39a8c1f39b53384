"""The backends sqref checks itself against, and what they do on this machine.

    onnx         export an IntegerModel as a QOperator ONNX graph, run it in onnxruntime or
                 the ONNX reference evaluator
    onnx_import  float ONNX graphs (torch's exporters) as sqref graph models
    tflite       export an IntegerModel as an int8 TFLite flatbuffer and run it (ai-edge-litert)
    torch        run an IntegerModel with PyTorch's quantized ops (fbgemm)
    probe        which accumulation a backend's u8 x s8 kernels use on this CPU, measured

Each backend's package (onnx, onnxruntime, ai_edge_litert, torch) is an optional
dependency (the `backends` extra), imported inside these modules only.
"""
from __future__ import annotations

import importlib.util

# the packages each backend needs (the `backends` extra installs them all)
PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "onnx-reference": ("onnx",), "torch": ("torch",),
            "tflite": ("ai_edge_litert", "flatbuffers")}


def require(backend: str) -> None:
    """A one-line ValueError naming what is missing when ``backend``'s packages are not installed."""
    missing = [name for name in PACKAGES.get(backend, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"backend {backend!r} needs the package(s) {', '.join(missing)}, not installed here: "
                         f"pip install \"sqref[backends]\"")


def onnx_package():
    """The onnx module, imported on first use; an ImportError naming the install command otherwise."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError("reading or writing ONNX models needs the onnx package: pip install onnx") from exc
    return onnx
