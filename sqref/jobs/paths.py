"""Where a job may write: output-path checks made before any work, default output names, and
PNG figures written atomically. A refused path is a one-line ValueError naming it."""
from __future__ import annotations

import os

from sqref.hdf5 import atomic_path, check_destination


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
    return check_destination(out, overwrite=force)


def onnx_data_files(model_path) -> list[str]:
    """The external data files an ONNX model names (torch.onnx writes MODEL.onnx.data beside it),
    or [] (not an ONNX model, or not readable: its import says why)."""
    model_path = os.fspath(model_path)
    if not model_path.lower().endswith(".onnx") or not os.path.isfile(model_path):
        return []
    try:
        import onnx

        proto = onnx.load(model_path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any failure is reported by the import itself
        return []
    base = os.path.dirname(os.path.abspath(model_path))
    return sorted({os.path.join(base, entry.value) for tensor in proto.graph.initializer
                   if tensor.data_location == onnx.TensorProto.EXTERNAL
                   for entry in tensor.external_data if entry.key == "location"})


def check_not_model_data(out, model_path) -> None:
    """Refuse an output that is one of an ONNX model's external data files (an input too);
    only an existing file can be one, so nothing is parsed otherwise."""
    if os.path.lexists(out):
        for path in onnx_data_files(model_path):
            if _same_file(path, out):
                raise ValueError(f"output {out} is the input file {path} (the weights of {os.fspath(model_path)}); "
                                 "refusing to overwrite it")


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
