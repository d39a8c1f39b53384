"""Golden files of other people's quantized ONNX models, and their verification against onnxruntime.

``make_onnx_golden`` takes a quantized ONNX model (QDQ or QOperator, as onnxruntime's quantizer or
any tool writes it), asks onnxruntime which graph it runs (sqref.integer.onnx_graph.ort_partition),
runs that graph with sqref and keeps every tensor. The file (HDF5, ``format = "sqref-onnx-golden"``,
``format_version = 1``, docs/quantized_onnx.md) holds the original model's bytes, the optimized
graph's bytes with the onnxruntime version and optimization level that produced it, the inputs,
every tensor, and the accumulation of each integer node (probed per kind of kernel).

``verify_onnx_golden`` runs the stored graph in onnxruntime with every tensor exposed and classifies
each tensor (the contract of ``sqref verify``, docs/quantized_onnx.md):

    exact        bit for bit equal
    float bound  a float32 reduction (Conv, Gemm, MatMul, ReduceMean, GlobalAveragePool) that differs,
                 where sqref's float32 result on onnxruntime's own inputs lies within twice the float32
                 error bound of any summation order (onnx_graph.float_reference): two orders, one bound each
    ties         a QuantizeLinear after such a reduction whose inputs were equal: every differing code is
                 one step away, and the reduction's float64 value lies within its float32 bound (plus the
                 quantizer's own division rounding) of the rounding tie between the two codes
    follows      any other tensor that differs, where some input of its node differs too and sqref, run
                 on onnxruntime's inputs of that node, computes onnxruntime's output exactly: the
                 difference comes from upstream
    UNEXPLAINED  anything else

The file verifies (exit 0) when no tensor is UNEXPLAINED; 1 otherwise.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field

import numpy as np

from sqref import __version__
from sqref.hdf5 import FileFormatError, atomic_h5, open_h5, read_array, str_attr, write_array
from sqref.integer import onnx_graph
from sqref.integer.verify import compare

FORMAT_NAME = "sqref-onnx-golden"
FORMAT_VERSION = 1
BACKENDS = ("sqref", "onnxruntime")
INTEGER_GEMMS = {"QLinearConv": "conv", "ConvInteger": "conv", "QLinearMatMul": "matmul", "MatMulInteger": "matmul",
                 "QGemm": "matmul"}


@dataclass(frozen=True, eq=False)
class OnnxGolden:
    """A golden file of a quantized ONNX model (module docstring).

    model        the original model's bytes; optimized: the bytes of the graph onnxruntime runs
    ort_version  the onnxruntime that optimized it (level onnx_graph.OPTIMIZATION)
    inputs       {graph input name: array}; tensors: {tensor name: array}, every node output in node order
    accumulate   {node name: "exact" | "int16-pairs"} for the integer GEMM nodes
    meta         JSON-able provenance (the model's name and SHA-256, the inputs, the command)
    """

    model: bytes
    optimized: bytes
    ort_version: str
    inputs: dict
    tensors: dict
    accumulate: dict
    meta: dict = field(default_factory=dict)

    @functools.cached_property
    def graph(self):
        """The QGraph of ``optimized``, parsed once."""
        return onnx_graph.read_graph(onnx_graph.onnx_package().load_model_from_string(self.optimized))


def node_accumulation(graph, *, probe=None) -> dict:
    """The accumulation of each integer GEMM node: onnxruntime's u8 x s8 kernels saturate int16 pairs on
    x86 without VNNI, probed once per kind of kernel (sqref.backends.probe: "matmul" for QLinearMatMul,
    QGemm and MatMulInteger; "conv" for dense and 1x1 QLinearConv/ConvInteger; "depthwise" for a conv
    with one input and one output channel per group). Other signedness is exact. ``probe`` (kernel ->
    accumulation) replaces the measurement, for tests."""
    from sqref.backends.probe import accumulation

    probe = probe or (lambda kernel: accumulation("onnxruntime", kernel))
    found, out = {}, {}
    for node in graph.nodes:
        kind = INTEGER_GEMMS.get(node.op)
        if kind is None:
            continue
        x_dtype = _activation_dtype(graph, node)
        w_index = 3 if node.op in ("QLinearConv", "QLinearMatMul", "QGemm") else 1
        w = graph.constants.get(node.inputs[w_index])
        if w is None or x_dtype != np.dtype(np.uint8) or w.dtype != np.int8:
            out[node.name] = "exact"
            continue
        if kind == "conv" and w.shape[1] == 1 and int(node.attrs.get("group", 1)) == w.shape[0] > 1:
            kind = "depthwise"
        if kind not in found:
            found[kind] = probe(kind)
        out[node.name] = found[kind]
    return out


def _activation_dtype(graph, node):
    """The dtype of an integer GEMM node's activation: that of its zero point (input 2 of QLinearConv,
    QLinearMatMul, QGemm, ConvInteger and MatMulInteger, of the activation's dtype by ONNX's rules)
    when it is a constant, else the graph input's it reads, else None."""
    zero_point = node.inputs[2] if len(node.inputs) > 2 else ""
    if zero_point in graph.constants:
        return graph.constants[zero_point].dtype
    return next((dtype for name, dtype, _ in graph.inputs if name == node.inputs[0]), None)


def make_onnx_golden(proto, feeds: dict, *, accumulate="auto", meta=None, probe=None) -> OnnxGolden:
    """Partition ``proto`` as onnxruntime does, run it with sqref on ``feeds`` and keep every tensor.

    accumulate  "auto" (node_accumulation, probed), "exact" or "int16-pairs" for every integer GEMM node
    """
    optimized, version = onnx_graph.ort_partition(proto)
    graph = onnx_graph.read_graph(optimized)
    names = [name for name, _, _ in graph.inputs]
    if sorted(feeds) != sorted(names):
        raise ValueError(f"the model takes inputs {names}, got {sorted(feeds)}")
    if accumulate == "auto":
        acc = node_accumulation(graph, probe=probe)
    elif accumulate in ("exact", "int16-pairs"):
        acc = {n.name: accumulate for n in graph.nodes if n.op in INTEGER_GEMMS}
    else:
        raise ValueError(f"accumulate must be 'auto', 'exact' or 'int16-pairs', got {accumulate!r}")
    env = onnx_graph.run_graph(graph, feeds, accumulate=acc)
    tensors = {o: env[o] for n in graph.nodes for o in n.outputs if o}
    return OnnxGolden(proto.SerializeToString(), optimized.SerializeToString(), version, dict(feeds), tensors, acc,
                      dict(meta or {}))


# ----------------------------------------------------------------------------- the file


def write_onnx_golden(g: OnnxGolden, path, *, overwrite=False) -> None:
    """Write the golden file atomically (refuses an existing path unless overwrite)."""
    with atomic_h5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["sqref_version"] = __version__
        f.attrs["ort_version"] = g.ort_version
        f.attrs["optimization"] = onnx_graph.OPTIMIZATION
        f.attrs["accumulate"] = json.dumps(g.accumulate, sort_keys=True)
        f.attrs["meta"] = json.dumps(g.meta, sort_keys=True)
        write_array(f, "model", np.frombuffer(g.model, np.uint8))
        write_array(f, "optimized", np.frombuffer(g.optimized, np.uint8))
        for group, arrays in (("inputs", g.inputs), ("tensors", g.tensors)):
            grp = f.create_group(group)
            grp.attrs["count"] = len(arrays)
            for i, (name, value) in enumerate(arrays.items()):
                write_array(grp, f"{i:05d}", np.asarray(value))
                grp[f"{i:05d}"].attrs["name"] = name


def read_onnx_golden(path) -> OnnxGolden:
    """Read and validate a golden file of a quantized ONNX model: checksums, the stored graph, and every
    stored tensor named by a node of that graph."""
    where = os.fspath(path)
    with open_h5(path, FORMAT_NAME, versions=(FORMAT_VERSION,)) as f:
        try:
            accumulate, meta = json.loads(str_attr(f, "accumulate", where)), json.loads(str_attr(f, "meta", where))
        except ValueError:
            raise FileFormatError(f"{where}: attribute 'accumulate' or 'meta' is not valid JSON") from None
        version = str_attr(f, "ort_version", where)
        model = read_array(f, "model", where, dtypes={"uint8"}).tobytes()
        optimized = read_array(f, "optimized", where, dtypes={"uint8"}).tobytes()
        groups = {}
        for group in ("inputs", "tensors"):
            if group not in f:
                raise FileFormatError(f"{where}: missing group {group!r}")
            grp, count = f[group], f[group].attrs.get("count")
            if not isinstance(count, (int, np.integer)) or set(grp) != {f"{i:05d}" for i in range(int(count))}:
                raise FileFormatError(f"{where}: {group} do not match their count {count!r}")
            groups[group] = {str_attr(grp[f"{i:05d}"], "name", where): read_array(grp, f"{i:05d}", where)
                             for i in range(int(count))}
    g = OnnxGolden(model, optimized, version, groups["inputs"], groups["tensors"], accumulate, meta)
    try:
        graph = g.graph
    except Exception as exc:  # a protobuf DecodeError, or a node sqref cannot run
        raise FileFormatError(f"{where}: the stored graph cannot be read: {str(exc).splitlines()[0]}") from None
    written = [o for n in graph.nodes for o in n.outputs if o]
    if sorted(written) != sorted(g.tensors) or sorted(name for name, _, _ in graph.inputs) != sorted(g.inputs):
        raise FileFormatError(f"{where}: the stored tensors are not those of the stored graph")
    return g


# ----------------------------------------------------------------------------- verification


def run_onnxruntime_graph(optimized: bytes, feeds: dict, dtypes: dict) -> dict:
    """Every tensor of a stored graph as onnxruntime computes it: the graph, with every tensor in
    ``dtypes`` made an output, run with graph optimizations off (it is already the optimized graph)."""
    import onnxruntime as ort
    from onnx import helper

    proto = onnx_graph.onnx_package().load_model_from_string(optimized)
    del proto.graph.output[:]
    for name, dtype in dtypes.items():
        proto.graph.output.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(dtypes)
    return dict(zip(names, session.run(names, feeds)))


def tie_explained(q_node, q_args, golden_codes, backend_codes, reference):
    """How many differing codes of a QuantizeLinear are rounding ties of the reduction before it
    (module docstring), and how many are not."""
    value, bound = reference
    scale = np.broadcast_to(np.asarray(q_args[1], np.float64), value.shape) if np.ndim(q_args[1]) == 0 else None
    if scale is None:  # per-axis: along the attribute's axis
        axis = int(q_node.attrs.get("axis", 1)) % value.ndim
        shape = [1] * value.ndim
        shape[axis] = -1
        scale = np.broadcast_to(np.asarray(q_args[1], np.float64).reshape(shape), value.shape)
    zp = q_args[2] if len(q_args) > 2 and q_args[2] is not None else 0
    zp = np.broadcast_to(np.asarray(zp, np.float64).reshape([1] * value.ndim if np.ndim(zp) == 0 else
                                                            [-1 if d == int(q_node.attrs.get("axis", 1)) % value.ndim
                                                             else 1 for d in range(value.ndim)]), value.shape)
    bad = golden_codes != backend_codes
    low = np.minimum(golden_codes, backend_codes)[bad].astype(np.float64)
    step = np.abs(golden_codes[bad].astype(np.int64) - backend_codes[bad].astype(np.int64))
    tie = (low - zp[bad] + 0.5) * scale[bad]
    v = value[bad]
    slack = bound[bad] + 2 * onnx_graph.U32 * np.abs(v) + 1e-300  # + the quantizer's float32 division
    ok = (step == 1) & (np.abs(v - tie) <= slack)
    return int(ok.sum()), int((~ok).sum())


def verify_onnx_golden(g: OnnxGolden, backend="onnxruntime", *, progress=None) -> dict:
    """Recompute ``g`` with ``backend`` and classify every tensor (module docstring). Returns
    {"backend", "mode", "accumulate", "match", "tensors": rows (verify.compare's, plus "status"), "notes"};
    "match" is True when no tensor is UNEXPLAINED."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: a golden file of an ONNX model is checked with one of {BACKENDS}")
    graph = g.graph
    dtypes = {name: np.asarray(v).dtype for name, v in g.tensors.items()}
    if backend == "onnxruntime":
        got = run_onnxruntime_graph(g.optimized, g.inputs, dtypes)
    else:
        env = onnx_graph.run_graph(graph, g.inputs, accumulate=g.accumulate)
        got = {name: env[name] for name in dtypes}
    if progress is not None:
        progress(1, f"{backend} ran")
    anchored = {}

    def on_backend_inputs():  # each node run on the backend's inputs: needed only where a tensor differs
        if not anchored:
            anchored.update(onnx_graph.run_graph(graph, g.inputs, accumulate=g.accumulate, anchor={**g.inputs, **got}))
        return anchored
    producer = {o: n for n in graph.nodes for o in n.outputs}
    golden_env = {**graph.constants, **g.inputs, **g.tensors}
    backend_env = {**graph.constants, **g.inputs, **got}
    rows, counts = [], {}
    for node in graph.nodes:
        for name in node.outputs:
            if not name:
                continue
            row = compare(name, got[name], g.tensors[name])
            row["op"] = node.op
            row["status"] = "exact" if row["match"] else _classify(node, name, graph, producer, golden_env,
                                                                   backend_env, on_backend_inputs(), row)
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            rows.append(row)
            if progress is not None:
                progress(1 + len(rows), name)
    unexplained = counts.get("UNEXPLAINED", 0)
    notes = [f"onnxruntime {g.ort_version} partitioned the model at {onnx_graph.OPTIMIZATION}; the stored graph "
             f"runs with graph optimizations off"]
    if backend == "onnxruntime":
        import onnxruntime as ort
        if ort.__version__ != g.ort_version:
            notes.append(f"this onnxruntime is {ort.__version__}, the golden file's graph came from {g.ort_version}")
    return {"backend": backend, "mode": "onnxruntime", "accumulate": _accumulate_text(g.accumulate),
            "match": unexplained == 0, "tensors": rows, "notes": notes, "counts": counts}


def _accumulate_text(acc):
    kinds = sorted(set(acc.values()))
    return kinds[0] if len(kinds) == 1 else "per node: " + ", ".join(kinds) if kinds else "exact"


def _classify(node, name, graph, producer, golden_env, backend_env, anchored, row):
    """The status of a tensor that differs (module docstring); adds "explained" / "unexplained" counts."""
    args_backend = [None if i == "" else backend_env.get(i) for i in node.inputs]
    if node.op in onnx_graph.REDUCTIONS:
        ref = onnx_graph.float_reference(node, args_backend)
        diff = np.abs(np.asarray(anchored[name], np.float64) - np.asarray(backend_env[name], np.float64))
        ok = diff <= 2 * ref[1] + 1e-300
        row["explained"], row["unexplained"] = int(ok.sum() - (diff == 0).sum()), int((~ok).sum())
        return "float bound" if ok.all() else "UNEXPLAINED"
    if not np.array_equal(anchored[name], backend_env[name]):
        row["unexplained"] = int(np.sum(anchored[name] != backend_env[name]))
        return "UNEXPLAINED"
    source = producer.get(node.inputs[0]) if node.op == "QuantizeLinear" else None
    if source is not None and source.op in onnx_graph.REDUCTIONS and all(
            i == "" or np.array_equal(golden_env[i], backend_env[i]) for i in source.inputs):
        reference = onnx_graph.float_reference(source, [None if i == "" else golden_env[i] for i in source.inputs])
        q_args = [None if i == "" else golden_env[i] for i in node.inputs]
        ties, other = tie_explained(node, q_args, golden_env[name], backend_env[name], reference)
        row["explained"], row["unexplained"] = ties, other
        return "ties" if other == 0 else "UNEXPLAINED"
    if all(i == "" or np.array_equal(golden_env[i], backend_env[i]) for i in node.inputs):
        # the same inputs, the same outputs from sqref and the backend, yet not the golden file's: the
        # file does not hold what sqref computes (modified, or written by another sqref)
        row["unexplained"] = row.get("mismatches", 0)
        return "UNEXPLAINED"
    row["explained"] = row.get("mismatches", 0)
    return "follows"
