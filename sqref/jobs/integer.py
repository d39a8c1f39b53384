"""The integer-path jobs behind `sqref golden` and `sqref verify`."""
from __future__ import annotations

import os

from sqref.data import load_split
from sqref.fileformat import file_sha256, load
from sqref.integer.calibration import calibrate
from sqref.integer.model import build_integer_model
from sqref.model import PARAM_LAYERS
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
