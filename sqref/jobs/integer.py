"""The integer-path jobs behind `sqref golden` and `sqref verify` (docs/integer.md): `prepare`
and `integer_model` make a model's IntegerModel, `golden_file` writes a golden file,
`verify_file` checks one against a backend. Silent unless ``progress=True``."""
from __future__ import annotations

import dataclasses
import os
import shlex
import time
from dataclasses import dataclass

import numpy as np

from sqref.backends.probe import resolve_layer_accumulate
from sqref.compress import logit_agreement
from sqref.data import DEFAULT_DATA
from sqref.hdf5 import file_sha256
from sqref.integer import golden
from sqref.integer.calibration import CALIBRATION_RULES, calibrate
from sqref.backends.tflite_import import is_tflite, read_tflite
from sqref.integer.model import ACCUMULATE, build_integer_model, check_integer_structure, output_shapes
from sqref.integer.requant import MODES
from sqref.integer.verify import BACKENDS, backends_for, verify
from sqref.inputs import ALL, SPLIT_SEED, SQREF_DATA, open_data, output_classes
from sqref.jobs.models import agreement_fields, load_model
from sqref.jobs.paths import check_not_model_data, check_output_path, default_output
from sqref.model import PARAM_LAYERS, run
from sqref.progress import Progress
from sqref.qmodel import quantize_model


def integer_model(model, model_path, calib_x, *, rule="max", mode="onnxruntime", calibration=None):
    """The IntegerModel of a loaded model, activations calibrated on ``calib_x``; returns
    (imodel, provenance dict). A model with float weights is first quantized as the paper's
    default: ``quantize_model(bits=8, rule="dynamic", per tensor, symmetric)``; an already
    quantized one is used as it is. ``calibration``: what to record about the calibration data."""
    check_integer_structure(model, os.fspath(model_path))  # before quantizing and calibrating: say it at once
    quantized = [getattr(layer, "quant", None) is not None for layer in model.layers if isinstance(layer, PARAM_LAYERS)]
    if any(quantized) and not all(quantized):
        raise ValueError(f"{model_path}: some conv/linear layers are quantized and some are not")
    if all(quantized) and quantized:
        qmodel, weights = model, "as stored in the model file"
    else:
        qmodel = quantize_model(model, bits=8, rule="dynamic", per_channel=False)
        weights = "float model quantized by sqref: 8 bits, dynamic boundary, per tensor, symmetric"
    cal = calibrate(qmodel, calib_x, rule=rule)
    imodel = build_integer_model(qmodel, cal, mode=mode)
    info = {"model": os.path.basename(os.fspath(model_path)), "model_sha256": file_sha256(model_path),
            "weights": weights,
            "calibration": {"rule": rule, "split": "train", "images": cal.images, **(calibration or {})}}
    return imodel, info


def prepare(model_path, *, data=None, rule="max", mode="onnxruntime"):
    """Load a model file (or a float ONNX model) and make its IntegerModel (see integer_model);
    returns (imodel, provenance dict). Activations are calibrated with ``rule`` on the TRAIN
    split of the data file (None: the shipped MNIST-5k)."""
    model = load_model(model_path)
    source = open_data(DEFAULT_DATA if data is None else data, model.input_shape)
    return integer_model(model, model_path, source.split("train")[0], rule=rule, mode=mode)


@dataclass(frozen=True)
class GoldenResult:
    """The golden file written and what it holds (docs/cli.md, `sqref golden`)."""

    output: str
    model: str
    model_sha256: str
    mode: str
    accumulate: str | dict  # one value for every layer, or {layer name: value}
    accumulate_probe: dict
    count: int
    accuracy: float | None
    layers: list
    bytes: int
    weights: str
    calibration: dict
    command: str
    seconds: float
    labels: bool
    inputs: dict
    agreement: float
    top5_agreement: float | None
    logit_sqnr_db: float | None
    notes: list
    backends: list  # the backends that can verify it (sqref.integer.verify.backends_for)


DEFAULT_COUNT = 100  # inputs a golden file records when --count is not given (fewer if the file has fewer)


def _resolve_inputs(path, whole_split, model, seed):
    """A data file given as --inputs or --calib: a user's file whole, the sqref data file's
    ``whole_split`` (test for the recorded inputs, train for calibration)."""
    source = open_data(path, model.input_shape, seed=seed)
    return source, (whole_split if source.kind == SQREF_DATA else ALL)


def golden_file(model_path, *, mode, output=None, count=None, accumulate="auto", rule="max", data=DEFAULT_DATA,
                inputs=None, calib=None, split_seed=SPLIT_SEED, overwrite=False, progress=False) -> GoldenResult:
    """Write a bit-exact golden file: every integer layer's outputs on the first ``count`` inputs
    (default 100, or all when there are fewer; a float model is quantized to 8 bits first, see
    `integer_model`). accumulate="auto" probes what the mode's backend does on this machine and
    records the answer.

    The recorded inputs are ``inputs`` (a .npz/.npy used whole, or a sqref data file's test split)
    or else the test split of ``data``; the calibration inputs ``calib`` (used whole, or a sqref
    data file's train split) or else the train split of ``data`` (a user's ``data`` is split by
    sqref.inputs.split_indices with ``split_seed``). The model may be a float ONNX model."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if accumulate not in ("auto", *ACCUMULATE):
        raise ValueError(f"accumulate {accumulate!r}: expected one of auto, {', '.join(ACCUMULATE)}")
    if rule not in CALIBRATION_RULES:
        raise ValueError(f"rule {rule!r}: expected one of {', '.join(CALIBRATION_RULES)}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise ValueError(f"count {count!r}: expected a positive number of images")
    data = DEFAULT_DATA if data is None else data
    tflite = is_tflite(model_path)
    if tflite and calib is not None:
        raise ValueError(f"--calib: {model_path} is a quantized TFLite model; its activation parameters are stored "
                         f"in it")
    uses_data = inputs is None or (calib is None and not tflite)
    read = [model_path, *([data] if uses_data else []), inputs, calib]
    out = check_output_path(output or golden_output(model_path, mode), read, force=overwrite)
    check_not_model_data(out, model_path)
    if accumulate == "int16-pairs" and mode not in ("onnxruntime", "fbgemm"):
        raise ValueError(f"--accumulate int16-pairs models onnxruntime's and FBGEMM's kernels; not mode {mode!r}")
    start = time.perf_counter()
    model = read_tflite(model_path, mode=mode) if tflite else load_model(model_path)
    if inputs is not None:
        rec_source, rec_split = _resolve_inputs(inputs, "test", model, split_seed)
    else:
        rec_source, rec_split = open_data(data, model.input_shape, seed=split_seed), "test"
    if calib is not None:
        cal_source, cal_split = _resolve_inputs(calib, "train", model, split_seed)
    else:
        cal_source, cal_split = (rec_source if inputs is None else open_data(data, model.input_shape, seed=split_seed),
                                 "train")
    x, y = rec_source.split(rec_split)
    if count is not None and count > len(x):
        where = "" if rec_split == ALL else f"the {rec_split} split of "
        raise ValueError(f"--count {count} is more than the {len(x)} inputs in {where}{rec_source.path}")
    count = min(DEFAULT_COUNT, len(x)) if count is None else count
    x, y = x[:count], None if y is None else y[:count]
    rec_source.check_classes(output_shapes(model)[-1][0] if tflite else output_classes(model, x))
    if tflite:  # already an integer model: nothing to quantize or calibrate
        imodel, info = model, {"model": os.path.basename(os.fspath(model_path)),
                               "model_sha256": file_sha256(model_path), "calibration": None,
                               "weights": "as stored in the TFLite file (int8, read by sqref.backends.tflite_import)"}
    else:
        calib_x = cal_source.split(cal_split)[0]
        imodel, info = integer_model(model, model_path, calib_x, rule=rule, mode=mode, calibration={
            "split": cal_split, "file": os.path.basename(cal_source.path), "data": cal_source.record()})
    if accumulate == "auto":  # per kind of kernel; one value when every layer agrees
        per_layer, probe = resolve_layer_accumulate(mode, imodel)
        values = set(per_layer.values())
        resolved = values.pop() if len(values) == 1 else per_layer if values else "exact"
    else:
        resolved, probe = accumulate, {"requested": accumulate}
    # the command regenerates the file anywhere: it names the accumulation "auto" resolved to, and the data files
    argv = ["sqref", "golden", os.path.basename(os.fspath(model_path)), "--mode", mode, "--count", str(count),
            "--accumulate", resolved if isinstance(resolved, str) else "auto",  # per layer: probed again
            *([] if tflite else ["--rule", rule])]
    if uses_data and os.path.realpath(os.fspath(data)) != os.path.realpath(DEFAULT_DATA):
        argv += ["--data", os.path.basename(os.fspath(data))]
    argv += [*(["--inputs", os.path.basename(os.fspath(inputs))] if inputs is not None else []),
             *(["--calib", os.path.basename(os.fspath(calib))] if calib is not None else [])]
    if split_seed != SPLIT_SEED and SQREF_DATA not in (rec_source.kind, cal_source.kind):
        argv += ["--split-seed", str(split_seed)]
    command = shlex.join([*argv, "-o", os.path.basename(out)])
    labels = y
    notes = []
    if y is not None and int(y.max()) > 255:  # a golden file stores labels as uint8
        labels = None
        notes.append("labels above 255 are not stored in the golden file (uint8 labels); accuracy measured here")
    refitted = imodel.meta.get("bias_refitted_channels", {})
    if refitted:
        where = ", ".join(f"{name!r} {len(ks)}" for name, ks in refitted.items())
        notes.append(f"weight scales raised so that the int32 bias fits (sqref.integer.model.fit_bias_scale), "
                     f"channels per layer: {where}")
    meta = {**info, "bias_refitted_channels": refitted,
            "data": {"file": os.path.basename(rec_source.path), "split": rec_split,
                     "images": f"the first {count}", "source": rec_source.record()},
            "command": command, "accumulate_probe": probe}
    bar = Progress(count, f"golden {mode}", enabled=progress)
    g = golden.make_golden(imodel, x, mode=mode, accumulate=resolved, labels=labels, meta=meta,
                           progress=bar.update)
    bar.close()
    golden.write_golden(g, out, overwrite=overwrite)
    acc = None if y is None else round(float((g.logits.argmax(axis=1) == y).mean()), 4)
    figures = ({"agreement": None, "top5_agreement": None, "logit_sqnr_db": None} if tflite else  # no float model
               agreement_fields(logit_agreement(np.asarray(run(model, x), np.float32), g.logits)))
    return GoldenResult(out, info["model"], info["model_sha256"], mode, resolved, probe, count, acc,
                        list(imodel.names), os.path.getsize(out), info["weights"], info["calibration"], command,
                        round(time.perf_counter() - start, 2), y is not None,
                        {"file": os.path.basename(rec_source.path), "format": rec_source.kind, "split": rec_split},
                        figures["agreement"], figures["top5_agreement"], figures["logit_sqnr_db"], notes,
                        list(backends_for(imodel)))


def golden_output(model_path, mode) -> str:
    """MODEL.golden.MODE.h5 in the current directory."""
    return default_output(model_path, f"golden.{mode}")


@dataclass(frozen=True)
class VerifyResult:
    """A golden file recomputed by a backend (sqref.integer.verify.verify): ``match`` is True when
    every tensor is bit-exact; ``tensors`` holds one comparison row per tensor."""

    golden: str
    backend: str
    mode: str
    accumulate: str
    images: int
    match: bool
    tensors: list
    notes: list
    seconds: float

    def to_json(self) -> dict:
        """The rows without their multi-line failure messages (the text output prints them)."""
        d = dataclasses.asdict(self)
        d["tensors"] = [{k: v for k, v in r.items() if k != "message"} for r in d["tensors"]]
        return d


def verify_file(golden_path, *, backend, progress=False, onnx_format="qoperator") -> VerifyResult:
    """Recompute a golden file with ``backend`` and compare every tensor bit for bit (onnxruntime gets
    the model in ``onnx_format``, "qoperator" or "qdq": sqref.backends.onnx.export_onnx)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    start = time.perf_counter()
    g = golden.read_golden(golden_path)
    bar = Progress(3 + len(g.outputs), f"verify {backend}", enabled=progress)  # backend run, input, layers, logits
    report = verify(g, backend, progress=bar.update, onnx_format=onnx_format)
    bar.close("match" if report["match"] else "MISMATCH")
    return VerifyResult(os.fspath(golden_path), report["backend"], report["mode"], report["accumulate"],
                        int(len(g.inputs)), bool(report["match"]), report["tensors"], report["notes"],
                        round(time.perf_counter() - start, 2))
