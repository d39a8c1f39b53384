"""HDF5 read and written safely: what every sqref file (models, data, golden files) shares.

Reading reads only what sqref's formats define: ``open_h5`` opens a regular file
(never a FIFO or device), checks its structure from HDF5 metadata before any data
is read (``check_structure``: no links, virtual datasets, external storage, unknown
filters or non-numeric types; every declared shape, chunk and the byte budget of
the whole file within the limits below), checks the format name and version and
the whole-file manifest (``manifest_sha256``: one SHA-256 over every attribute and
array in a fixed order), and ``read_array`` checks each array's own SHA-256. A
pinned hash of the file's bytes (``pinned_sha256``, ``sqref.load(path, sha256=)``)
is checked before parsing, on the very bytes parsed.

Writing (``atomic_h5``, ``atomic_text``, ``atomic_path``) builds the file in memory,
then writes a temporary file beside the destination, fsyncs it and renames it into
place; a failure or a signal removes the temporary file and leaves the destination
as it was. docs/format.md and docs/reliability.md say what this protects against.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import io
import math
import os
import signal
import stat
import tempfile
import threading

import h5py
import numpy as np

MANIFEST_ATTR = "manifest_sha256"
READ_VERSIONS = (1, 2)  # the versions of sqref's formats a reader accepts unless it says otherwise

# ---- limits, all checked from HDF5 metadata before any data is read ----
MAX_ARRAY_ELEMENTS = 2**31          # one dataset
MAX_FILE_BYTES = 2**32              # all datasets of a file, declared (uncompressed) bytes: 4 GiB
MAX_CHUNK_BYTES = 2**22             # one chunk of a chunked dataset: 4 MiB (bounds one decompression)
MAX_CHUNKS = 2**20                  # chunks in one dataset
MAX_FILTERED_BYTES = 2**28          # all compressed (filtered) datasets of a file, declared bytes: 256 MiB
MAX_OBJECTS = 100_000               # groups + datasets
MAX_ATTRS = 64                      # attributes on one object
MAX_ATTR_ELEMENTS = 1024            # elements of one attribute
MAX_ATTR_BYTES = 2**20              # bytes of one attribute (the JSON `meta` is the largest)
MAX_NDIM = 4
ALLOWED_FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                   h5py.h5z.FILTER_FLETCHER32: "fletcher32"}
ALLOWED_DTYPES = {"float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64"}


class FileFormatError(ValueError):
    """A file is not a valid sqref file: the message names the file and the problem."""


class WriteError(OSError):
    """Writing an output failed for a reason of the environment (disk full, I/O error):
    the destination is as it was and no temporary file is left. One line."""


# --------------------------------------------------------------------------
# hashes
# --------------------------------------------------------------------------
def _le_bytes(a: np.ndarray):
    """The array's bytes in C order, little-endian, without a copy when already so."""
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    a = np.ascontiguousarray(a) if a.ndim else a.reshape(1)
    return memoryview(a).cast("B")


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order, little-endian."""
    return hashlib.sha256(_le_bytes(a)).hexdigest()


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks: what `sha256sum` prints."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_hex(sha256) -> str:
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise ValueError(f"expected SHA-256 must be 64 hexadecimal digits, got {sha256!r}")
    return sha256.lower()


_PINS: contextvars.ContextVar = contextvars.ContextVar("sqref_pins", default=())


def active_pins(path, sha256=None) -> list[str]:
    """The SHA-256s the bytes of `path` must have: those of the active pinned_sha256
    contexts for its real path, and `sha256` when given."""
    pins = [h for p, h in _PINS.get() if p == os.path.realpath(os.fspath(path))]
    return pins + [_check_hex(sha256)] if sha256 is not None else pins


@contextlib.contextmanager
def pinned_sha256(path, sha256: str):
    """While active, any sqref file read from `path` (same real path) must have
    this SHA-256 of its bytes (`--expect-sha256`); like pip's hash-checking mode."""
    token = _PINS.set((*_PINS.get(), (os.path.realpath(os.fspath(path)), _check_hex(sha256))))
    try:
        yield
    finally:
        _PINS.reset(token)


def _feed(h, *parts: bytes) -> None:
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)


def _attr_bytes(value) -> bytes:
    """Canonical bytes of an attribute value: a type tag, then the value."""
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    a = np.asarray(value)
    if a.dtype.kind in "OUS":
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass") for v in a.reshape(-1)]
        return b"t" + repr(a.shape).encode() + b"".join(len(v).to_bytes(8, "little") + v for v in items)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    return b"a" + dt.str.encode() + repr(a.shape).encode() + bytes(_le_bytes(a))


def _sorted_objects(f):
    """Every group and dataset as (path, object), root first, depth-first in sorted name order.
    Only called after _check_structure (hard links only, no cycles)."""
    stack = [("/", f)]
    while stack:
        path, obj = stack.pop()
        yield path, obj
        if isinstance(obj, h5py.Group):
            for name in sorted(obj, reverse=True):
                stack.append((path.rstrip("/") + "/" + name, obj[name]))


def manifest_sha256(f) -> str:
    """SHA-256 over every attribute (except the manifest itself) and every
    dataset (path, dtype, shape, bytes) of an open file, in canonical order.
    Datasets are read one at a time, so memory is the largest one."""
    h = hashlib.sha256(b"sqref-manifest-v1\0")
    for path, obj in _sorted_objects(f):
        is_ds = isinstance(obj, h5py.Dataset)
        _feed(h, b"D" if is_ds else b"G", path.encode("utf-8", "surrogatepass"))
        for key in sorted(obj.attrs):
            if path == "/" and key == MANIFEST_ATTR:
                continue
            _feed(h, b"A", key.encode("utf-8", "surrogatepass"), _attr_bytes(obj.attrs[key]))
        if is_ds:
            a = obj[()]
            dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
            _feed(h, dt.str.encode(), repr(a.shape).encode())
            h.update(_le_bytes(a))
            del a
    return h.hexdigest()


# --------------------------------------------------------------------------
# structure: what the format allows, checked from metadata before any data read
# --------------------------------------------------------------------------
def _check_dtype(dt, what, where):
    if dt.fields is not None or h5py.check_vlen_dtype(dt) is not None or h5py.check_enum_dtype(dt) is not None \
            or h5py.check_ref_dtype(dt) is not None or dt.kind not in "iuf" or dt.subdtype is not None:
        raise FileFormatError(f"{where}: {what} has type {dt}, not a plain number type (compound, variable-length, "
                              "enum, reference and string datasets are not part of the format)")


def _check_attrs(obj, path, where):
    names = list(obj.attrs)
    if len(names) > MAX_ATTRS:
        raise FileFormatError(f"{where}: {path} has {len(names)} attributes, more than {MAX_ATTRS}")
    for name in names:
        aid = h5py.h5a.open(obj.id, name.encode("utf-8", "surrogatepass"))
        dt, shape = aid.dtype, aid.shape
        if shape is None:
            continue  # a null attribute reads as an empty value; validated by whoever uses it
        n = math.prod(shape)
        string = h5py.check_string_dtype(dt) is not None
        if not string:
            if dt.kind == "S":
                string = True
            else:
                _check_dtype(dt, f"attribute {name!r} of {path}", where)
        if n > MAX_ATTR_ELEMENTS or aid.get_storage_size() > MAX_ATTR_BYTES:
            raise FileFormatError(f"{where}: attribute {name!r} of {path} declares {n} elements "
                                  f"({aid.get_storage_size()} bytes), more than the format allows")


def _check_dataset(ds, path, where, file_size):
    """Returns (declared bytes, whether filtered)."""
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise FileFormatError(f"{where}: dataset {path} is a virtual dataset (data from other files is refused)")
    if dcpl.get_external_count():
        raise FileFormatError(f"{where}: dataset {path} keeps its data in external files (refused)")
    _check_dtype(ds.dtype, f"dataset {path}", where)
    shape = ds.shape
    if shape is None or len(shape) > MAX_NDIM:
        raise FileFormatError(f"{where}: dataset {path} has shape {shape}, expected at most {MAX_NDIM} dimensions")
    n = math.prod(shape)
    if n > MAX_ARRAY_ELEMENTS:
        raise FileFormatError(f"{where}: dataset {path} declares shape {shape}, larger than {MAX_ARRAY_ELEMENTS} elements")
    nbytes = n * ds.dtype.itemsize
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    for code in filters:
        if code not in ALLOWED_FILTERS:
            raise FileFormatError(f"{where}: dataset {path} uses HDF5 filter {code}; only gzip, shuffle and "
                                  "fletcher32 are allowed")
    if layout == h5py.h5d.CHUNKED:
        chunks = ds.chunks
        chunk_bytes = math.prod(chunks) * ds.dtype.itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise FileFormatError(f"{where}: dataset {path} has chunks {chunks} of {chunk_bytes} bytes, more than "
                                  f"{MAX_CHUNK_BYTES}")
        expected = math.prod(-(-s // c) for s, c in zip(shape, chunks))
        if expected > MAX_CHUNKS:
            raise FileFormatError(f"{where}: dataset {path} has {expected} chunks, more than {MAX_CHUNKS}")
        if n and ds.id.get_num_chunks() != expected:
            raise FileFormatError(f"{where}: dataset {path} has {ds.id.get_num_chunks()} of its {expected} chunks "
                                  "written (unwritten data is not part of the format)")
    elif filters:
        raise FileFormatError(f"{where}: dataset {path} has filters without chunks")
    else:
        stored = ds.id.get_storage_size()
        if stored != nbytes:
            raise FileFormatError(f"{where}: dataset {path} declares {nbytes} bytes but stores {stored} "
                                  "(unwritten or truncated data)")
        offset = ds.id.get_offset() if layout == h5py.h5d.CONTIGUOUS and n else None
        if offset is not None and offset + nbytes > file_size:
            raise FileFormatError(f"{where}: dataset {path} ends at byte {offset + nbytes}, past the end of the "
                                  f"{file_size}-byte file (truncated)")
    return nbytes, bool(filters)


def check_structure(f, where: str, file_size: int) -> None:
    """Refuse anything the format does not define, from metadata only: links
    other than hard links (soft, external, user-defined), an object reachable
    twice, committed datatypes, virtual datasets, external raw storage, filters
    other than gzip/shuffle/fletcher32, non-numeric dataset types, chunks over
    MAX_CHUNK_BYTES, unwritten data, and files whose datasets declare more than
    MAX_FILE_BYTES (MAX_FILTERED_BYTES when compressed)."""
    seen = {h5py.h5o.get_info(f.id).addr}
    total = filtered = 0
    stack = [("/", f)]
    while stack:
        path, group = stack.pop()
        _check_attrs(group, path, where)
        for name in group:
            child = path.rstrip("/") + "/" + name
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                kind = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}.get(type(link), "a link")
                raise FileFormatError(f"{where}: {child} is {kind} (only plain groups and datasets are allowed)")
            obj = group[name]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                raise FileFormatError(f"{where}: {child} is a second link to an object already in the file")
            seen.add(addr)
            if len(seen) > MAX_OBJECTS:
                raise FileFormatError(f"{where}: more than {MAX_OBJECTS} objects")
            if isinstance(obj, h5py.Group):
                stack.append((child, obj))
            elif isinstance(obj, h5py.Dataset):
                _check_attrs(obj, child, where)
                nbytes, is_filtered = _check_dataset(obj, child, where, file_size)
                total += nbytes
                filtered += nbytes if is_filtered else 0
                if total > MAX_FILE_BYTES or filtered > MAX_FILTERED_BYTES:
                    raise FileFormatError(f"{where}: the datasets declare more than {MAX_FILE_BYTES} bytes "
                                          f"({MAX_FILTERED_BYTES} when compressed)")
            else:
                raise FileFormatError(f"{where}: {child} is a {type(obj).__name__}, not a group or dataset")


# --------------------------------------------------------------------------
# arrays with checksums
# --------------------------------------------------------------------------
def write_array(group: h5py.Group, name: str, a: np.ndarray, *, compress: bool = False) -> None:
    """Write `a` with its `sha256` attribute; with `compress`, gzip in chunks of at most
    MAX_CHUNK_BYTES (what check_structure accepts on reading)."""
    a = np.asarray(a, order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    if compress and a.ndim and a.size:
        rows = max(1, min(a.shape[0], MAX_CHUNK_BYTES // max(1, a[:1].nbytes)))
        ds = group.create_dataset(name, data=a, chunks=(rows, *a.shape[1:]), compression="gzip", shuffle=True)
    else:
        ds = group.create_dataset(name, data=a)
    ds.attrs["sha256"] = array_sha256(a)


def _dataset(group, name, where):
    if group.get(name, getlink=True) is None:
        raise FileFormatError(f"{where}: missing dataset {name!r}")
    ds = group[name]
    if not isinstance(ds, h5py.Dataset):
        raise FileFormatError(f"{where}: {name!r} is not a dataset")
    return ds


def read_array(group: h5py.Group, name: str, where: str, *, dtypes=None, shape=None) -> np.ndarray:
    """Read dataset `name`: its dtype, and its shape when `shape` is given (a
    tuple, None for any size on that axis), are checked before the read; its
    checksum after."""
    ds = _dataset(group, name, where)
    dtype = str(ds.dtype)
    if dtype not in (dtypes or ALLOWED_DTYPES):
        raise FileFormatError(f"{where}: dataset {name!r} has dtype {dtype}, expected one of {sorted(dtypes or ALLOWED_DTYPES)}")
    if ds.shape is None or math.prod(ds.shape) > MAX_ARRAY_ELEMENTS:
        raise FileFormatError(f"{where}: dataset {name!r} declares shape {ds.shape}, larger than {MAX_ARRAY_ELEMENTS} elements")
    if shape is not None and (len(ds.shape) != len(shape) or any(e is not None and e != s for s, e in zip(ds.shape, shape))):
        raise FileFormatError(f"{where}: dataset {name!r} has shape {ds.shape}, expected {shape}")
    expected = ds.attrs.get("sha256")
    if isinstance(expected, bytes):
        expected = expected.decode(errors="replace")
    if not isinstance(expected, str):
        raise FileFormatError(f"{where}: dataset {name!r} has no sha256 attribute")
    a = ds[()]
    if array_sha256(a) != expected:
        raise FileFormatError(f"{where}: checksum mismatch in dataset {name!r} (the file is corrupted or was modified)")
    return a


def dataset_shape(group, name, where, *, dtypes) -> tuple:
    """A dataset's declared shape (and dtype check), without reading it."""
    ds = _dataset(group, name, where)
    if str(ds.dtype) not in dtypes:
        raise FileFormatError(f"{where}: dataset {name!r} has dtype {ds.dtype}, expected one of {sorted(dtypes)}")
    return tuple(ds.shape)


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_blocked():
    """Defer SIGINT/SIGTERM (delivered when the block ends) around cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def check_destination(path, *, overwrite: bool) -> str:
    """The checks every writer makes, one-line FileFormatError (a ValueError) each: not a
    dangling symbolic link, a directory, a FIFO, socket or device; in an existing, writable
    directory; no existing file unless ``overwrite`` (the commands' --force)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.islink(path) and not os.path.exists(path):
        raise FileFormatError(f"output {path} is a dangling symbolic link; refusing to write through it")
    if os.path.isdir(path):
        raise FileFormatError(f"output {path} is a directory; give a file path")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise FileFormatError(f"output {path} is not a regular file (a FIFO, socket or device); refusing to "
                              "write to it")
    if not os.path.isdir(directory):
        raise FileFormatError(f"output {path}: directory {directory} does not exist")
    if os.path.exists(path) and not overwrite:
        raise FileFormatError(f"output {path} already exists; pass --force (overwrite=True) to replace it")
    if not os.access(directory, os.W_OK):
        raise FileFormatError(f"output {path}: directory {directory} is not writable")
    return path


def _write_error(exc: OSError, path) -> WriteError:
    reason = exc.strerror or str(exc).splitlines()[0] or type(exc).__name__
    return WriteError(exc.errno or errno.EIO, f"{reason[:1].lower()}{reason[1:]} writing {os.fspath(path)}")


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = False):
    """Yield a temporary path beside `path`; when the body succeeds, fsync the
    temporary file and rename it onto `path`; on any error or signal delete it.
    The destination is therefore either untouched or complete, never partial.
    An OSError of the environment (disk full, I/O error) becomes a WriteError."""
    path = check_destination(path, overwrite=overwrite)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        check_destination(path, overwrite=overwrite)  # still a regular file (or absent) just before the rename
        os.replace(tmp, path)
        tmp = None
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except (WriteError, FileFormatError):
        raise
    except OSError as exc:
        raise _write_error(exc, path) from None
    finally:
        if tmp is not None:
            with _signals_blocked(), contextlib.suppress(OSError):
                os.remove(tmp)


def write_bytes_atomic(path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` through atomic_path (one write call, then fsync)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            view = memoryview(data)
            while view:
                view = view[os.write(fh.fileno(), view):]


def _existing_format(path):
    """The `format` attribute of an existing sqref HDF5 file at `path`, else None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return None
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
        return fmt.decode(errors="replace") if isinstance(fmt, bytes) else fmt if isinstance(fmt, str) else None
    except Exception:  # noqa: BLE001 - an unreadable file has no sqref format
        return None


_MEMORY_FILES = iter(range(1 << 62))


@contextlib.contextmanager
def atomic_h5(path, *, overwrite: bool = False):
    """Yield an h5py.File built in memory (core driver, no backing store); when
    the body succeeds, add the manifest, then write the bytes to `path` with
    atomic_path. A full disk is then an ordinary WriteError, never a crash
    inside HDF5. Refuses to replace an existing sqref file of another format
    (a data file is never replaced by a model, whatever the caller checked)."""
    path = check_destination(path, overwrite=overwrite)
    f = h5py.File(f"sqref-memory-{os.getpid()}-{next(_MEMORY_FILES)}.h5", "w", driver="core", backing_store=False)
    try:
        yield f
        fmt = f.attrs.get("format")
        old = _existing_format(path) if os.path.exists(path) else None
        if old is not None and old != fmt:
            raise FileFormatError(f"{path}: is a {old} file; refusing to replace it with a {fmt} file")
        f.attrs[MANIFEST_ATTR] = manifest_sha256(f)
        f.flush()
        data = f.id.get_file_image()
    finally:
        f.close()
    write_bytes_atomic(path, data, overwrite=overwrite)


def atomic_text(path, text: str, *, overwrite: bool = False) -> None:
    """Write a text file atomically (see atomic_path)."""
    write_bytes_atomic(path, text.encode(), overwrite=overwrite)


# --------------------------------------------------------------------------
# opening a file for reading
# --------------------------------------------------------------------------
def open_regular(path, expected: str, error=None):
    """(binary file object, size) for `path`, which must be a regular file: a
    missing file, a directory, a FIFO, socket or device (refused without
    blocking on it) and an unreadable file raise `error` (FileFormatError by
    default) in one line naming the path and `expected`, e.g. "a sqref file"."""
    error = error or FileFormatError
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected {expected}") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: is a directory, expected {expected}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is not a regular file (a FIFO, socket or device)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _open_source(path, sha256):
    """A binary file object for `path`, which must be a regular file (a FIFO or
    device is refused without blocking). With a pinned SHA-256, the bytes are
    read once, hashed, and parsed from memory: what was checked is what is read."""
    fh, size = open_regular(path, "a sqref file")
    pins = active_pins(path, sha256)
    if not pins:
        return fh, size
    with fh:
        data = fh.read()
    actual = hashlib.sha256(data).hexdigest()
    for expected in pins:
        if actual != expected:
            raise FileFormatError(f"{path}: SHA-256 {actual} does not match the expected {expected}")
    return io.BytesIO(data), len(data)


def attr_text(value):
    """An attribute as text: bytes decoded (invalid UTF-8 replaced), anything else as it is."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@contextlib.contextmanager
def open_h5(path, expected_format: str, *, sha256=None, versions=READ_VERSIONS, verify_manifest=True):
    """Open an existing sqref HDF5 file for reading, with clear errors for a
    missing file, a directory, a FIFO or device, a non-HDF5 or truncated file,
    a file of another format or version, and anything check_structure refuses.
    `sha256` pins the file's bytes (as do active `pinned_sha256` contexts).
    The manifest is verified here unless `verify_manifest=False` (the caller then
    calls verify_manifest itself, after checking declared shapes)."""
    path = os.fspath(path)
    source, size = _open_source(path, sha256)
    try:
        try:
            f = h5py.File(source, "r")
        except OSError as exc:
            raise FileFormatError(f"{path}: not a readable HDF5 file (empty, truncated or another format): "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        with f:
            try:
                check_structure(f, path, size)
                fmt = attr_text(f.attrs.get("format"))
                if not isinstance(fmt, str) or fmt != expected_format:
                    raise FileFormatError(f"{path}: not a {expected_format} file (format attribute {fmt!r})")
                version = f.attrs.get("format_version")
                if isinstance(version, np.generic) and version.dtype.kind in "iu":
                    version = version.item()
                if not isinstance(version, int) or isinstance(version, bool) or version not in versions:
                    raise FileFormatError(f"{path}: format_version {version!r} is not supported "
                                          f"(this sqref reads versions {', '.join(map(str, versions))})")
                if version >= 2 and MANIFEST_ATTR not in f.attrs:
                    raise FileFormatError(f"{path}: format_version {version} requires the {MANIFEST_ATTR} attribute")
                if verify_manifest:
                    verify_file_manifest(f, path)
                yield f
            except (OSError, KeyError, RuntimeError) as exc:
                # h5py's errors for damaged metadata or data blocks met while reading
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise FileFormatError(f"{path}: damaged HDF5 structure: {first}") from None
    finally:
        source.close()


def verify_file_manifest(f, where) -> None:
    """Check the root `manifest_sha256` when the file has one (required from version 2)."""
    if MANIFEST_ATTR not in f.attrs:
        return
    expected = attr_text(f.attrs[MANIFEST_ATTR])
    if not isinstance(expected, str) or manifest_sha256(f) != expected:
        for path, obj in _sorted_objects(f):  # name the array when its own checksum shows it
            if isinstance(obj, h5py.Dataset) and attr_text(obj.attrs.get("sha256")) != array_sha256(obj[()]):
                raise FileFormatError(f"{where}: checksum mismatch in dataset {path.rsplit('/', 1)[-1]!r} at {path} "
                                      "(the file is corrupted or was modified)")
        raise FileFormatError(f"{where}: manifest checksum mismatch: an attribute or array was changed "
                              "(the file is corrupted or was modified)")


# --------------------------------------------------------------------------
# attributes
# --------------------------------------------------------------------------
def int_attr(obj, key: str, where: str, *, allowed=None, lo=None, hi=None) -> int:
    """A scalar integer attribute (not a bool), checked against `allowed` or [lo, hi] when given."""
    value = obj.attrs.get(key)
    if isinstance(value, np.ndarray) and value.shape == (1,) and value.dtype.kind in "iu":
        value = value[0]
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, int) or isinstance(value, bool) or (allowed is not None and value not in allowed) \
            or (lo is not None and value < lo) or (hi is not None and value > hi):
        expected = (f"one of {sorted(allowed)}" if allowed is not None
                    else f"an integer in [{lo}, {hi}]" if lo is not None or hi is not None else "an integer")
        raise FileFormatError(f"{where}: attribute {key!r} = {value!r}, expected {expected}")
    return value


def str_attr(obj, key: str, where: str) -> str:
    """A string attribute (bytes are decoded)."""
    value = attr_text(obj.attrs.get(key))
    if not isinstance(value, str):
        raise FileFormatError(f"{where}: missing or non-string attribute {key!r}")
    return value
