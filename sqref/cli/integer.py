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

from sqref.cli.args import as_json, json_default, positive_int, progress_enabled, table
from sqref.data import DEFAULT_DATA
from sqref.integer.calibration import CALIBRATION_RULES
from sqref.integer.model import ACCUMULATE
from sqref.integer.requant import MODES
from sqref.integer.verify import BACKENDS
from sqref.jobs.integer import golden_file, verify_file

EXIT_MISMATCH = 1


def cmd_golden(args) -> dict:
    r = golden_file(args.model, mode=args.mode, output=args.output, count=args.count, accumulate=args.accumulate,
                    rule=args.rule, data=args.data, overwrite=args.force, progress=progress_enabled(args))
    if not args.json:
        print(f"{r.output}: {r.count} test images through {len(r.layers)} integer layers, mode {r.mode}, "
              f"accumulate {r.accumulate}; {r.bytes:,} bytes")
        if args.accumulate == "auto":
            print(f"  accumulate auto: {_probe_text(r.accumulate_probe)}")
        print(f"  weights: {r.weights}")
        print(f"  activations: uint8, calibrated with rule '{r.calibration['rule']}' on the "
              f"{r.calibration['images']} train images; logits dequantized: accuracy {100 * r.accuracy:.1f}% "
              "on these images")
        print(f"  check it with: sqref verify {r.output} --backend {'|'.join(BACKENDS)}")
    return as_json(r)


def _probe_text(probe) -> str:
    found = probe.get("probe")
    if isinstance(found, dict):
        return f"{probe['backend']} on this {probe['machine']} CPU: " + ", ".join(f"{k} {v}" for k, v in found.items())
    return str(found)


def cmd_verify(args) -> dict:
    r = verify_file(args.golden, backend=args.backend, progress=progress_enabled(args))
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
