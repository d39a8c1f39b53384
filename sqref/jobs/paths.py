"""Where a job may write: output-path checks made before any work, default output names, and
PNG figures written atomically. A refused path is a one-line ValueError naming it."""
from __future__ import annotations

import os

from sqref.fileformat import atomic_path


def check_output_path(out, inputs=(), *, force: bool = False) -> str:
    """Refuse to write over an input file, or over an existing file unless ``force``."""
    out = os.fspath(out)
    for path in inputs:
        if path is None:
            continue
        path = os.fspath(path)
        same = os.path.exists(path) and os.path.exists(out) and os.path.samefile(path, out)
        if same or os.path.abspath(path) == os.path.abspath(out):
            raise ValueError(f"output {out} is the input file; refusing to overwrite it")
    if os.path.exists(out) and not force:
        raise ValueError(f"output {out} already exists; pass --force to replace it")
    if os.path.isdir(out):
        raise ValueError(f"output {out} is a directory; give a file path")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise ValueError(f"output {out}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"output {out}: directory {directory} is not writable")
    return out


def default_output(model_path, tag: str) -> str:
    """'lenet5.h5', 'q8' -> 'lenet5.q8.h5', in the current directory."""
    root, _ = os.path.splitext(os.path.basename(os.fspath(model_path)))
    return f"{root}.{tag}.h5"


def plot_paths(plot, *, inputs=(), force: bool = False) -> tuple[str, str] | None:
    """The two figures of --plot FILE.png: FILE.png and FILE-errors.png, checked before any work."""
    if not plot:
        return None
    plot = os.fspath(plot)
    if not plot.lower().endswith(".png"):
        raise ValueError(f"--plot {plot}: expected a .png file name")
    root = plot[:-4]
    return tuple(check_output_path(p, inputs, force=force) for p in (plot, f"{root}-errors.png"))


def save_figure(fig, path) -> None:
    """Write a PNG atomically (the target was checked by check_output_path)."""
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
