"""`sqref study NAME`: regenerate a results table of docs/results.md."""
from __future__ import annotations

from sqref.cli.args import UsageError, check_output_path, progress_enabled
from sqref import plots
from sqref.cli.compress import save_figure
from sqref.fileformat import atomic_text
from sqref.studies import STUDIES


def register(sub, add):
    """Add the study subcommand to the main parser."""
    p = add("study", "regenerate a results table of docs/results.md (markdown on stdout or into a file)")
    p.add_argument("name", choices=[*STUDIES, "all"])
    p.add_argument("-o", "--output", help="write the markdown to this file")
    p.add_argument("--plot", metavar="FILE.png", help="draw the tradeoff study's accuracy curves (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> dict:
    names = list(STUDIES) if args.name == "all" else [args.name]
    if args.plot and "tradeoff" not in names:
        raise UsageError("--plot draws the accuracy curves of the tradeoff study: use it with 'tradeoff' or 'all'")
    plot = check_output_path(args.plot, force=args.force) if args.plot else None
    out = check_output_path(args.output, force=args.force) if args.output else None
    curves = []
    sections = [STUDIES[n](progress=progress_enabled(args), **({"collect": curves} if n == "tradeoff" else {}))
                for n in names]
    text = RESULTS_HEADER + "\n".join(sections) if args.name == "all" else "\n".join(sections)
    if plot:
        save_figure(plots.accuracy_curves(curves, title="LeNet-5: test accuracy vs payload ratio"), plot)
    if out:
        atomic_text(out, text, overwrite=args.force)
    elif not args.json:
        print(text)
    return {"study": args.name, "markdown": text, "output": args.output}


RESULTS_HEADER = """# sqref results

Every table on this page is produced by `sqref study all -o docs/results.md --force` (each section names
its own `sqref study NAME` command) on the shipped models and data. Accuracy is on the 1,000-image test
split (one image = 0.1 point; standard error near 98% about 0.45 points) and always comes with the
prediction agreement between the compressed and the float model. Ratios: original bytes (32 bits x every
parameter of the float model) over payload bytes (packed codes, scales, zero points, biases, SVD ranks),
over the .h5 file's bytes, and over a Huffman-coded payload (an extra column for comparison with Deep
Compression; not the file format). See docs/method.md section 4 and sqref/accounting.py.

"""


