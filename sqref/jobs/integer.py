"""The integer-path jobs behind `sqref golden` and `sqref verify` (docs/integer.md): `prepare`
makes a model file's IntegerModel, `golden_file` writes a golden file, `verify_file` checks one
against a backend. Silent unless ``progress=True``."""
from __future__ import annotations

import dataclasses
import os
import shlex
import time
from dataclasses import dataclass

import numpy as np

from sqref.backends.probe import resolve_accumulate
from sqref.data import DEFAULT_DATA, load_split
from sqref.fileformat import load
from sqref.hdf5 import file_sha256
from sqref.integer import golden
from sqref.integer.calibration import CALIBRATION_RULES, calibrate
from sqref.integer.model import ACCUMULATE, build_integer_model
from sqref.integer.requant import MODES
from sqref.integer.verify import BACKENDS, verify
from sqref.jobs.paths import check_output_path, default_output
from sqref.model import PARAM_LAYERS
from sqref.progress import Progress
from sqref.qmodel import quantize_model


def prepare(model_path, *, data=None, rule="max", mode="onnxruntime"):
    """Load a model file and make its IntegerModel; returns (imodel, provenance dict).

    A model with float weights is first quantized as the paper's default:
    ``quantize_model(bits=8, rule="dynamic", per tensor, symmetric)``; an already
    quantized file is used as it is. Activations are calibrated with ``rule``
    on the TRAIN split of the data file.
    """
    model = load(model_path)
    quantized = [getattr(layer, "quant", None) is not None for layer in model.layers if isinstance(layer, PARAM_LAYERS)]
    if any(quantized) and not all(quantized):
        raise ValueError(f"{model_path}: some conv/linear layers are quantized and some are not")
    if all(quantized) and quantized:
        qmodel, weights = model, "as stored in the model file"
    else:
        qmodel = quantize_model(model, bits=8, rule="dynamic", per_channel=False)
        weights = "float model quantized by sqref: 8 bits, dynamic boundary, per tensor, symmetric"
    x_train = load_split(data, "train")[0]
    cal = calibrate(qmodel, x_train, rule=rule)
    imodel = build_integer_model(qmodel, cal, mode=mode)
    info = {"model": os.path.basename(os.fspath(model_path)), "model_sha256": file_sha256(model_path),
            "weights": weights, "calibration": {"rule": rule, "split": "train", "images": cal.images}}
    return imodel, info




@dataclass(frozen=True)
class GoldenResult:
    """The golden file written and what it holds (docs/cli.md, `sqref golden`)."""

    output: str
    model: str
    model_sha256: str
    mode: str
    accumulate: str
    accumulate_probe: dict
    count: int
    accuracy: float
    layers: list
    bytes: int
    weights: str
    calibration: dict
    command: str
    seconds: float


def golden_file(model_path, *, mode, output=None, count=100, accumulate="auto", rule="max", data=DEFAULT_DATA,
                overwrite=False, progress=False) -> GoldenResult:
    """Write a bit-exact golden file: every integer layer's outputs on the first ``count`` test
    images (a float model is quantized to 8 bits first, see `prepare`). accumulate="auto" probes
    what the mode's backend does on this machine and records the answer."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if accumulate not in ("auto", *ACCUMULATE):
        raise ValueError(f"accumulate {accumulate!r}: expected one of auto, {', '.join(ACCUMULATE)}")
    if rule not in CALIBRATION_RULES:
        raise ValueError(f"rule {rule!r}: expected one of {', '.join(CALIBRATION_RULES)}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count {count!r}: expected a positive number of images")
    out = check_output_path(output or golden_output(model_path, mode), [model_path, data], force=overwrite)
    if accumulate == "int16-pairs" and mode not in ("onnxruntime", "fbgemm"):
        raise ValueError(f"--accumulate int16-pairs models onnxruntime's and FBGEMM's kernels; not mode {mode!r}")
    start = time.perf_counter()
    x, y = load_split(data, "test")
    if count > len(x):
        raise ValueError(f"--count {count} is more than the {len(x)} test images")
    imodel, info = prepare(model_path, data=data, rule=rule, mode=mode)
    resolved, probe = resolve_accumulate(mode) if accumulate == "auto" else (accumulate, {"requested": accumulate})
    # the command regenerates the file anywhere: it names the accumulation "auto" resolved to
    command = shlex.join(["sqref", "golden", os.path.basename(os.fspath(model_path)), "--mode", mode, "--count",
                          str(count), "--accumulate", resolved, "--rule", rule, "-o", os.path.basename(out)])
    meta = {**info, "data": {"file": os.path.basename(os.fspath(data)), "split": "test",
                             "images": f"the first {count}"}, "command": command, "accumulate_probe": probe}
    bar = Progress(count, f"golden {mode}", enabled=progress)
    g = golden.make_golden(imodel, x[:count], mode=mode, accumulate=resolved, labels=y[:count], meta=meta,
                           progress=bar.update)
    bar.close()
    golden.write_golden(g, out, overwrite=overwrite)
    acc = float((g.logits.argmax(axis=1) == y[:count]).mean())
    return GoldenResult(out, info["model"], info["model_sha256"], mode, resolved, probe, count, round(acc, 4),
                        list(imodel.names), os.path.getsize(out), info["weights"], info["calibration"], command,
                        round(time.perf_counter() - start, 2))


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


def verify_file(golden_path, *, backend, progress=False) -> VerifyResult:
    """Recompute a golden file with ``backend`` and compare every tensor bit for bit."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    start = time.perf_counter()
    g = golden.read_golden(golden_path)
    bar = Progress(3 + len(g.outputs), f"verify {backend}", enabled=progress)  # backend run, input, layers, logits
    report = verify(g, backend, progress=bar.update)
    bar.close("match" if report["match"] else "MISMATCH")
    return VerifyResult(os.fspath(golden_path), report["backend"], report["mode"], report["accumulate"],
                        int(len(g.inputs)), bool(report["match"]), report["tensors"], report["notes"],
                        round(time.perf_counter() - start, 2))
