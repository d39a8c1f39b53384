"""assert_bit_exact: one comparison of two arrays, bit for bit, and the message that says how they differ
(sqref.testing's docstring)."""
from __future__ import annotations

from collections import Counter

import numpy as np


def _fmt_index(idx):
    return "(" + ", ".join(str(int(i)) for i in idx) + ("," if len(idx) == 1 else "") + ")"


def _same_bits(a, d):
    """Elementwise bit-pattern equality of two float (or complex) arrays of one dtype."""
    if a.dtype.kind == "c":
        return _same_bits(a.real, d.real) & _same_bits(a.imag, d.imag)
    u = np.dtype(f"u{a.dtype.itemsize}")
    return np.ascontiguousarray(a).view(u) == np.ascontiguousarray(d).view(u)


def assert_bit_exact(actual, desired, *, err_msg="", max_listed=5):
    """Assert two arrays are identical to the last bit, as numpy.testing.assert_array_equal but stricter.

    Shapes and dtypes must be equal (no broadcasting, no casting: cast one
    side explicitly). Integers compare exactly; floats compare by bit pattern.
    Raises AssertionError whose message gives the mismatch count and fraction,
    the histogram of differences, the worst difference and the first
    ``max_listed`` mismatching indices with both values.
    """
    a = np.asarray(actual)
    d = np.asarray(desired)
    head = "Arrays are not bit-exact" + (f": {err_msg}" if err_msg else "")
    if a.shape != d.shape:
        raise AssertionError(f"{head}\n shapes differ: actual {a.shape}, desired {d.shape}")
    if a.dtype != d.dtype:
        raise AssertionError(
            f"{head}\n dtypes differ: actual {a.dtype}, desired {d.dtype} (cast one side explicitly)"
        )
    shape = a.shape
    a, d = a.reshape(-1) if a.ndim == 0 else a, d.reshape(-1) if d.ndim == 0 else d
    if a.dtype.kind in "fc":
        same = _same_bits(a, d)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64) - d
    elif a.dtype.kind in "iub":
        same = a == d
        diff = a.astype(object) - d.astype(object)  # Python ints: no overflow, uint64 too
    else:
        same, diff = a == d, None
    if same.all():
        return
    bad = np.argwhere(~same)
    n_bad, n = len(bad), a.size
    lines = [head, f" mismatched elements: {n_bad} / {n} ({100.0 * n_bad / n:.3g}%)"]
    if diff is not None:
        dvals = [_plain(v) for v in diff[~same].tolist()]
        hist = sorted(Counter(dvals).items(), key=lambda kv: (-kv[1], _sort_key(kv[0])))
        shown = ", ".join(f"{_signed(k)}: {c}" for k, c in hist[:10])
        more = f", ... ({len(hist) - 10} more values)" if len(hist) > 10 else ""
        lines.append(f" differences actual - desired (value: count): {{{shown}{more}}}")
        mags = np.array([_magnitude(v) for v in dvals], dtype=np.float64)
        w = int(np.nanargmax(mags)) if np.any(~np.isnan(mags)) else 0
        widx = tuple(bad[w])
        lines.append(
            f" worst difference: {_signed(dvals[w])} at index {_fmt_index(widx)}: "
            f"actual {_fmt_value(a[widx])}, desired {_fmt_value(d[widx])}"
        )
    lines.append(" first mismatches (index: actual vs desired):")
    for idx in map(tuple, bad[:max_listed]):
        lines.append(f"   {_fmt_index(idx)}: {_fmt_value(a[idx])} vs {_fmt_value(d[idx])}")
    if n_bad > max_listed:
        lines.append(f"   ... and {n_bad - max_listed} more")
    lines.append(f" shape {shape}, dtype {a.dtype}")
    raise AssertionError("\n".join(lines))


def _fmt_value(x):
    """A scalar as plain Python, floats with their bit pattern (so -0.0 and NaN payloads show)."""
    if x.dtype.kind == "f":
        u = np.asarray(x).view(f"u{x.dtype.itemsize}")
        return f"{x.item()!r} [0x{int(u):0{2 * x.dtype.itemsize}x}]"
    return repr(x.item())


def _plain(v):
    return int(v) if isinstance(v, (int, np.integer)) else v


def _signed(v):
    if isinstance(v, int):
        return f"{v:+d}"
    if isinstance(v, float):
        return f"{v:+.6g}"
    return str(v)


def _magnitude(v):
    return float(abs(v)) if not (isinstance(v, float) and np.isnan(v)) else np.nan


def _sort_key(v):
    return (0, abs(v)) if isinstance(v, (int, float)) and v == v else (1, 0)


