"""Where a job may write: output-path checks made before any work, default output names, and
PNG figures written atomically. A refused path is a one-line ValueError naming it."""
from __future__ import annotations

import os
import stat

from sqref.hdf5 import atomic_path


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file: the same real path (symlinks resolved),
    or the same inode when both exist (hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b) or os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(out, inputs=(), *, force: bool = False) -> str:
    """Refuse, with or without ``force``: an output that is any of ``inputs`` (the model, the
    data file, the golden file, ...: pass every file the command reads), a directory, a FIFO,
    socket or device, a dangling symbolic link, or a path in a missing or unwritable directory.
    Without ``force``, also refuse an existing file."""
    out = os.fspath(out)
    if not out:
        raise ValueError("output path is empty")
    for path in inputs:
        if path is None:
            continue
        if _same_file(os.fspath(path), out):
            raise ValueError(f"output {out} is the input file {os.fspath(path)}; refusing to overwrite it")
    if os.path.islink(out) and not os.path.exists(out):
        raise ValueError(f"output {out} is a dangling symbolic link; refusing to write through it")
    if os.path.isdir(out):
        raise ValueError(f"output {out} is a directory; give a file path")
    if os.path.exists(out) and not stat.S_ISREG(os.stat(out).st_mode):
        raise ValueError(f"output {out} is not a regular file (a FIFO, socket or device); refusing to write to it")
    if os.path.exists(out) and not force:
        raise ValueError(f"output {out} already exists; pass --force to replace it")
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
    """The two figures of --plot FILE.png: FILE.png and FILE-errors.png, checked before any work
    (neither may be an input, nor may the two be the same file)."""
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
