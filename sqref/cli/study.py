"""`sqref study NAME`: regenerate a results table of docs/results.md."""
from __future__ import annotations

import argparse
import functools
import inspect
import os

from sqref import plots
from sqref.cli.args import UsageError, add_cluster_options, cluster_option, progress_enabled, require_dask
from sqref.hdf5 import atomic_text
from sqref.jobs.paths import check_output_path, save_figure
from sqref.studies import STUDIES, results
from sqref.studies.common import check_cache_dir

HELP = """Run a study, then print its markdown, write it to a new file, or update its section of a page.

  sqref study NAME                    print the markdown on stdout ('all': every study, after a page header)
  sqref study NAME --update FILE      replace only the lines between NAME's markers in FILE,
                                        <!-- sqref study NAME: begin -->
                                        <!-- sqref study NAME: end -->
                                      ('all': every study's section); every byte outside the markers is
                                      kept, and FILE is replaced atomically
  sqref study NAME -o FILE            write a new file: the section between its markers ('all': a page
                                      header, then every section), ready for --update

--update fails in one line (exit 2, FILE untouched) if a section's markers are missing or unbalanced; it
checks them before the study runs and reads FILE again when it writes. -o --force replaces a file, but
never one with study markers (use --update), so a regenerated table never deletes text written by hand.
Progress with an ETA goes to stderr (which study of how many, then the study's cells) unless -q.

--workers N runs a study's cells on a Dask LocalCluster of N processes on this machine, --scheduler ADDR on
an existing cluster (`dask scheduler`, then `dask worker ADDR` on each host, with the same sqref version);
the output is byte for byte the same as in-process (docs/scale.md), where the in-process run has the
workers' one BLAS thread: OPENBLAS_NUM_THREADS=1 (fine-tuning sums in the BLAS's order). Needs the
`distributed` extra: pip install "sqref[distributed]". Every study but structural runs on a cluster.
structural runs in this process only: it measures the wall time and peak memory of child processes, which
cells running at the same time would distort. With 'all', one LocalCluster serves every other study, one
after the other, and is stopped; then structural runs here, alone.

--cache DIR keeps every finished cell of a study in DIR and reads it back on the next run, so a run that was
interrupted (or crashed) resumes and prints the same bytes; an entry is keyed by the cell's parameters and the
code version (sqref's version, the sources the cell runs, the model and data files; a fine-tuning cell's
parameters include the BLAS threads it ran with), and a corrupted entry is ignored (with a note) and computed
again (docs/scale.md). With 'all', structural keeps no cache: it measures, so it runs again every time."""


def register(sub, add):
    """Add the study subcommand to the main parser."""
    p = add("study", "regenerate a results table of docs/results.md (markdown on stdout, into a new file, or "
                     "into its marked section of an existing file)")
    p.description = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("name", choices=[*STUDIES, "all"])
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE", help="write a new page (markdown between markers) to FILE")
    where.add_argument("--update", metavar="FILE",
                       help="replace only the study's section between its markers in FILE, keeping all other text")
    p.add_argument("--label", help="with --update: the section marked 'sqref study NAME LABEL' (a second copy of "
                                   "a study, e.g. finetune OPENBLAS_NUM_THREADS=2 in docs/results.md)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the tradeoff study's accuracy curves (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="replace an existing output file (-o, --plot)")
    here = ", ".join(name for name in STUDIES if name not in results.distributed_studies(STUDIES))
    add_cluster_options(p, "the study's cells", note=f"every study but {here}, which 'all' runs in this process "
                                                      "after the others")
    p.add_argument("--cache", metavar="DIR",
                   help="keep each finished cell in DIR (created if missing; one JSON file per cell, keyed by its "
                        "parameters and the code version) and read it back instead of computing it again, so an "
                        f"interrupted run resumes (every study but {here}; default: no cache)")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> dict:
    names = list(STUDIES) if args.name == "all" else [args.name]
    if args.plot and "tradeoff" not in names:
        raise UsageError("--plot draws the accuracy curves of the tradeoff study: use it with 'tradeoff' or 'all'")
    if args.label is not None and (args.update is None or args.name == "all"):
        raise UsageError("--label selects a labelled section to --update: use it with one study and --update FILE")
    option = cluster_option(args)
    if option is not None:
        if args.name != "all" and args.name not in results.distributed_studies(STUDIES):
            raise UsageError(f"{args.name!r} runs in-process only: {results.in_process_reason(args.name)} "
                             f"(drop {option}; 'all' {option} runs it in this process after the others)")
        require_dask(option)
    studies = {name: STUDIES[name] for name in names}
    if args.cache is not None:
        studies = _with_cache(studies, args.cache, every=args.name == "all")
    keys = {name: results.section_key(name, args.label) for name in names}
    plot = check_output_path(args.plot, force=args.force) if args.plot else None
    out = check_output_path(args.output, force=args.force) if args.output else None
    if out and args.force and os.path.exists(out) and results.has_markers(out):
        raise UsageError(f"output {out} has sqref study markers: use --update {out} to replace only the generated "
                         "sections (text outside the markers would be lost)")
    if args.update:
        results.check_page(args.update, keys.values())  # fail now, not after an hour of fine-tuning
    curves = []
    sections = results.run_studies(studies, progress=progress_enabled(args),
                                   collect=curves, workers=args.workers, scheduler=args.scheduler)
    text = (results.RESULTS_HEADER if args.name == "all" else "") + "\n".join(sections.values())
    if plot:
        save_figure(plots.accuracy_curves(curves, title="LeNet-5: test accuracy vs payload ratio"), plot)
    if args.update:
        results.update_page(args.update, {keys[name]: markdown for name, markdown in sections.items()})
    elif out:
        page = results.new_page({keys[name]: markdown for name, markdown in sections.items()},
                                header=results.RESULTS_HEADER if args.name == "all" else "")
        atomic_text(out, page, overwrite=args.force)
    elif not args.json:
        print(text)
    return {"study": args.name, "markdown": text, "output": args.output, "updated": args.update,
            "workers": args.workers, "scheduler": args.scheduler}


def cached_studies(studies: dict) -> list[str]:
    """The names of the studies that keep their cells in a --cache (they take `cache`)."""
    return [name for name, study in studies.items() if "cache" in inspect.signature(study).parameters]


def _with_cache(studies: dict, directory, *, every=False) -> dict:
    """Each study that keeps a cache given `cache=directory` (checked now: a file there is a one-line
    error, exit 2). A study without one is a one-line error, unless `every` ('all'): it runs as it is."""
    able = cached_studies(studies)
    unable = [name for name in studies if name not in able]
    if unable and not every:
        raise UsageError(f"--cache: {unable[0]!r} keeps no cache: it runs in this process, and again every time "
                         "(drop --cache)")
    directory = check_cache_dir(directory)
    return {name: functools.partial(study, cache=directory) if name in able else study
            for name, study in studies.items()}
