"""`sqref quantize` and `sqref compress`: the paper's pipeline at the command
line, with per-layer tables and honest totals (payload and file ratios side
by side, accuracy with the prediction agreement beside it)."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import sqref
from sqref import plots
from sqref.accounting import sizes
from sqref.cli.args import UsageError, check_output_path, nonneg_float, positive_int, progress_enabled, table
from sqref.clipping import RULES
from sqref.compress import FINETUNE_DISTILL, FINETUNE_KEEP, distill_kwargs, factor_model, finetune, search_rank
from sqref.data import DATA_DIR, DEFAULT_DATA, load_split
from sqref.fileformat import atomic_path
from sqref.jobs.models import evaluate
from sqref.model import layer_arrays
from sqref.progress import Progress
from sqref.qmodel import parse_bits, quantize_model
from sqref.train import KEEP


def layer_rows(before, after, sizes) -> list[dict]:
    """Per-layer statistics of a quantized model `after` against the float
    model `before` that it quantized (same layer names)."""
    by_name = {r["name"]: r for r in sizes["layers"]}
    original = dict(zip(before.names, before.layers))
    rows = []
    for name, layer in zip(after.names, after.layers):
        if name not in by_name:
            continue
        w = np.asarray(original[name].weight, np.float64)
        w_hat = np.asarray(layer.weight, np.float64)
        err = np.sum((w - w_hat) ** 2)
        q = layer.quant
        alpha = None if q is None else np.asarray(q.alpha)
        amax = np.abs(w).max() if w.size else 0.0
        rows.append({**by_name[name],
                     "rule": None if q is None else q.rule,
                     "alpha": None if alpha is None else (float(alpha) if alpha.ndim == 0 else alpha.tolist()),
                     "alpha_over_max": None if alpha is None or amax == 0 else float(np.max(alpha) / amax),
                     "mse": float(err / max(w.size, 1)),
                     "sqnr_db": float(10 * np.log10(np.sum(w**2) / err)) if err > 0 else float("inf")})
    return rows


def _plot_paths(args, *, force):
    """Validate --plot targets before any work: FILE.png and FILE-errors.png."""
    if not getattr(args, "plot", None):
        return None
    if not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot}: expected a .png file name")
    root = args.plot[:-4]
    return [check_output_path(p, force=force) for p in (args.plot, f"{root}-errors.png")]


def save_figure(fig, path) -> None:
    """Write a PNG atomically (the target was checked by check_output_path)."""
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _plot_quantized(paths, before, after):
    save_figure(plots.weight_histograms(before, after), paths[0])
    save_figure(plots.layer_errors(before, after), paths[1])


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _alpha_text(v):
    if v is None:
        return "-"
    if isinstance(v, list):
        return f"{min(v):.3g}..{max(v):.3g}"
    return f"{v:.4g}"


def quality(float_model, compressed, data_path, split, progress) -> dict:
    """Accuracy of both models on a split, the drop in points and the agreement."""
    x, y = load_split(data_path, split)
    a = evaluate(float_model, x, y, progress=progress, label=f"float model on {split}")
    b = evaluate(compressed, x, y, progress=progress, label=f"compressed model on {split}")
    return {"split": split, "float_accuracy": a["accuracy"], "compressed_accuracy": b["accuracy"],
            "drop_points": 100 * (a["accuracy"] - b["accuracy"]),
            "agreement": float(np.mean(a["predictions"] == b["predictions"]))}


def print_totals(total, qual):
    print(f"original {total['original_bytes']:,} B ({total['original_params']:,} params x 4 B)  |  "
          f"payload {total['payload_bytes']:,} B = {total['payload_ratio']:.1f}x  |  "
          f"file {total['file_bytes']:,} B = {total['file_ratio']:.1f}x  |  "
          f"Huffman-coded payload {total['huffman_payload_bytes']:,} B = {total['huffman_ratio']:.1f}x (extra column)")
    if qual:
        print(f"{qual['split']} accuracy: float {100 * qual['float_accuracy']:.2f}%, compressed "
              f"{100 * qual['compressed_accuracy']:.2f}% (drop {qual['drop_points']:+.2f} points), "
              f"prediction agreement {100 * qual['agreement']:.2f}%")


def _quantize_kwargs(args) -> dict:
    return {"bits": args.bits, "rule": args.rule, "per_channel": args.per_channel, "scheme": args.scheme,
            "rounding": args.rounding, "bias_bits": args.bias_bits}


def _bits_arg(text):
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_quantize(args) -> dict:
    out = check_output_path(args.output or _default_output(args.model, f"q{args.bits}".replace(",", "_")),
                            [args.model], force=args.force)
    plot_paths = _plot_paths(args, force=args.force)
    model = sqref.load(args.model)
    start = time.perf_counter()
    qmodel = quantize_model(model, **_quantize_kwargs(args))
    seconds = time.perf_counter() - start
    sqref.save(qmodel, out, overwrite=args.force)
    report = sizes(qmodel, out)
    rows = layer_rows(model, qmodel, report)
    qual = None if args.no_eval else quality(model, qmodel, args.data, args.split, progress_enabled(args))
    if plot_paths:
        _plot_quantized(plot_paths, model, qmodel)
    if not args.json:
        print(f"{out}: {args.rule} boundary, {'per channel' if args.per_channel else 'per tensor'}, "
              f"{args.scheme}, rounding {args.rounding}, quantized in {seconds:.2f}s")
        print(table([{**r, "alpha": _alpha_text(r["alpha"]), "alpha_over_max": _fmt(r["alpha_over_max"], ".3f"),
                      "mse": _fmt(r["mse"], ".3g"), "sqnr_db": _fmt(r["sqnr_db"], ".1f"),
                      "params": f"{r['params']:,}", "payload_bytes": f"{r['payload_bytes']:,}"} for r in rows],
                    [("name", "layer"), ("params", "params"), ("bits", "bits"), ("alpha", "alpha"),
                     ("alpha_over_max", "alpha/max|w|"), ("mse", "MSE"), ("sqnr_db", "SQNR dB"),
                     ("payload_bytes", "bytes")]))
        print_totals(report["total"], qual)
    return {"output": out, "layers": rows, "total": report["total"], "quality": qual, "seconds": seconds,
            "plots": plot_paths}


def _default_output(model_path, tag):
    root, _ = os.path.splitext(os.path.basename(os.fspath(model_path)))
    return f"{root}.{tag}.h5"


def cmd_compress(args) -> dict:
    model_path = args.model or os.fspath(DATA_DIR / "lenet5.h5")
    out = check_output_path(args.output or _default_output(model_path, "compressed"), [model_path], force=args.force)
    progress = progress_enabled(args)
    plot_paths = _plot_paths(args, force=args.force)
    model = sqref.load(model_path)
    qkw = _quantize_kwargs(args)
    # fail now, not after the work; with SVD a linear layer n may be named by its factors n.v and n.u
    # (the final quantize_model checks again, against the layers SVD actually made)
    planned = []
    for n, layer in zip(model.names, model.layers):
        split = layer.kind == "linear" and not args.no_svd
        planned += [(f"{n}.v", "linear"), (f"{n}.u", "linear")] if split else [(n, layer.kind)]
    parse_bits(args.bits, tuple(n for n, _ in planned), tuple(k for _, k in planned))
    steps = {}
    start = time.perf_counter()

    # 1. SVD of the FC layers
    rank_search = None
    if args.no_svd:
        factored, svd_reports = model, []
    else:
        rank = args.rank
        if args.max_drop is not None:
            bar = Progress(0, "rank search (validation split)", enabled=progress)
            rank, tried = search_rank(model, load_split(args.data, "val"), max_drop=args.max_drop,
                                      quantize_kwargs=qkw, progress=bar.update)
            bar.total = max(len(tried), 1)
            bar.close(f"rank {rank}" if rank else "no rank qualifies: FC layers kept whole")
            rank_search = {"max_drop": args.max_drop, "chosen_rank": rank,
                           "tried": [{"rank": r, "val_accuracy": a} for r, a in tried]}
        if rank is None and args.energy is None and args.ratio is None:
            factored, svd_reports = model, []
        else:
            factored, svd_reports = factor_model(model, rank=rank, energy=args.energy, ratio=args.ratio,
                                                 solver=args.svd_solver)
        if not any(isinstance(layer, sqref.model.Linear) for layer in model.layers) and not args.json:
            print("note: the model has no fully-connected layer; SVD step skipped")
    steps["svd_seconds"] = time.perf_counter() - start

    # 2. quantization (and 3. optional fine-tuning, which re-quantizes every step)
    t = time.perf_counter()
    if args.finetune and args.no_eval:
        raise UsageError("--finetune trains on MNIST-5k; it cannot be combined with --no-eval")
    if args.finetune:
        tuned, history = finetune(factored, load_split(args.data, "train"), load_split(args.data, "val"),
                                  epochs=args.finetune, quantize_kwargs=qkw, lr=args.finetune_lr, progress=progress,
                                  keep=args.finetune_keep, **distill_kwargs(model, args.distill))
        pre_quant = tuned
    else:
        history, pre_quant = None, factored
    compressed = quantize_model(pre_quant, **qkw)
    steps["quantize_seconds"] = time.perf_counter() - t

    # 4. write, then report
    sqref.save(compressed, out, overwrite=args.force)
    report = sizes(compressed, out)
    rows = layer_rows(pre_quant, compressed, report)
    qual = None if args.no_eval else quality(model, compressed, args.data, args.split, progress)
    if plot_paths:
        _plot_quantized(plot_paths, pre_quant, compressed)
    steps["total_seconds"] = time.perf_counter() - start
    svd_by_name = {r["name"]: r for r in svd_reports if not r["kept_whole"]}
    original = {n: sum(a.size for a in layer_arrays(layer).values()) for n, layer in zip(model.names, model.layers)}
    for row in rows:
        base, _, part = row["name"].partition(".")
        rep = svd_by_name.get(base)
        row["rank"] = rep["rank"] if rep else None
        # the original layer's parameters (weights and bias), on the first row of an SVD pair
        row["params_before"] = original.get(base) if part in ("", "v") else None
    if not args.json:
        print(f"{out}: from {model_path}")
        for rep in svd_reports:
            if rep["kept_whole"]:
                print(f"  SVD {rep['name']} {rep['shape'][0]}x{rep['shape'][1]}: kept whole ({rep['reason']})")
            else:
                print(f"  SVD {rep['name']} {rep['shape'][0]}x{rep['shape'][1]}: rank {rep['rank']}, "
                      f"kept energy {100 * rep['kept_energy']:.2f}%, relative error {rep['relative_error']:.4f}")
        if history:
            kept = next(h for h in history if h["kept"])
            method = (f"distillation from {model_path} (T {args.distill[0]:g}, alpha {args.distill[1]:g})"
                      if args.distill else "the labels")
            print(f"  fine-tuned {len(history)} epochs on {method}; kept epoch {kept['epoch']} "
                  f"(--finetune-keep {args.finetune_keep}; validation {100 * kept['val_accuracy']:.2f}%)")
        print(table([{**r, "shape": "x".join(map(str, r["shape"])), "rank": _fmt(r["rank"], "d"),
                      "alpha": _alpha_text(r["alpha"]), "params_before": _fmt(r["params_before"], ","),
                      "params": f"{r['params']:,}", "payload_bytes": f"{r['payload_bytes']:,}"} for r in rows],
                    [("name", "layer"), ("kind", "kind"), ("shape", "shape"), ("rank", "rank"), ("bits", "bits"),
                     ("rule", "rule"), ("alpha", "alpha"), ("params_before", "params before"),
                     ("params", "params after"), ("payload_bytes", "bytes")]))
        print_totals(report["total"], qual)
    return {"output": out, "model": model_path, "settings": {**qkw, "rank": args.rank, "energy": args.energy,
            "ratio": args.ratio, "max_drop": args.max_drop, "finetune": args.finetune,
            "distill": dict(zip(("temperature", "alpha"), args.distill)) if args.finetune and args.distill else None,
            "finetune_keep": args.finetune_keep if args.finetune else None,
            "svd": not args.no_svd},
            "svd": [{k: v for k, v in r.items() if k != "singular_values"} for r in svd_reports],
            "rank_search": rank_search, "layers": rows, "total": report["total"], "quality": qual,
            "finetune_history": history, "timing": steps, "plots": plot_paths}


def add_quant_options(p, *, default_bits):
    p.add_argument("--bits", type=_bits_arg, default=default_bits,
                   help="weight bits: an int in [2, 8], or per layer like 'conv=8,fc=4' or '8,conv1=4' "
                        "(default: %(default)s)")
    p.add_argument("--rule", choices=RULES, default="dynamic", help="clipping rule (default: %(default)s)")
    p.add_argument("--per-channel", action="store_true", help="one boundary per output channel")
    p.add_argument("--scheme", choices=["symmetric", "asymmetric"], default="symmetric")
    p.add_argument("--rounding", choices=["half_even", "half_away"], default="half_even")
    p.add_argument("--bias-bits", type=int, choices=[32, 16], default=32, help="bias storage (default: %(default)s)")
    p.add_argument("-o", "--output", help="file to write (default: derived from the model's name, in .)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="data file (default: %(default)s)")
    p.add_argument("--split", default="test", choices=["val", "test"], help="split to report on (default: %(default)s)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the weight histograms with the boundaries (FILE.png) "
                   "and the error per layer (FILE-errors.png); needs matplotlib")


def register(sub, add):
    """Add the quantize and compress subcommands to the main parser."""
    p = add("quantize", "quantize a model's weights to k bits with a clipping rule and report the error per layer")
    p.add_argument("model", help="a sqref model file (.h5)")
    add_quant_options(p, default_bits=8)
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy evaluation")
    p.set_defaults(func=cmd_quantize)

    p = add("compress", "the paper end to end: SVD of the FC layers, k-bit weights, dynamic clipping "
                        "(no MODEL: the shipped data/lenet5.h5 with the paper's settings)")
    p.add_argument("model", nargs="?", help="a sqref model file (default: data/lenet5.h5)")
    add_quant_options(p, default_bits=8)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rank", type=positive_int, help="SVD rank shared by the FC layers")
    g.add_argument("--energy", type=_unit_interval, help="keep the smallest rank holding this energy fraction")
    g.add_argument("--ratio", type=_open_unit_interval, help="keep at most this fraction of each FC layer's weights")
    g.add_argument("--max-drop", type=nonneg_float, default=None,
                   help="smallest rank losing at most this many points on the validation split (default: 0.5 "
                        "when no other rank option is given)")
    g.add_argument("--no-svd", action="store_true", help="quantize only")
    p.add_argument("--svd-solver", choices=["exact", "randomized"], default="exact",
                   help="randomized: a fast approximate SVD for a small explicit --rank on large layers")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy evaluation (models not for MNIST)")
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
    if args.distill is None:
        args.distill = FINETUNE_DISTILL or ()
    if args.finetune_keep is None:
        args.finetune_keep = FINETUNE_KEEP
    if args.rank is None and args.energy is None and args.ratio is None and args.max_drop is None and not args.no_svd:
        args.max_drop = 0.5
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
