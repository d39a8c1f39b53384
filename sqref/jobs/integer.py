"""The integer-path jobs behind `sqref golden` and `sqref verify` (docs/integer.md): `prepare`
and `integer_model` make a model's IntegerModel, `golden_file` writes a golden file,
`verify_file` checks one against a backend; with workers or a scheduler, their batches run on a Dask
cluster (`cluster_golden`, `cluster_verify`). Silent unless ``progress=True``."""
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
from sqref.integer.model import (ACCUMULATE, IntegerModel, build_integer_model, check_integer_structure, check_mode,
                                 output_shapes)
from sqref.integer.run import quantize_input, run_integer
from sqref.integer.requant import MODES
from sqref.integer.verify import BACKENDS, backends_for, run_backend, verify
from sqref.inputs import ALL, SPLIT_SEED, SQREF_DATA, open_data, output_classes
from sqref.jobs.models import agreement_fields, load_model
from sqref.jobs.paths import check_not_model_data, check_output_path, default_output
from sqref.model import PARAM_LAYERS, run
from sqref.parallel import run_tasks
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
                inputs=None, calib=None, split_seed=SPLIT_SEED, overwrite=False, progress=False, workers=None,
                scheduler=None) -> GoldenResult:
    """Write a bit-exact golden file: every integer layer's outputs on the first ``count`` inputs
    (default 100, or all when there are fewer; a float model is quantized to 8 bits first, see
    `integer_model`). accumulate="auto" probes what the mode's backend does on this machine and
    records the answer.

    The recorded inputs are ``inputs`` (a .npz/.npy used whole, or a sqref data file's test split)
    or else the test split of ``data``; the calibration inputs ``calib`` (used whole, or a sqref
    data file's train split) or else the train split of ``data`` (a user's ``data`` is split by
    sqref.inputs.split_indices with ``split_seed``). The model may be a float ONNX model.

    ``workers`` or ``scheduler``: the integer path runs in batches on a Dask cluster
    (cluster_golden); the file, written here, is byte for byte the in-process one."""
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
    if workers is None and scheduler is None:
        bar = Progress(count, f"golden {mode}", enabled=progress)
        g = golden.make_golden(imodel, x, mode=mode, accumulate=resolved, labels=labels, meta=meta,
                               progress=bar.update)
        bar.close()
    else:
        g = cluster_golden(imodel, x, mode=mode, accumulate=resolved, labels=labels, meta=meta, workers=workers,
                           scheduler=scheduler, progress=progress)
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


CLUSTER_BATCH = 32  # images per task of a golden or verify run on a Dask cluster (never depends on the workers)
CLUSTER_BACKENDS = ("sqref", "onnxruntime")  # verify backends that run batch by batch on a cluster


def _batches(n: int) -> list[dict]:
    return [{"start": start, "stop": min(start + CLUSTER_BATCH, n)} for start in range(0, n, CLUSTER_BATCH)]


def _run_batches(fn, tasks, codes, imodel, *, label, workers, scheduler, progress) -> list:
    """run_tasks over batches of input codes: the integer model sent once to every worker, each
    batch once, with its task; the results in task order."""
    bar = Progress(len(tasks), f"{label} (batches of {CLUSTER_BATCH})", enabled=progress)
    parts = [{"codes": codes[task["start"]:task["stop"]]} for task in tasks]
    results = run_tasks(fn, tasks, workers=workers, scheduler=scheduler, shared={"imodel": imodel}, parts=parts,
                        progress=lambda done, total: bar.update(done))
    bar.close()
    return results


def integer_task(start, stop, mode, accumulate, imodel, codes):
    """One batch of cluster_golden (images start:stop, given as `codes`): run_integer's logits and
    every layer's codes."""
    return run_integer(imodel, codes, mode=mode, accumulate=accumulate, return_intermediates=True)


def cluster_golden(imodel, x, *, mode, accumulate, labels=None, meta=None, workers=None, scheduler=None,
                   progress=False) -> golden.Golden:
    """golden.make_golden(imodel, x, ...) with an accumulation already resolved (not "auto"), the
    integer path run in batches of CLUSTER_BATCH images on a Dask cluster. run_integer's result does
    not depend on its batches, so the tensors concatenated here in task order are make_golden's."""
    mode = check_mode(mode)
    codes = quantize_input(imodel, x, mode=mode)
    tasks = [{**batch, "mode": mode, "accumulate": accumulate} for batch in _batches(len(codes))]
    results = _run_batches(integer_task, tasks, codes, imodel, label=f"golden {mode}", workers=workers,
                           scheduler=scheduler, progress=progress)
    logits = np.concatenate([batch_logits for batch_logits, _ in results])
    outputs = tuple(np.concatenate(layer) for layer in zip(*(batch_outputs for _, batch_outputs in results)))
    imodel = IntegerModel(imodel.layers, imodel.names, imodel.input_shape, imodel.input, mode, imodel.meta,
                          imodel.wiring)  # as make_golden: the model of the mode it was run in
    return golden.Golden(imodel, codes, outputs, logits, mode, accumulate,
                         None if labels is None else np.asarray(labels, np.uint8), dict(meta or {}))


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


def verify_file(golden_path, *, backend, progress=False, onnx_format="qoperator", workers=None,
                scheduler=None) -> VerifyResult:
    """Recompute a golden file with ``backend`` and compare every tensor bit for bit (onnxruntime gets
    the model in ``onnx_format``, "qoperator" or "qdq": sqref.backends.onnx.export_onnx).
    ``workers`` or ``scheduler``: the backend runs in batches on a Dask cluster (cluster_verify;
    backends sqref and onnxruntime); the report is the in-process one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    on_cluster = workers is not None or scheduler is not None
    if on_cluster and backend not in CLUSTER_BACKENDS:
        raise ValueError(f"on a Dask cluster, verify runs the backends {', '.join(CLUSTER_BACKENDS)} so far, not "
                         f"{backend!r}: verify with it in this process (without --workers or --scheduler)")
    start = time.perf_counter()
    g = golden.read_golden(golden_path)
    if on_cluster:
        report = cluster_verify(g, backend, onnx_format=onnx_format, workers=workers, scheduler=scheduler,
                                progress=progress)
    else:
        bar = Progress(3 + len(g.outputs), f"verify {backend}", enabled=progress)  # backend run, input, layers, logits
        report = verify(g, backend, progress=bar.update, onnx_format=onnx_format)
        bar.close("match" if report["match"] else "MISMATCH")
    return VerifyResult(os.fspath(golden_path), report["backend"], report["mode"], report["accumulate"],
                        int(len(g.inputs)), bool(report["match"]), report["tensors"], report["notes"],
                        round(time.perf_counter() - start, 2))


def backend_task(start, stop, backend, onnx_format, mode, accumulate, imodel, codes) -> dict:
    """One batch of cluster_verify (images start:stop, given as `codes`): run_backend's tensors."""
    batch = golden.Golden(imodel, codes, (), np.zeros((0,), np.float32), mode, accumulate)
    return run_backend(batch, backend, onnx_format=onnx_format)


def cluster_verify(g: golden.Golden, backend, *, onnx_format="qoperator", workers=None, scheduler=None,
                   progress=False) -> dict:
    """sqref.integer.verify.verify(g, backend)'s report, the backend run in batches of CLUSTER_BATCH
    images on a Dask cluster (the backends of CLUSTER_BACKENDS, whose outputs do not depend on
    the batch: integer kernels, one image at a time); the tensors are concatenated here in task
    order and compared by verify itself, so every row is the one verify reports in-process."""
    tasks = [{**batch, "backend": backend, "onnx_format": onnx_format, "mode": g.mode, "accumulate": g.accumulate}
             for batch in _batches(len(g.inputs))]
    results = _run_batches(backend_task, tasks, g.inputs, g.imodel, label=f"verify {backend}", workers=workers,
                           scheduler=scheduler, progress=progress)
    got = {name: np.concatenate([batch[name] for batch in results]) for name in results[0]}
    return verify(g, backend, onnx_format=onnx_format, got=got)
