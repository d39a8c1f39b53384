"""`sqref golden` and `sqref verify`: bit-exact golden files of the integer path, and their check
against a backend (docs/integer.md).

Exit codes of `sqref verify`: 0 every tensor is bit-exact; 1 some tensor differs (a finding
about the backend, reported per tensor; the convention of diff and cmp); 2 bad input (as
every sqref command). With --json, stdout holds one JSON object either way; its "match"
field says which (an internal failure has an "error" field instead).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

from sqref.backends.probe import resolve_accumulate
from sqref.cli.args import check_output_path, json_default, positive_int, table
from sqref.data import DEFAULT_DATA, load_split
from sqref.integer import golden
from sqref.integer.calibration import CALIBRATION_RULES
from sqref.integer.model import ACCUMULATE
from sqref.integer.requant import MODES
from sqref.integer.verify import BACKENDS, verify
from sqref.jobs.integer import prepare

EXIT_MISMATCH = 1


def _default_output(model_path, mode):
    root, _ = os.path.splitext(os.path.basename(os.fspath(model_path)))
    return f"{root}.golden.{mode}.h5"


def cmd_golden(args) -> dict:
    integer_mode = args.mode
    out = check_output_path(args.output or _default_output(args.model, integer_mode), [args.model, args.data],
                            force=args.force)
    if args.accumulate == "int16-pairs" and integer_mode not in ("onnxruntime", "fbgemm"):
        raise ValueError(f"--accumulate int16-pairs models onnxruntime's and FBGEMM's kernels; not mode {integer_mode!r}")
    start = time.perf_counter()
    x, y = load_split(args.data, "test")
    if args.count > len(x):
        raise ValueError(f"--count {args.count} is more than the {len(x)} test images")
    imodel, info = prepare(args.model, data=args.data, rule=args.rule, mode=integer_mode)
    accumulate, probe = (resolve_accumulate(integer_mode) if args.accumulate == "auto"
                         else (args.accumulate, {"requested": args.accumulate}))
    # the command regenerates the file anywhere: it names the accumulation "auto" resolved to
    command = ["sqref", "golden", os.path.basename(os.fspath(args.model)), "--mode", integer_mode, "--count",
               str(args.count), "--accumulate", accumulate, "--rule", args.rule, "-o", os.path.basename(out)]
    meta = {**info, "data": {"file": os.path.basename(os.fspath(args.data)), "split": "test",
                             "images": f"the first {args.count}"}, "command": shlex.join(command),
            "accumulate_probe": probe}
    g = golden.make_golden(imodel, x[:args.count], mode=integer_mode, accumulate=accumulate,
                           labels=y[:args.count], meta=meta)
    golden.write_golden(g, out, overwrite=args.force)
    seconds = time.perf_counter() - start
    accuracy = float((g.logits.argmax(axis=1) == y[:args.count]).mean())
    result = {"output": out, "mode": integer_mode, "accumulate": accumulate, "accumulate_probe": probe,
              "count": args.count,
              "accuracy": accuracy, "layers": list(imodel.names), "bytes": os.path.getsize(out), **info,
              "seconds": round(seconds, 2)}
    if not args.json:
        print(f"{out}: {args.count} test images through {len(imodel.layers)} integer layers, mode {integer_mode}, "
              f"accumulate {accumulate}; {os.path.getsize(out):,} bytes")
        if args.accumulate == "auto":
            print(f"  accumulate auto: {_probe_text(probe)}")
        print(f"  weights: {info['weights']}")
        print(f"  activations: uint8, calibrated with rule '{args.rule}' on the {info['calibration']['images']} "
              f"train images; logits dequantized: accuracy {100 * accuracy:.1f}% on these images")
        print(f"  check it with: sqref verify {out} --backend {'|'.join(BACKENDS)}")
    return result


def _probe_text(probe) -> str:
    found = probe.get("probe")
    if isinstance(found, dict):
        return f"{probe['backend']} on this {probe['machine']} CPU: " + ", ".join(f"{k} {v}" for k, v in found.items())
    return str(found)


def cmd_verify(args) -> dict:
    g = golden.read_golden(args.golden)
    report = verify(g, args.backend)
    report["golden"] = os.fspath(args.golden)
    tensors = report["tensors"]
    n_bad = sum(1 for r in tensors if r["match"] is False)
    if not args.json:
        print(f"{args.golden}: {len(g.inputs)} images, mode {g.mode}, accumulate {g.accumulate}; backend {args.backend}")
        rows = []
        for r in tensors:
            if r.get("skipped"):
                result = "not exposed by the backend"
            elif r["match"]:
                result = "bit-exact"
            else:
                result = f"{r['mismatches']:,} / {r['total']:,} differ"
            rows.append({"name": r["name"], "shape": "x".join(map(str, r["shape"])), "result": result})
        print(table(rows, [("name", "tensor"), ("shape", "shape"), ("result", "result")]))
        for r in tensors:
            if r["match"] is False:
                print(r["message"])
        for note in report["notes"]:
            print(f"note: {note}")
        if n_bad:
            print(f"MISMATCH: {n_bad} of {len(tensors)} tensors differ from the golden file")
        else:
            print(f"OK: all {len(tensors)} tensors are bit-exact")
    for r in tensors:
        r.pop("message", None)
    if n_bad:  # a finding, not bad input: exit 1 (sqref.cli.main maps SystemExit to its code)
        if args.json:
            print(json.dumps(report, default=json_default, sort_keys=True))
        sys.stdout.flush()
        raise SystemExit(EXIT_MISMATCH)
    return report


def register(sub, add):
    """Add the golden and verify subcommands to the main parser."""
    p = add("golden", "write a bit-exact golden file: every integer layer's outputs on test images, with all "
                      "quantization parameters (a float MODEL is quantized to 8 bits first)")
    p.add_argument("model", help="a sqref model file (.h5), float or quantized")
    p.add_argument("--mode", required=True, choices=MODES, help="requantization arithmetic (whose backend to model)")
    p.add_argument("-o", "--output", help="golden file to write (default: MODEL.golden.MODE.h5 in .)")
    p.add_argument("--count", type=positive_int, default=100, help="first N test images (default: %(default)s)")
    p.add_argument("--accumulate", choices=("auto", *ACCUMULATE), default="auto",
                   help="exact integer sums; int16-pairs: the saturation of onnxruntime/FBGEMM u8 x s8 kernels "
                        "on x86 without VNNI; auto: what the mode's backend does on this machine, probed "
                        "(default: %(default)s)")
    p.add_argument("--rule", choices=CALIBRATION_RULES, default="max",
                   help="activation calibration rule, on the train split (default: %(default)s)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="data file (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_golden)

    p = add("verify", "recompute a golden file with a backend and compare every tensor bit for bit "
                      "(exit 0 exact, 1 mismatch, 2 bad input)")
    p.add_argument("golden", help="a golden file written by `sqref golden`")
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.set_defaults(func=cmd_verify)
