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
# Hostile kinds (round 2): made by someone who knows HDF5, several resealed (every sha256 and the
# manifest recomputed) so that they pass the integrity checks and reach the structural ones.
HOSTILE = ("external_link", "soft_link", "vds", "external_storage", "filter", "chunk_bomb", "unwritten",
           "attr_edit", "attr_edit_resealed", "nan_resealed")


def reseal(f):
    """Recompute every dataset's sha256 attribute and the manifest (a tamperer's move)."""
    from sqref import hdf5

    def visit(name, obj):
        # written numeric data only, and not a huge one (reading it is the attack, not the reseal)
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iuf" and obj.id.get_storage_size() \
                and obj.size < 2**24:
            obj.attrs["sha256"] = hdf5.array_sha256(obj[()])
    f.visititems(visit)
    if "manifest_sha256" in f.attrs:
        del f.attrs["manifest_sha256"]
        try:
            f.attrs["manifest_sha256"] = hdf5.manifest_sha256(f)
        except Exception:  # noqa: BLE001 - links or VDS the manifest walk cannot follow
            f.attrs["manifest_sha256"] = "0" * 64


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
        if kind in HOSTILE:
            return _hostile(f, dst, kind, datasets, paths, rng)
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


def _replace(f, name, **kwargs):
    attrs = dict(f[name].attrs)
    del f[name]
    ds = f.create_dataset(name, **kwargs)
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def _hostile(f, dst, kind, datasets, paths, rng):
    name = datasets[int(rng.integers(0, len(datasets)))]
    if kind == "external_link":
        target = rng.choice(["../victim.h5", "/etc/passwd", os.path.basename(dst)])
        del f[name]
        f[name] = h5py.ExternalLink(str(target), "/" + name)
        return f"{name} -> external link {target}"
    if kind == "soft_link":
        other = datasets[int(rng.integers(0, len(datasets)))]
        del f[name]
        f[name] = h5py.SoftLink("/" + other)
        return f"{name} -> soft link {other}"
    shape, dtype = f[name].shape, f[name].dtype
    if kind == "vds":
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(rng.choice(["missing.h5", dst]), "/" + name, shape=shape)
        attrs = dict(f[name].attrs)
        del f[name]
        ds = f.create_virtual_dataset(name, layout, fillvalue=0)
        for k, v in attrs.items():
            ds.attrs[k] = v
        return f"{name} as a virtual dataset"
    if kind == "external_storage":
        _replace(f, name, shape=shape, dtype=dtype, external=[(dst + ".raw", 0, max(1, f[name].nbytes))])
        return f"{name} in external raw storage"
    a = f[name][()]
    if kind == "filter" and a.ndim:
        _replace(f, name, data=a, chunks=True, compression=rng.choice(["lzf", "szip"]) if False else "lzf")
        reseal(f)
        return f"{name} with the lzf filter"
    if kind == "chunk_bomb" and a.ndim:
        # one gzip chunk of 8 MiB, twice sqref's 4 MiB cap (sqref.hdf5.MAX_CHUNK_BYTES), cheap to write:
        # the array fills a small part of it
        rows = -(-2**23 // (a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))))
        _replace(f, name, data=a, maxshape=(None,) * a.ndim, chunks=(rows,) + a.shape[1:], compression="gzip")
        reseal(f)
        return f"{name} in 8 MiB gzip chunks"
    if kind == "unwritten":
        _replace(f, name, shape=(2**int(rng.integers(20, 32)),), dtype="float64")
        return f"{name} as an unwritten float64 array"
    if kind in ("attr_edit", "attr_edit_resealed"):
        editable = lambda o: [k for k in o.attrs if k not in ("sha256", "manifest_sha256")]  # noqa: E731
        objs = [n for n, _ in paths if editable(f[n])]
        obj = f[objs[int(rng.integers(0, len(objs)))]] if objs and rng.random() < 0.7 else f
        keys = editable(obj)
        key = keys[int(rng.integers(0, len(keys)))]
        value = obj.attrs[key]
        if isinstance(value, (str, bytes)):
            text = value.decode() if isinstance(value, bytes) else value
            i = int(rng.integers(0, max(1, len(text))))
            obj.attrs[key] = text[:i] + chr(ord(text[i]) ^ 1 if text else 65) + text[i + 1:] if text else "x"
        else:
            a2 = np.array(value, copy=True)
            a2.reshape(-1)[0] = a2.reshape(-1)[0] + 1 if a2.size else 0
            obj.attrs[key] = a2
        if kind == "attr_edit_resealed":
            reseal(f)
        return f"attribute {key} of {obj.name} edited{' and resealed' if kind.endswith('resealed') else ''}"
    if kind == "nan_resealed" and a.dtype.kind == "f" and a.size:
        a = np.array(a, copy=True)
        a.reshape(-1)[int(rng.integers(0, a.size))] = rng.choice([np.nan, np.inf, -np.inf])
        f[name][...] = a
        reseal(f)
        return f"{name} with a NaN/Inf, resealed"
    f.attrs["format_version"] = 0
    return f"format_version 0 ({kind} not applicable to {name})"


def _fingerprint(src):
    from sqref.data import load_split
    from sqref.fileformat import load

    if os.path.basename(src).startswith("mnist"):
        return [a for split in ("train", "val", "test") for a in load_split(src, split)]
    return [a for layer in load(src).layers for a in (getattr(layer, "weight", None), getattr(layer, "bias", None))
            if a is not None]


def fuzz(sources, count, *, seed=0, workdir=None, time_limit=10.0, hostile=True, by_kind=None):
    """Run `count` variants spread over `sources`; returns counts and the crashes."""
    from sqref.data import load_split
    from sqref.fileformat import load
    from sqref.hdf5 import FileFormatError

    rng = np.random.default_rng(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="sqref-fuzz-")
    originals = {src: _fingerprint(src) for src in sources}
    counts = {"tried": 0, "loaded": 0, "rejected": 0, "crashed": 0}
    crashes = []
    for i in range(count):
        src = sources[i % len(sources)]
        kinds = MUTATIONS + HOSTILE if hostile else MUTATIONS
        kind = kinds[int(rng.integers(0, len(kinds)))]
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
            outcome = "loaded"
        except FileFormatError:
            counts["rejected"] += 1
            outcome = "rejected"
        except Exception as exc:  # noqa: BLE001 - anything else is the finding
            counts["crashed"] += 1
            crashes.append(f"{os.path.basename(src)} {kind} ({what}): {type(exc).__name__}: {exc}")
            outcome = "crashed"
        if by_kind is not None:
            by_kind.setdefault(kind, {"loaded": 0, "rejected": 0, "crashed": 0})[outcome] += 1
        if time.perf_counter() - start > time_limit:
            counts["crashed"] += 1
            crashes.append(f"{os.path.basename(src)} {kind} ({what}): took {time.perf_counter() - start:.1f}s")
        counts["tried"] += 1
        if os.path.isdir(dst):
            os.rmdir(dst)
        elif os.path.exists(dst):
            os.remove(dst)
        if os.path.exists(dst + ".raw"):
            os.remove(dst + ".raw")
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
        by_kind = {}
        counts, crashes = fuzz(sources, args.count, seed=args.seed, workdir=tmp, by_kind=by_kind)
    for kind in MUTATIONS + HOSTILE:
        c = by_kind.get(kind, {"loaded": 0, "rejected": 0, "crashed": 0})
        print(f"  {kind:20s} runs {sum(c.values()):4d}  loaded {c['loaded']:4d}  rejected {c['rejected']:4d}  "
              f"crashed {c['crashed']}")
    print(f"variants tried {counts['tried']}, loaded {counts['loaded']}, rejected with FileFormatError "
          f"{counts['rejected']}, crashed {counts['crashed']} ({time.perf_counter() - start:.0f}s, seed {args.seed})")
    for line in crashes[:20]:
        print("  CRASH", line)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
