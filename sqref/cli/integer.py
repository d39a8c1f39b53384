"""`sqref golden` and `sqref verify`: bit-exact golden files of the integer path, and their check
against a backend (docs/integer.md). The work is sqref.jobs.integer; these commands parse, call
it and print.

Exit codes of `sqref verify`: 0 every tensor is bit-exact; 1 some tensor differs (a finding
about the backend, reported per tensor; the convention of diff and cmp); 2 bad input (as
every sqref command). With --json, stdout holds one JSON object either way; its "match"
field says which (an internal failure has an "error" field instead).
"""
from __future__ import annotations

import json
import sys
from collections import Counter

from sqref.cli.args import (MODEL_HELP, UsageError, add_cluster_options, add_data_option, add_split_seed_option,
                            as_json, cluster_option, json_default, positive_int, progress_enabled, require_dask, table)
from sqref.cli.models import agreement_text
from sqref.integer.calibration import CALIBRATION_RULES
from sqref.integer.model import ACCUMULATE
from sqref.integer.requant import MODES
from sqref.integer.verify import BACKENDS
from sqref.jobs.integer import golden_file, verify_file
from sqref.jobs.onnx_golden import golden_format, is_quantized_onnx, onnx_golden_file, verify_onnx_file

EXIT_MISMATCH = 1


def _cluster(args, quantized_onnx: bool) -> None:
    """--workers/--scheduler: Dask installed, and a golden file in sqref's own format."""
    option = cluster_option(args)
    if option is None:
        return
    if quantized_onnx:
        raise UsageError(f"{option} runs sqref's own integer golden files on a Dask cluster; a quantized ONNX "
                         f"model's golden file runs in-process only (drop {option})")
    require_dask(option)


def cmd_golden(args) -> dict:
    quantized_onnx = is_quantized_onnx(args.model)
    _cluster(args, quantized_onnx)
    if quantized_onnx:
        return _golden_of_quantized_onnx(args)
    r = golden_file(args.model, mode=args.mode, output=args.output, count=args.count, accumulate=args.accumulate,
                    rule=args.rule, data=args.data, inputs=args.inputs, calib=args.calib, split_seed=args.split_seed,
                    overwrite=args.force, progress=progress_enabled(args), workers=args.workers,
                    scheduler=args.scheduler)
    if not args.json:
        inp = r.inputs
        kind = "images" if inp["format"] == "sqref-data" else "inputs"
        what = "inputs" if inp["split"] == "all" else f"{inp['split']} {kind}"
        acc = r.accumulate if isinstance(r.accumulate, str) else "per layer (" + ", ".join(
            f"{v} {n}" for v, n in sorted(Counter(r.accumulate.values()).items())) + " layers)"
        print(f"{r.output}: {r.count} {what} of {inp['file']} through {len(r.layers)} integer layers, mode {r.mode}, "
              f"accumulate {acc}; {r.bytes:,} bytes")
        if args.accumulate == "auto":
            print(f"  accumulate auto: {_probe_text(r.accumulate_probe)}")
        print(f"  weights: {r.weights}")
        cal = r.calibration
        quality = (f"accuracy {100 * r.accuracy:.1f}% on these inputs" if r.accuracy is not None else "no labels")
        if cal is None:  # a TFLite model: already quantized
            print(f"  activations: as stored in the model file; logits dequantized: {quality}")
        else:
            where = f"all of {cal['file']}" if cal["split"] == "all" else f"the {cal['split']} split of {cal['file']}"
            print(f"  activations: uint8, calibrated with rule '{cal['rule']}' on {cal['images']} inputs ({where}); "
                  f"logits dequantized: {quality}; {agreement_text(as_json(r), 'the float forward pass')}")
        for note in r.notes:
            print(f"note: {note}")
        print(f"  check it with: sqref verify {r.output} --backend {'|'.join(r.backends)}")
    return as_json(r)


def _golden_of_quantized_onnx(args) -> dict:
    r = onnx_golden_file(args.model, mode=args.mode, output=args.output, count=args.count,
                         accumulate=args.accumulate, data=args.data, inputs=args.inputs, split_seed=args.split_seed,
                         overwrite=args.force, progress=progress_enabled(args))
    if not args.json:
        inp = r.inputs
        print(f"{r.output}: {r.count} inputs ({inp['split']} of {inp['file']}) through the graph onnxruntime "
              f"{r.ort_version} runs for {r.model}: {r.nodes} nodes, {r.tensors} tensors; {r.bytes:,} bytes")
        print("  nodes: " + ", ".join(f"{op} {n}" for op, n in r.partition.items()))
        print(f"  float islands (float32 reductions between DequantizeLinear and QuantizeLinear): {r.islands}")
        print("  integer GEMM accumulation (probed per kind of kernel): "
              + (", ".join(f"{k} {n}" for k, n in r.accumulate.items()) or "none"))
        if r.accuracy is not None:
            print(f"  accuracy {100 * r.accuracy:.1f}% on these inputs")
        print(f"  check it with: sqref verify {r.output} --backend {'|'.join(r.backends)}")
    return as_json(r)


def _probe_text(probe) -> str:
    found = probe.get("probe")
    if isinstance(found, dict):
        return f"{probe['backend']} on this {probe['machine']} CPU: " + ", ".join(f"{k} {v}" for k, v in found.items())
    return str(found)


def _verify_quantized_onnx(args) -> dict:
    r = verify_onnx_file(args.golden, backend=args.backend, progress=progress_enabled(args))
    if not args.json:
        print(f"{r.golden}: {r.images} inputs, accumulate {r.accumulate}; backend {r.backend}")
        rows = [{"name": t["name"], "op": t["op"], "shape": "x".join(map(str, t["shape"])),
                 "result": "bit-exact" if t["status"] == "exact" else
                 f"{t['mismatches']:,} / {t['total']:,} differ: {t['status']}"} for t in r.tensors]
        print(table(rows, [("name", "tensor"), ("op", "written by"), ("shape", "shape"), ("result", "result")]))
        for t in r.tensors:
            if t["status"] == "UNEXPLAINED":
                print(t["message"])
        for note in r.notes:
            print(f"note: {note}")
        explained = sum(n for k, n in r.counts.items() if k not in ("exact", "UNEXPLAINED"))
        if r.match:
            print(f"OK: {r.counts.get('exact', 0)} of {len(r.tensors)} tensors are bit-exact"
                  + (f"; {explained} differ, every difference explained (float bound: float32 summation order; "
                     f"ties: a rounding tie of such a sum; follows: from an earlier difference)" if explained else ""))
        else:
            print(f"MISMATCH: {r.counts['UNEXPLAINED']} of {len(r.tensors)} tensors differ in ways no float32 "
                  f"summation order explains")
    if not r.match:
        if args.json:
            print(json.dumps(as_json(r), default=json_default, sort_keys=True))
        sys.stdout.flush()
        raise SystemExit(EXIT_MISMATCH)
    return as_json(r)


def cmd_verify(args) -> dict:
    quantized_onnx = golden_format(args.golden) == "sqref-onnx-golden"
    _cluster(args, quantized_onnx)
    if quantized_onnx:
        return _verify_quantized_onnx(args)
    r = verify_file(args.golden, backend=args.backend, progress=progress_enabled(args), onnx_format=args.onnx_format,
                    workers=args.workers, scheduler=args.scheduler)
    tensors = r.tensors
    n_bad = sum(1 for t in tensors if t["match"] is False)
    if not args.json:
        print(f"{r.golden}: {r.images} images, mode {r.mode}, accumulate {r.accumulate}; backend {r.backend}")
        rows = []
        for t in tensors:
            if t.get("skipped"):
                result = "not exposed by the backend"
            elif t["match"]:
                result = "bit-exact"
            else:
                result = f"{t['mismatches']:,} / {t['total']:,} differ"
            rows.append({"name": t["name"], "shape": "x".join(map(str, t["shape"])), "result": result})
        print(table(rows, [("name", "tensor"), ("shape", "shape"), ("result", "result")]))
        for t in tensors:
            if t["match"] is False:
                print(t["message"])
        for note in r.notes:
            print(f"note: {note}")
        if n_bad:
            print(f"MISMATCH: {n_bad} of {len(tensors)} tensors differ from the golden file")
        else:
            print(f"OK: all {len(tensors)} tensors are bit-exact")
    if n_bad:  # a finding, not bad input: exit 1 (sqref.cli.main maps SystemExit to its code)
        if args.json:
            print(json.dumps(as_json(r), default=json_default, sort_keys=True))
        sys.stdout.flush()
        raise SystemExit(EXIT_MISMATCH)
    return as_json(r)


def register(sub, add):
    """Add the golden and verify subcommands to the main parser."""
    p = add("golden", "write a bit-exact golden file: every integer layer's outputs on test images (or your own "
                      "inputs), with all quantization parameters (a float MODEL is quantized to 8 bits first)")
    p.add_argument("model", help=f"{MODEL_HELP}; float or quantized; or an int8 ONNX model someone else quantized "
                                 f"(QDQ or QOperator), recorded as onnxruntime runs it (--mode onnxruntime, --inputs; "
                                 f"docs/quantized_onnx.md)")
    p.add_argument("--mode", required=True, choices=MODES, help="requantization arithmetic (whose backend to model)")
    p.add_argument("-o", "--output", help="golden file to write (default: MODEL.golden.MODE.h5 in .)")
    p.add_argument("--count", type=positive_int, default=None,
                   help="record the first N inputs (default: 100, or all of them when there are fewer)")
    p.add_argument("--accumulate", choices=("auto", *ACCUMULATE), default="auto",
                   help="exact integer sums; int16-pairs: the saturation of onnxruntime/FBGEMM u8 x s8 kernels "
                        "on x86 without VNNI; auto: what the mode's backend does on this machine, probed "
                        "(default: %(default)s)")
    p.add_argument("--rule", choices=CALIBRATION_RULES, default="max",
                   help="activation calibration rule, on the calibration inputs (default: %(default)s)")
    add_data_option(p, what="data file whose test split is recorded and whose train split calibrates, unless "
                            "--inputs and --calib say otherwise")
    p.add_argument("--inputs", metavar="FILE",
                   help="the inputs the golden file records (the first --count), in the forms of --data: a "
                        ".npz/.npy is used whole, the sqref data file gives its test split (default: the test "
                        "split of --data)")
    p.add_argument("--calib", metavar="FILE",
                   help="the calibration inputs of the activation ranges, in the same forms; a .npz/.npy is used "
                        "whole, the sqref data file gives its train split (default: the train split of --data)")
    add_split_seed_option(p)
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    add_cluster_options(p, "the integer path's batches", note="the golden file is written here, byte for byte the "
                                                              "in-process one; not for quantized ONNX models")
    p.set_defaults(func=cmd_golden)

    p = add("verify", "recompute a golden file with a backend and compare every tensor bit for bit "
                      "(exit 0 exact, 1 mismatch, 2 bad input)")
    p.add_argument("golden", help="a golden file written by `sqref golden`")
    p.add_argument("--backend", required=True, choices=BACKENDS,
                   help="the backend to recompute it with (a golden file of a quantized ONNX model: sqref or "
                        "onnxruntime; exit 0 also when every difference is explained, docs/quantized_onnx.md)")
    p.add_argument("--onnx-format", choices=("qoperator", "qdq"), default="qoperator",
                   help="how onnxruntime gets sqref's integer model: QLinear ops (qoperator), or DequantizeLinear -> "
                        "float op -> QuantizeLinear groups that its optimizer fuses (qdq, as quantize_static writes "
                        "them) (default: %(default)s)")
    add_cluster_options(p, "the backend's batches", note="backends sqref and onnxruntime; the report is the "
                                                         "in-process one")
    p.set_defaults(func=cmd_verify)
