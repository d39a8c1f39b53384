"""The results page, docs/results.md: generated sections between marker
lines, hand-written text around them, and the loop that runs the studies.

On the page, each study's section sits between two marker lines:

    <!-- sqref study NAME: begin -->
    (the study's markdown, then one blank line)
    <!-- sqref study NAME: end -->

The blank line closes a table before the end marker in every markdown
renderer. update_page replaces only what lies between a study's markers and
keeps every byte outside them: the summary and the narrative are written by
hand and no command rewrites them. A marker key may carry a label after the
name (`<!-- sqref study finetune OPENBLAS_NUM_THREADS=2: begin -->`): a second
copy of a study, run under other conditions, updated with `--label`.
"""
from __future__ import annotations

import inspect
import os
import re
import sys

from sqref.hdf5 import atomic_path
from sqref.studies.common import cluster

RESULTS_HEADER = """# sqref results

Every table on this page is produced by `sqref study all` (each section names its own `sqref study NAME`
command) on the shipped models and data, and sits between `<!-- sqref study NAME: begin/end -->` markers:
`sqref study NAME --update docs/results.md` replaces that study's section and nothing else, so text written
by hand outside the markers stays. Accuracy is on the 1,000-image test
split (one image = 0.1 point; standard error near 98% about 0.45 points) and always comes with the
prediction agreement between the compressed and the float model. Ratios: original bytes (32 bits x every
parameter of the float model) over payload bytes (packed codes, scales, zero points, biases, SVD ranks),
over the .h5 file's bytes, and over a Huffman-coded payload (an extra column for comparison with Deep
Compression; not the file format). See docs/method.md section 4 and sqref/accounting.py.

"""

MARKER_PREFIX = "<!-- sqref study "
MARKER = re.compile(r"<!-- sqref study (?P<key>[a-z0-9][a-z0-9-]*(?: [A-Za-z0-9_.=,+-]+)?): (?P<edge>begin|end) -->")
LABEL = re.compile(r"[A-Za-z0-9_.=,+-]+")


def section_key(name: str, label: str | None = None) -> str:
    """The marker key of study `name`'s section: 'NAME', or 'NAME LABEL' for a labelled copy."""
    if label is None:
        return name
    if not LABEL.fullmatch(label):
        raise ValueError(f"section label must be letters, digits and _ . = , + -, got {label!r}")
    return f"{name} {label}"


def marked(key: str, markdown: str) -> str:
    """A section with its markers: begin line, the markdown, one blank line, end line."""
    body = markdown.rstrip("\n")
    return f"{MARKER_PREFIX}{key}: begin -->\n{body}\n\n{MARKER_PREFIX}{key}: end -->\n"


def find_sections(text: str, where: str = "page") -> dict[str, tuple[int, int]]:
    """{key: (index of the begin line, index of the end line)} of every marked
    section in `text`, lines counted from 0. Raises ValueError, naming `where`
    and the line (from 1), for a malformed marker, a begin inside an open
    section, an end without its begin, a key marked twice, or a section left
    open at the end."""
    found, open_key, open_at = {}, None, None
    for index, line in enumerate(text.splitlines()):
        if not line.startswith(MARKER_PREFIX):
            continue
        at = f"{where}: line {index + 1}"
        match = MARKER.fullmatch(line.rstrip())
        if match is None:
            raise ValueError(f"{at}: malformed marker {line.strip()!r}, expected '<!-- sqref study NAME: begin -->' "
                             "or '... end -->'")
        key, edge = match["key"], match["edge"]
        if edge == "begin":
            if open_key is not None:
                raise ValueError(f"{at}: begin of {key!r} inside section {open_key!r} (opened at line {open_at + 1})")
            if key in found:
                raise ValueError(f"{at}: section {key!r} is marked twice (first at line {found[key][0] + 1})")
            open_key, open_at = key, index
        else:
            if open_key != key:
                raise ValueError(f"{at}: end of {key!r} without its begin marker"
                                 + (f" (section {open_key!r} is open)" if open_key else ""))
            found[key], open_key = (open_at, index), None
    if open_key is not None:
        raise ValueError(f"{where}: line {open_at + 1}: section {open_key!r} has no end marker")
    return found


def replace_sections(text: str, sections: dict[str, str], where: str = "page") -> str:
    """`text` with the lines between each key's markers replaced by that
    section's markdown (then one blank line); every other byte is kept. All
    keys must be marked (ValueError otherwise, before anything is replaced)."""
    found = find_sections(text, where)
    missing = [key for key in sections if key not in found]
    if missing:
        raise ValueError(f"{where}: no '<!-- sqref study {missing[0]}: begin -->' ... 'end -->' markers"
                         f"{' (and ' + str(len(missing) - 1) + ' more)' if len(missing) > 1 else ''}; "
                         f"marked: {', '.join(found) or 'none'}")
    lines = text.splitlines(keepends=True)
    # from the last section to the first, so earlier line indices stay valid
    for key, (begin, end) in sorted(found.items(), key=lambda item: -item[1][0]):
        if key in sections:
            lines[begin + 1:end] = [sections[key].rstrip("\n") + "\n\n"]
    return "".join(lines)


def new_page(sections: dict[str, str], *, header: str = RESULTS_HEADER) -> str:
    """A whole page: `header`, then every {key: markdown} between its markers."""
    return header + "".join(marked(key, markdown) for key, markdown in sections.items())


def read_page(path) -> str:
    with open(path, encoding="utf-8", newline="") as fh:  # newline="": keep the file's line endings
        return fh.read()


def has_markers(path) -> bool:
    """Whether the file at `path` has any study marker line."""
    return any(line.startswith(MARKER_PREFIX) for line in read_page(path).splitlines())


def check_page(path, keys) -> None:
    """Raise ValueError unless the page at `path` has balanced markers for every key
    (run before a study, so a long run does not end on a page it cannot update)."""
    replace_sections(read_page(path), dict.fromkeys(keys, ""), os.fspath(path))


def update_page(path, sections: dict[str, str]) -> None:
    """Replace the marked sections {key: markdown} of the page at `path`,
    atomically (sqref.hdf5.atomic_path): the file is read again here, so
    hand edits made while a study ran are kept; on any error it is untouched."""
    text = replace_sections(read_page(path), sections, os.fspath(path))
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)


# the studies that never run on a cluster, and why (`sqref study all --workers N` runs them here, afterwards)
IN_PROCESS_ONLY = {"structural": "it measures the wall time and peak memory of child processes, which cells "
                                 "running at the same time would distort"}


def distributed_studies(studies: dict) -> list[str]:
    """The names of the studies whose cells can run on a Dask cluster: those that take
    `workers` and `scheduler` (and hand their cells to sqref.parallel.run_tasks)."""
    return [name for name, study in studies.items()
            if {"workers", "scheduler"} <= set(inspect.signature(study).parameters)]


def in_process_reason(name: str) -> str:
    """Why study `name` runs in this process only (IN_PROCESS_ONLY, or: it takes no workers)."""
    return IN_PROCESS_ONLY.get(name, "it takes no workers or scheduler")


def run_studies(studies: dict, *, progress=False, collect=None, stream=None, workers=None,
                scheduler=None) -> dict[str, str]:
    """Run each {name: study function}; returns {name: markdown}, in the order given.
    With `progress`, each study shows its own progress bar and, when there
    are several, a line 'sqref study 2/9: paper' on `stream` (stderr) first.
    `collect` (a list) goes to the tradeoff study, for its accuracy curves.
    With `workers` (one LocalCluster for all of them, sqref.studies.common.cluster) or
    `scheduler`, the distributed_studies run their cells there, one after the other, and
    then the others run in this process, after the LocalCluster has stopped (structural
    measures time and memory: IN_PROCESS_ONLY); ValueError if none can use the cluster."""
    stream = sys.stderr if stream is None else stream
    on_cluster = [] if workers is None and scheduler is None else distributed_studies(studies)
    if (workers is not None or scheduler is not None) and not on_cluster:
        name = next(iter(studies))
        raise ValueError(f"study {name!r} runs in-process only: {in_process_reason(name)}")
    order = on_cluster + [name for name in studies if name not in on_cluster]
    out = {}

    def run(name, **kwargs):
        if progress and len(studies) > 1:
            where = " (in this process)" if on_cluster and name not in on_cluster else ""
            stream.write(f"sqref study {order.index(name) + 1}/{len(studies)}: {name}{where}\n")
            stream.flush()
        if name == "tradeoff" and collect is not None:
            kwargs["collect"] = collect
        out[name] = studies[name](progress=progress, **kwargs)

    if on_cluster:
        with cluster(workers, scheduler) as address:
            for name in on_cluster:
                run(name, scheduler=address)
    for name in order[len(on_cluster):]:
        run(name)
    return {name: out[name] for name in studies}
