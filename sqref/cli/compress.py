"""`sqref quantize` and `sqref compress`: the paper's pipeline at the command
line, with per-layer tables and honest totals (payload and file ratios side
by side, accuracy with the prediction agreement beside it). The work is
sqref.jobs.compress; these commands parse, call it and print."""
from __future__ import annotations

import argparse

import numpy as np

from sqref.cli.args import (MODEL_HELP, UsageError, add_data_option, add_split_seed_option, as_json, nonneg_float,
                            positive_int, progress_enabled, table)
from sqref.cli.models import agreement_text
from sqref.clipping import RULES
from sqref.compress import FINETUNE_DISTILL, FINETUNE_KEEP
from sqref.jobs.compress import QUANTIZE_SPLITS, SPLITS, compress_file, quantize_file
from sqref.jobs.report import alpha_text
from sqref.quant import ROUNDINGS, SCHEMES
from sqref.train import KEEP


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_totals(total, qual):
    print(f"original {total['original_bytes']:,} B ({total['original_params']:,} params x 4 B)  |  "
          f"payload {total['payload_bytes']:,} B = {total['payload_ratio']:.1f}x  |  "
          f"file {total['file_bytes']:,} B = {total['file_ratio']:.1f}x  |  "
          f"Huffman-coded payload {total['huffman_payload_bytes']:,} B = {total['huffman_ratio']:.1f}x (extra column)")
    if not qual:
        return
    if qual["labels"]:
        print(f"{qual['split']} accuracy: float {100 * qual['float_accuracy']:.2f}%, compressed "
              f"{100 * qual['compressed_accuracy']:.2f}% (drop {qual['drop_points']:+.2f} points), "
              f"prediction agreement {100 * qual['agreement']:.2f}%")
        top5 = "" if qual["top5_agreement"] is None else f"top-5 agreement {100 * qual['top5_agreement']:.2f}%, "
        sqnr = (f"{qual['logit_sqnr_db']:.1f} dB" if qual["logit_sqnr_db"] is not None
                else "- (identical logits)" if qual["identical_logits"] == qual["count"] else "- (not finite)")
        print(f"  against the float model: {top5}logit SQNR {sqnr}")
    else:
        where = "all inputs" if qual["split"] == "all" else f"{qual['split']} split"
        print(f"{where} ({qual['count']}, no labels): {agreement_text(qual)}")


def _quantize_kwargs(args) -> dict:
    return {"bits": args.bits, "rule": args.rule, "per_channel": args.per_channel, "scheme": args.scheme,
            "rounding": args.rounding, "bias_bits": args.bias_bits}


def _common_kwargs(args) -> dict:
    return {**_quantize_kwargs(args), "output": args.output, "data": args.data, "split": args.split,
            "evaluate": not args.no_eval, "plot": args.plot, "overwrite": args.force,
            "split_seed": args.split_seed, "progress": progress_enabled(args)}


def _bits_arg(text):
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_quantize(args) -> dict:
    r = quantize_file(args.model, **_common_kwargs(args))
    if not args.json:
        s = r.settings
        print(f"{r.output}: {s['rule']} boundary, {'per channel' if s['per_channel'] else 'per tensor'}, "
              f"{s['scheme']}, rounding {s['rounding']}, quantized in {r.timing['quantize_seconds']:.2f}s")
        print(table([{**row, "alpha": alpha_text(row), "alpha_over_max": _fmt(row["alpha_over_max"], ".3f"),
                      "mse": _fmt(row["mse"], ".3g"), "sqnr_db": _fmt(row["sqnr_db"], ".1f"),
                      "params": f"{row['params']:,}", "payload_bytes": f"{row['payload_bytes']:,}"} for row in r.layers],
                    [("name", "layer"), ("params", "params"), ("bits", "bits"), ("alpha", "alpha"),
                     ("alpha_over_max", "alpha/max|w|"), ("mse", "MSE"), ("sqnr_db", "SQNR dB"),
                     ("payload_bytes", "bytes")]))
        print_totals(r.total, r.quality)
    return as_json(r)


def cmd_compress(args) -> dict:
    if args.finetune and args.no_eval:
        raise UsageError("--finetune trains on the train split of --data; it cannot be combined with --no-eval")
    r = compress_file(args.model, **_common_kwargs(args), svd=not args.no_svd, rank=args.rank, energy=args.energy,
                      ratio=args.ratio, max_drop=args.max_drop, svd_solver=args.svd_solver, svd_conv_1x1=args.svd_1x1,
                      finetune_epochs=args.finetune, finetune_lr=args.finetune_lr, distill=args.distill,
                      finetune_keep=args.finetune_keep)
    if not args.json:
        for note in r.notes:
            print(f"note: {note}")
        print(f"{r.output}: from {r.model}")
        for rep in r.svd:
            if rep["kept_whole"]:
                print(f"  SVD {rep['name']} {rep['shape'][0]}x{rep['shape'][1]}: kept whole ({rep['reason']})")
            else:
                print(f"  SVD {rep['name']} {rep['shape'][0]}x{rep['shape'][1]}: rank {rep['rank']}, "
                      f"kept energy {100 * rep['kept_energy']:.2f}%, relative error {rep['relative_error']:.4f}")
        if r.finetune_history:
            kept = next(h for h in r.finetune_history if h["kept"])
            distill = r.settings["distill"]
            method = (f"distillation from {r.model} (T {distill['temperature']:g}, alpha {distill['alpha']:g})"
                      if distill else "the labels")
            print(f"  fine-tuned {len(r.finetune_history)} epochs on {method}; kept epoch {kept['epoch']} "
                  f"(--finetune-keep {r.settings['finetune_keep']}; validation {100 * kept['val_accuracy']:.2f}%)")
        print(table([{**row, "weight_shape": "x".join(map(str, row["weight_shape"])), "rank": _fmt(row["rank"], "d"),
                      "alpha": alpha_text(row), "params_before": _fmt(row["params_before"], ","),
                      "params": f"{row['params']:,}", "payload_bytes": f"{row['payload_bytes']:,}"} for row in r.layers],
                    [("name", "layer"), ("kind", "kind"), ("weight_shape", "shape"), ("rank", "rank"), ("bits", "bits"),
                     ("rule", "rule"), ("alpha", "alpha"), ("params_before", "params before"),
                     ("params", "params after"), ("payload_bytes", "bytes")]))
        print_totals(r.total, r.quality)
    return as_json(r)


def add_quant_options(p, *, default_bits, splits, default_split, split_help):
    p.add_argument("--bits", type=_bits_arg, default=default_bits,
                   help="weight bits: an int in [2, 8], or per layer like 'conv=8,fc=4' or '8,conv1=4' "
                        "(default: %(default)s)")
    p.add_argument("--rule", choices=RULES, default="dynamic", help="clipping rule (default: %(default)s)")
    p.add_argument("--per-channel", action="store_true", help="one boundary per output channel")
    p.add_argument("--scheme", choices=SCHEMES, default="symmetric")
    p.add_argument("--rounding", choices=ROUNDINGS, default="half_even")
    p.add_argument("--bias-bits", type=int, choices=[32, 16], default=32, help="bias storage (default: %(default)s)")
    p.add_argument("-o", "--output", help="file to write (default: derived from the model's name, in .)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    add_data_option(p)
    p.add_argument("--split", default=default_split, choices=splits, help=split_help)
    add_split_seed_option(p)
    p.add_argument("--plot", metavar="FILE.png", help="draw the weight histograms with the boundaries (FILE.png) "
                   "and the error per layer (FILE-errors.png); needs matplotlib")


def register(sub, add):
    """Add the quantize and compress subcommands to the main parser."""
    p = add("quantize", "quantize a model's weights to k bits with a clipping rule and report the error per layer")
    p.add_argument("model", help=MODEL_HELP)
    add_quant_options(p, default_bits=8, splits=QUANTIZE_SPLITS, default_split=None,
                      split_help="the inputs to report on: a split, or all of the file (default: test of the sqref "
                                 "data file, all of a .npz/.npy: quantizing fits nothing to the data)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation (no data is read)")
    p.set_defaults(func=cmd_quantize)

    p = add("compress", "the paper end to end: SVD of the FC layers, k-bit weights, dynamic clipping "
                        "(no MODEL: the shipped data/lenet5.h5 with the paper's settings)")
    p.add_argument("model", nargs="?", help=f"{MODEL_HELP} (default: data/lenet5.h5)")
    add_quant_options(p, default_bits=8, splits=SPLITS, default_split="test",
                      split_help="split to report on; the rank search uses val and fine-tuning train and val "
                                 "(default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rank", type=positive_int, help="SVD rank shared by the FC layers")
    g.add_argument("--energy", type=_unit_interval, help="keep the smallest rank holding this energy fraction")
    g.add_argument("--ratio", type=_open_unit_interval, help="keep at most this fraction of each FC layer's weights")
    g.add_argument("--max-drop", type=nonneg_float, default=None,
                   help="smallest rank losing at most this many points on the validation split: of accuracy, or "
                        "without labels of top-1 agreement with the float model (100 x (1 - agreement)) (default: "
                        "0.5 when no other rank option is given)")
    g.add_argument("--no-svd", action="store_true", help="quantize only")
    p.add_argument("--svd-1x1", action="store_true",
                   help="also factor every 1x1 convolution (groups 1, no padding) by SVD, into two 1x1 "
                        "convolutions: it is a matrix applied at every pixel")
    p.add_argument("--svd-solver", choices=["exact", "randomized"], default="exact",
                   help="randomized: a fast approximate SVD for a small explicit --rank on large layers")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation (the rank search of --max-drop "
                   "still reads the validation split of --data)")
    p.add_argument("--finetune", type=positive_int, metavar="EPOCHS", help="quantization-aware fine-tuning epochs")
    p.add_argument("--finetune-lr", type=nonneg_float, default=0.002, help="fine-tuning learning rate (default: %(default)s)")
    p.add_argument("--distill", type=_distill_arg, metavar="T,ALPHA|none",
                   help="fine-tune by distillation from the input float model: temperature T > 0 and weight "
                        f"ALPHA in [0, 1] of the soft targets; 'none': the labels only (default: {_distill_text(FINETUNE_DISTILL)})")
    p.add_argument("--finetune-keep", choices=KEEP,
                   help="the fine-tuning epoch to keep: the last, or early stopping on validation accuracy, latest "
                        f"or earliest of tied epochs (default: {FINETUNE_KEEP}; see `sqref study finetune-keep`)")
    p.set_defaults(func=_compress_defaults)


def _compress_defaults(args):
    if args.distill is not None and not args.finetune:
        raise UsageError(f"--distill {_distill_text(args.distill)}: distillation is a fine-tuning method; add --finetune EPOCHS")
    if args.finetune_keep is not None and not args.finetune:
        raise UsageError(f"--finetune-keep {args.finetune_keep}: it says which fine-tuning epoch to keep; "
                         "add --finetune EPOCHS")
    return cmd_compress(args)


def _distill_text(value) -> str:
    return f"{value[0]:g},{value[1]:g}" if value else "none"


def _distill_arg(text):
    """'T,ALPHA' (temperature > 0, alpha in [0, 1]) -> (T, ALPHA); 'none' -> ()."""
    if text.strip().lower() == "none":
        return ()
    parts = text.split(",")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not np.isfinite(values[0]) or values[0] <= 0 or not 0 <= values[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected T,ALPHA with T > 0 and ALPHA in [0, 1], or none; got {text!r}")
    return values


def _unit_interval(text):
    value = nonneg_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _open_unit_interval(text):
    value = nonneg_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value
