"""File fuzzer: damaged and hostile variants of sqref's own files.

Used by tests/test_reliability.py (a reduced count in CI) and runnable on
its own for the full study quoted in docs/reliability.md:

    python tests/fuzz_files.py --count 1000

Every variant must either load correctly (only possible when the damage
missed everything that matters, e.g. a flipped byte in unused padding) or
fail with sqref's own FileFormatError naming the problem. Anything else is
a crash: another exception type, a hang, or a huge allocation.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np

MUTATIONS = ("flip", "truncate", "delete", "rename_attr", "retype", "huge_shape", "bits", "version", "garbage",
             "empty", "directory", "attr_value")


def _all_paths(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append((n, isinstance(o, h5py.Dataset))))
    return names


def make_variant(src, dst, kind, rng):
    """Write one damaged copy of `src` at `dst` (or a directory there); returns a description."""
    data = open(src, "rb").read()
    if kind == "flip":
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(buf)))
            buf[i] ^= 1 << int(rng.integers(0, 8))
        open(dst, "wb").write(bytes(buf))
        return "byte flips"
    if kind == "truncate":
        n = int(rng.integers(0, len(data)))
        open(dst, "wb").write(data[:n])
        return f"truncated at {n}"
    if kind == "garbage":
        open(dst, "wb").write(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes())
        return "random bytes"
    if kind == "empty":
        open(dst, "wb").close()
        return "empty file"
    if kind == "directory":
        os.mkdir(dst)
        return "a directory"
    shutil.copyfile(src, dst)
    paths = _all_paths(dst)
    with h5py.File(dst, "r+") as f:
        if kind == "delete":
            name, _ = paths[int(rng.integers(0, len(paths)))]
            del f[name]
            return f"deleted {name}"
        if kind == "rename_attr":
            objs = [f] + [f[n] for n, _ in paths]
            obj = objs[int(rng.integers(0, len(objs)))]
            keys = list(obj.attrs)
            if not keys:
                return "no attribute to rename"
            key = keys[int(rng.integers(0, len(keys)))]
            obj.attrs[key + "_x"] = obj.attrs[key]
            del obj.attrs[key]
            return f"renamed attribute {key} of {obj.name}"
        datasets = [n for n, is_ds in paths if is_ds]
        if kind == "retype":
            name = datasets[int(rng.integers(0, len(datasets)))]
            a = f[name][()]
            del f[name]
            new = rng.choice(["float16", "int64", "uint8", "float64", "S4"])
            f[name] = np.zeros(a.shape, dtype=new) if new != "S4" else np.array([b"abcd"] * max(a.size, 1))
            return f"{name} as {new}"
        if kind == "huge_shape":
            name = datasets[int(rng.integers(0, len(datasets)))]
            attrs = dict(f[name].attrs)
            del f[name]
            ds = f.create_dataset(name, shape=(2**20, 2**20), dtype="float32", chunks=(1, 1024))  # 2**40 elements, unwritten
            for k, v in attrs.items():
                ds.attrs[k] = v
            return f"{name} declared as 2**40 elements"
        if kind == "bits":
            groups = [f[n] for n, is_ds in paths if not is_ds and n.endswith("quant")]
            if not groups:
                f.attrs["format_version"] = -1
                return "format_version -1 (no quantized layer)"
            g = groups[int(rng.integers(0, len(groups)))]
            value = int(rng.choice([-1, 0, 1, 9, 64, 2**31 - 1]))
            g.attrs["bits"] = value
            return f"bits {value} in {g.name}"
        if kind == "version":
            value = rng.choice([0, 2, 99, -1])
            f.attrs["format_version"] = int(value) if rng.random() < 0.8 else "1"
            return f"format_version {f.attrs['format_version']!r}"
        if kind == "attr_value":
            groups = [f[n] for n, is_ds in paths if not is_ds and n.startswith("layers/")]
            g = groups[int(rng.integers(0, len(groups)))] if groups else f
            keys = list(g.attrs)
            key = keys[int(rng.integers(0, len(keys)))] if keys else "type"
            choices = [np.array([-5, 2**40]), "nonsense", np.float64(np.nan), np.array([], dtype=np.int64),
                       np.int64(2**62)]
            value = choices[int(rng.integers(0, len(choices)))]
            g.attrs[key] = value
            return f"{g.name} attribute {key} = {value!r}"
    raise ValueError(kind)


def _fingerprint(src):
    from sqref.data import load_split
    from sqref.fileformat import load

    if os.path.basename(src).startswith("mnist"):
        return [a for split in ("train", "val", "test") for a in load_split(src, split)]
    return [a for layer in load(src).layers for a in (getattr(layer, "weight", None), getattr(layer, "bias", None))
            if a is not None]


def fuzz(sources, count, *, seed=0, workdir=None, time_limit=10.0):
    """Run `count` variants spread over `sources`; returns counts and the crashes."""
    from sqref.data import load_split
    from sqref.fileformat import FileFormatError, load

    rng = np.random.default_rng(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="sqref-fuzz-")
    originals = {src: _fingerprint(src) for src in sources}
    counts = {"tried": 0, "loaded": 0, "rejected": 0, "crashed": 0}
    crashes = []
    for i in range(count):
        src = sources[i % len(sources)]
        kind = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
        dst = os.path.join(workdir, f"v{i}.h5")
        what = make_variant(src, dst, kind, rng)
        is_data = os.path.basename(src).startswith("mnist")
        start = time.perf_counter()
        try:
            if is_data:
                loaded = [a for split in ("train", "val", "test") for a in load_split(dst, split)]
            else:
                loaded = [a for layer in load(dst).layers for a in (getattr(layer, "weight", None),
                                                                     getattr(layer, "bias", None)) if a is not None]
            if not all(np.array_equal(a, b) for a, b in zip(loaded, originals[src])) or len(loaded) != len(originals[src]):
                raise AssertionError("loaded, but its arrays differ from the original's")
            counts["loaded"] += 1
        except FileFormatError:
            counts["rejected"] += 1
        except Exception as exc:  # noqa: BLE001 - anything else is the finding
            counts["crashed"] += 1
            crashes.append(f"{os.path.basename(src)} {kind} ({what}): {type(exc).__name__}: {exc}")
        if time.perf_counter() - start > time_limit:
            counts["crashed"] += 1
            crashes.append(f"{os.path.basename(src)} {kind} ({what}): took {time.perf_counter() - start:.1f}s")
        counts["tried"] += 1
        if os.path.isdir(dst):
            os.rmdir(dst)
        elif os.path.exists(dst):
            os.remove(dst)
    return counts, crashes


def default_sources(tmp):
    """The shipped models plus a quantized (per-channel, asymmetric, float16 bias) and an SVD-factored file."""
    import sqref
    from sqref.compress import factor_model
    from sqref.data import DATA_DIR
    from sqref.qmodel import quantize_model

    base = sqref.load(DATA_DIR / "lenet300.h5")
    q1 = os.path.join(tmp, "lenet300.q4.h5")
    sqref.save(quantize_model(base, bits=4, per_channel=True, scheme="asymmetric", bias_bits=16), q1)
    q2 = os.path.join(tmp, "lenet300.svd.h5")
    sqref.save(quantize_model(factor_model(base, rank=20)[0], bits="3,fc3=8"), q2)
    return [str(DATA_DIR / "lenet5.h5"), str(DATA_DIR / "lenet300.h5"), q1, q2, str(DATA_DIR / "mnist5k.h5")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sources = default_sources(tmp)
        start = time.perf_counter()
        counts, crashes = fuzz(sources, args.count, seed=args.seed, workdir=tmp)
    print(f"variants tried {counts['tried']}, loaded {counts['loaded']}, rejected with FileFormatError "
          f"{counts['rejected']}, crashed {counts['crashed']} ({time.perf_counter() - start:.0f}s, seed {args.seed})")
    for line in crashes[:20]:
        print("  CRASH", line)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
