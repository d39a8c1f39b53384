"""`sqref golden` and `sqref verify` for quantized ONNX models that sqref did not make
(docs/quantized_onnx.md): ``onnx_golden_file`` writes a golden file of the graph onnxruntime runs, ``verify_onnx_file``
checks one against onnxruntime under the contract of sqref.integer.onnx_golden. Silent unless progress=True."""
from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from sqref.backends.onnx_import import read_onnx
from sqref.data import DEFAULT_DATA
from sqref.integer import onnx_golden, onnx_graph
from sqref.inputs import ALL, SPLIT_SEED, SQREF_DATA, open_data
from sqref.jobs.integer import VerifyResult
from sqref.jobs.paths import check_output_path, default_output
from sqref.progress import Progress

DEFAULT_COUNT = 100


def is_quantized_onnx(path) -> bool:
    """Whether ``path`` names an ONNX file holding quantized ops (read by read_onnx: pins, sizes)."""
    if not os.fspath(path).lower().endswith(".onnx"):
        return False
    proto, _ = read_onnx(path)
    return onnx_graph.is_quantized(proto)


def golden_format(path) -> str | None:
    """The ``format`` attribute of an HDF5 file, or None (the readers check everything else)."""
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as f:
            value = f.attrs.get("format")
    except OSError:
        return None
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else None


@dataclass(frozen=True)
class OnnxGoldenResult:
    """The golden file written for a quantized ONNX model (docs/cli.md, `sqref golden`)."""

    output: str
    model: str
    model_sha256: str
    ort_version: str
    count: int
    nodes: int
    partition: dict  # op -> number of nodes in the graph onnxruntime runs
    islands: int  # float reductions between DequantizeLinear and QuantizeLinear
    accumulate: dict  # kernel accumulation -> number of integer GEMM nodes
    tensors: int
    bytes: int
    inputs: dict
    accuracy: float | None
    command: str
    seconds: float
    backends: list


def onnx_golden_file(model_path, *, mode="onnxruntime", output=None, count=None, accumulate="auto", data=None,
                     inputs=None, split_seed=SPLIT_SEED, overwrite=False, progress=False) -> OnnxGoldenResult:
    """A golden file of a quantized ONNX model on the first ``count`` inputs of ``inputs`` (a .npz/.npy used
    whole, or the sqref data file's test split), or else of ``data``'s test split."""
    if mode != "onnxruntime":
        raise ValueError(f"mode {mode!r}: a quantized ONNX model is checked as onnxruntime runs it (--mode "
                         f"onnxruntime); the other modes are sqref's own integer path")
    if accumulate not in ("auto", "exact", "int16-pairs"):
        raise ValueError(f"accumulate {accumulate!r}: expected auto, exact or int16-pairs")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise ValueError(f"count {count!r}: expected a positive number of inputs")
    source_path = inputs if inputs is not None else (DEFAULT_DATA if data is None else data)
    out = check_output_path(output or default_output(model_path, f"golden.{mode}"), [model_path, source_path],
                            force=overwrite)
    start = time.perf_counter()
    proto, digest = read_onnx(model_path)
    graph_inputs = [v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}]
    if len(graph_inputs) != 1:
        raise ValueError(f"{model_path}: sqref golden records models with one input; this one has "
                         f"{[v.name for v in graph_inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_inputs[0].type.tensor_type.shape.dim]
    if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
        raise ValueError(f"{model_path}: input {graph_inputs[0].name!r} has shape {dims}; sqref needs fixed "
                         f"dimensions after the batch axis")
    source = open_data(source_path, tuple(dims[1:]), seed=split_seed)
    split = "test" if source.kind == SQREF_DATA else ALL
    x, y = source.split(split)
    if count is not None and count > len(x):
        raise ValueError(f"--count {count} is more than the {len(x)} inputs in {source.path}")
    count = min(DEFAULT_COUNT, len(x)) if count is None else count
    x, y = x[:count].astype(np.float32), None if y is None else y[:count]
    argv = ["sqref", "golden", os.path.basename(os.fspath(model_path)), "--mode", mode, "--count", str(count),
            "--accumulate", accumulate, "--inputs" if inputs is not None else "--data", os.path.basename(source_path),
            "-o", os.path.basename(out)]
    meta = {"model": os.path.basename(os.fspath(model_path)), "model_sha256": digest, "command": shlex.join(argv),
            "inputs": {"file": os.path.basename(source.path), "split": split, "images": f"the first {count}",
                       "source": source.record()}}
    bar = Progress(1, f"golden {mode}", enabled=progress)
    g = onnx_golden.make_onnx_golden(proto, {graph_inputs[0].name: x}, accumulate=accumulate, meta=meta)
    bar.update(1)
    bar.close()
    onnx_golden.write_onnx_golden(g, out, overwrite=overwrite)
    graph = g.graph
    ops = Counter((f"{n.domain}:" if n.domain else "") + n.op for n in graph.nodes)
    islands = sum(1 for n in graph.nodes if n.op in onnx_graph.REDUCTIONS)
    final = g.tensors[graph.outputs[0]] if graph.outputs and graph.outputs[0] in g.tensors else None
    acc = None
    if y is not None and final is not None and final.ndim == 2 and final.dtype.kind == "f":
        acc = round(float(np.mean(final.argmax(axis=1) == y)), 4)
    return OnnxGoldenResult(out, os.path.basename(os.fspath(model_path)), digest, g.ort_version, count,
                            len(graph.nodes), dict(sorted(ops.items())), islands, dict(Counter(g.accumulate.values())),
                            len(g.tensors), os.path.getsize(out), meta["inputs"], acc, meta["command"],
                            round(time.perf_counter() - start, 2), list(onnx_golden.BACKENDS))


@dataclass(frozen=True)
class OnnxVerifyResult(VerifyResult):
    """A quantized ONNX model's golden file checked by a backend: ``match`` is True when no tensor
    is UNEXPLAINED (sqref.integer.onnx_golden); ``counts``: tensors per status."""

    counts: dict = dataclasses.field(default_factory=dict)


def verify_onnx_file(golden_path, *, backend, progress=False) -> OnnxVerifyResult:
    """Check a quantized ONNX model's golden file with ``backend`` (onnxruntime or sqref)."""
    if backend not in onnx_golden.BACKENDS:
        raise ValueError(f"backend {backend!r}: a golden file of a quantized ONNX model is checked with "
                         f"{' or '.join(onnx_golden.BACKENDS)}")
    start = time.perf_counter()
    g = onnx_golden.read_onnx_golden(golden_path)
    bar = Progress(1 + len(g.tensors), f"verify {backend}", enabled=progress)
    report = onnx_golden.verify_onnx_golden(g, backend, progress=bar.update)
    bar.close("match" if report["match"] else "UNEXPLAINED differences")
    images = int(len(next(iter(g.inputs.values())))) if g.inputs else 0
    return OnnxVerifyResult(os.fspath(golden_path), backend, report["mode"], report["accumulate"], images,
                            bool(report["match"]), report["tensors"], report["notes"],
                            round(time.perf_counter() - start, 2), counts=report["counts"])
