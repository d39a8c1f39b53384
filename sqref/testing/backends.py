"""Checking a backend: one_node_model builds the ONNX model of one node, assert_backend_matches runs a drawn case
in a backend and compares it with sqref's answer (sqref.testing's docstring)."""
from __future__ import annotations

import numpy as np

from sqref.testing.asserts import assert_bit_exact


def one_node_model(op_type, inputs, outputs=("y",), *, initializers=(), opset=21, ir_version=10, domain="",
                   **attrs):
    """A ModelProto with one node, for running an op in a backend (onnx is imported here).

    inputs        dict name -> array (a graph input of its dtype and shape), (dtype, shape)
                  (a graph input without data; a shape entry may be None or a name), or None
                  (an omitted optional input: the node gets ""). The node's inputs are the
                  dict's keys in order, so give them in the op's order.
    outputs       the node's output names; a dict name -> dtype or (dtype, shape) types them,
                  otherwise ONNX shape inference does (a ValueError if it cannot).
    initializers  names among ``inputs`` (arrays) stored as initializers (constants) rather
                  than graph inputs: a backend may take another kernel for constant weights.
    opset, ir_version: 21 and 10 by default (sqref.backends.onnx's export); ``attrs``
    are the node's attributes (helper.make_node's keywords).
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:  # pragma: no cover - exercised only without onnx
        raise ImportError("one_node_model needs the onnx package: pip install onnx") from e
    initializers = tuple(initializers)
    for name in initializers:
        if name not in inputs or not isinstance(inputs[name], np.ndarray | np.generic):
            raise ValueError(f"initializer {name!r} must be one of the inputs, given as an array")
    graph_inputs, inits = [], []
    for name, value in inputs.items():
        if value is None:
            continue
        if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], (int, np.integer)):
            dtype, shape = value
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                              shape))
            continue
        a = np.asarray(value)
        if name in initializers:
            inits.append(numpy_helper.from_array(a, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                              a.shape))
    names = list(outputs)
    node = helper.make_node(op_type, [n if inputs[n] is not None else "" for n in inputs], names, domain=domain or None,
                            **attrs)
    typed = outputs if isinstance(outputs, dict) else {}
    outs = []
    for name in names:
        spec = typed.get(name)
        if spec is None:
            outs.append(onnx.ValueInfoProto(name=name))
            continue
        dtype, shape = spec if isinstance(spec, tuple) else (spec, None)
        outs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
    graph = helper.make_graph([node], op_type, graph_inputs, outs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    inferred = {o.name: o.type for o in onnx.shape_inference.infer_shapes(model).graph.output}
    for out in model.graph.output:  # what inference knows fills what the caller left out
        t = out.type.tensor_type
        if not t.elem_type:
            if not inferred[out.name].tensor_type.elem_type:
                raise ValueError(f"ONNX shape inference cannot type output {out.name!r} of {op_type}: give outputs as "
                                 f"a dict name -> dtype")
            out.type.CopyFrom(inferred[out.name])
        elif not t.HasField("shape") and inferred[out.name].tensor_type.HasField("shape"):
            t.shape.CopyFrom(inferred[out.name].tensor_type.shape)
    return model


# op -> (domain, output names): the ops whose cases the strategies above draw
CHECKED_OPS = {
    "QLinearConv": ("", ("y",)),
    "QLinearMatMul": ("", ("y",)),
    "ConvInteger": ("", ("y",)),
    "MatMulInteger": ("", ("Y",)),
    "QuantizeLinear": ("", ("y",)),
    "DequantizeLinear": ("", ("y",)),
    "DynamicQuantizeLinear": ("", ("y", "y_scale", "y_zero_point")),
    "QLinearAdd": ("com.microsoft", ("C",)),
    "QLinearMul": ("com.microsoft", ("C",)),
}
BUILTIN_BACKENDS = ("onnxruntime", "onnx-reference")  # each one's sqref mode has its name


def run_onnxruntime(model, feeds):
    """Run a ModelProto in onnxruntime's CPU provider, one thread; returns the list of outputs."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - exercised only without onnxruntime
        raise ImportError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors are raised, not logged
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_onnx_reference(model, feeds):
    """Run a ModelProto in onnx.reference.ReferenceEvaluator; returns the list of outputs."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def _describe(name, value):
    """One line per input: dtype and shape, and the values of small arrays (scales and zero points
    as plain Python numbers, which repr to the exact float32/float16 value)."""
    if value is None:
        return f"   {name}: omitted"
    a = np.asarray(value)
    line = f"   {name}: {a.dtype} {a.shape}"
    if a.size <= 16:
        return f"{line} = {a.tolist()!r}"
    if a.dtype.kind in "iuf" and a.size:
        return f"{line}, values in [{a.min().item()!r}, {a.max().item()!r}]"
    return line


def assert_backend_matches(op, case, backend, *, initializers=(), err_msg=""):
    """Assert that ``backend`` runs the one-node ONNX model of ``op`` on ``case`` bit for bit as
    sqref does: assert_bit_exact on every output, against ``case["expected"]``.

    op       an ONNX op name in CHECKED_OPS: QLinearConv, QLinearMatMul, ConvInteger,
             MatMulInteger, QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, and
             onnxruntime's com.microsoft QLinearAdd and QLinearMul.
    case     a dict as the strategies draw it (qlinear_conv_cases, qlinear_matmul_cases,
             qlinear_add_cases, quantize_linear_cases): ``inputs`` by ONNX input name in the
             op's order (None: an omitted optional input), ``attrs``, ``expected`` (an array, or
             a tuple for several outputs), ``mode`` (None when the op has one arithmetic).
    backend  "onnxruntime" (CPU provider) or "onnx-reference" (onnx.reference.ReferenceEvaluator),
             or a callable ``backend(model, feeds) -> outputs`` for any other runner: model an
             onnx.ModelProto, feeds a dict name -> array, outputs a list of arrays in the
             model's output order (or one array).
    initializers: names among the inputs given to the model as constants (one_node_model's);
    err_msg: prefixed to the failure message.

    The model is one_node_model(op, inputs, ...) with the op's domain, its outputs typed with
    the expected dtypes and shapes (so onnx.checker accepts it). A built-in backend
    needs cases drawn in its own mode (a ValueError otherwise: sqref's answer would differ on
    ties, not the backend); the evaluator has no com.microsoft ops (ValueError). Accumulation
    is the case's: on x86 without VNNI onnxruntime's u8 x s8 kernels saturate int16 pairs
    (draw with ``accumulate=sqref.backends.probe.resolve_accumulate("onnxruntime")[0]``).
    An error of the backend itself (say onnxruntime has no kernel for int8 x uint8) propagates.
    On a mismatch, AssertionError with assert_bit_exact's report (mismatch count, histogram of
    differences, worst difference, first indices) followed by the case: each input's dtype and
    shape, the values of scales and zero points, the attributes and the mode.
    """
    if op not in CHECKED_OPS:
        raise ValueError(f"op must be one of {tuple(CHECKED_OPS)}, got {op!r}")
    if case.get("op", op) != op:
        raise ValueError(f"the case was drawn for {case['op']}, not {op}")
    domain, names = CHECKED_OPS[op]
    mode, inputs, attrs = case.get("mode"), case["inputs"], case.get("attrs", {})
    expected = case["expected"]
    expected = [np.asarray(e) for e in (expected if isinstance(expected, (tuple, list)) else [expected])]
    if len(expected) != len(names):
        raise ValueError(f"{op} has {len(names)} outputs, the case expects {len(expected)}")
    if isinstance(backend, str):
        if backend not in BUILTIN_BACKENDS:
            raise ValueError(f"backend must be one of {BUILTIN_BACKENDS} or a callable, got {backend!r}")
        if mode is not None and mode != backend:
            raise ValueError(f"the case's expected output is sqref's mode {mode!r}, backend {backend!r} needs mode "
                             f"{backend!r}: draw the cases with mode={backend!r}")
        if backend == "onnx-reference" and domain:
            raise ValueError(f"the ONNX reference evaluator has no {domain} ops ({op}); use 'onnxruntime'")
        run, label = (run_onnxruntime if backend == "onnxruntime" else run_onnx_reference), backend
    elif callable(backend):
        run, label = backend, getattr(backend, "__name__", repr(backend))
    else:
        raise TypeError(f"backend must be a name in {BUILTIN_BACKENDS} or a callable (model, feeds), got {backend!r}")
    initializers = tuple(initializers)
    outputs = {n: (e.dtype, list(e.shape)) for n, e in zip(names, expected)}  # typed: com.microsoft ops too
    model = one_node_model(op, inputs, outputs, initializers=initializers, domain=domain, **attrs)
    feeds = {k: np.asarray(v) for k, v in inputs.items() if v is not None and k not in initializers}
    got = run(model, feeds)
    got = [got] if isinstance(got, np.ndarray) else list(got)
    where = f"{op} in {label} against sqref (mode {mode}, accumulate {case.get('accumulate', 'exact')})"
    lines = [" case:"] + [_describe(k, v) for k, v in inputs.items()]
    lines += [f"   attrs: {attrs!r}"] + ([f"   initializers: {initializers!r}"] if initializers else [])
    if len(got) != len(names):
        raise AssertionError("\n".join([f"{err_msg + ': ' if err_msg else ''}{where}: {len(got)} outputs, "
                                        f"expected {len(names)} ({', '.join(names)})"] + lines))
    for name, g, e in zip(names, got, expected):
        try:
            assert_bit_exact(np.asarray(g), e, err_msg=f"{err_msg + ': ' if err_msg else ''}output {name!r} of {where}")
        except AssertionError as failure:
            raise AssertionError("\n".join([str(failure)] + lines)) from None
