"""Bit packing of k-bit codes into bytes (docs/method.md section 4).

Layout: code i occupies bits [k*i, k*i + k) of one little-endian bit stream;
bit j of the stream is bit (j % 8) of byte j // 8 (LSB first). Signed codes
are stored offset-binary, q + 2**(k-1), so every stored value is in
[0, 2**k - 1]; unsigned codes (the asymmetric grid's) are stored as they are.
The last byte is zero-padded. Example, k = 3, codes [-3, 0, 3, 1]:

    offset values  1, 4, 7, 5  = 0b001, 0b100, 0b111, 0b101
    stream         5 << 9 | 7 << 6 | 4 << 3 | 1 = 0x0BE1  ->  bytes E1 0B

Size: packed_nbytes(n, k) = ceil(k * n / 8) bytes.
"""
import numpy as np

from sqref.quant import check_bits

PACK_BITS = (1, 8)


def packed_nbytes(n, bits):
    """Bytes of n packed k-bit codes: ceil(k * n / 8), in integer arithmetic."""
    bits = check_bits(bits, lo=PACK_BITS[0], hi=PACK_BITS[1])
    n = _check_count(n)
    return (bits * n + 7) // 8


def _check_count(n):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"the number of codes n must be an int >= 0, got {n!r}")
    return int(n)


def code_range(bits, *, signed):
    """(lowest, highest) code a k-bit field holds: [-2**(k-1), 2**(k-1) - 1] signed, [0, 2**k - 1] unsigned."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def pack_codes(codes, bits, *, signed=None):
    """Pack integer codes into a uint8 array, k bits each, LSB first (see the module docstring).

    Shapes: codes any shape, read in C order (n = codes.size) -> (ceil(k n / 8),) uint8.
    signed: True stores q + 2**(k-1); False stores q; None (default) follows the
    dtype (int8/int16/... signed, uint8/... unsigned).
    Raises ValueError naming the worst code when a code does not fit k bits.
    Tests: a Python big-integer oracle and hand-computed bytes (tests/test_packing.py).
    """
    bits = check_bits(bits, lo=PACK_BITS[0], hi=PACK_BITS[1])
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    if signed is None:
        signed = codes.dtype.kind == "i"
    flat = codes.reshape(-1).astype(np.int64)
    lo, hi = code_range(bits, signed=signed)
    bad = (flat < lo) | (flat > hi)
    if bad.any():
        worst = int(flat[bad][np.argmax(np.abs(flat[bad]))])
        raise ValueError(
            f"{int(bad.sum())} codes out of range for {bits}-bit {'signed' if signed else 'unsigned'} codes "
            f"[{lo}, {hi}]: worst {worst} at flat index {int(np.flatnonzero(flat == worst)[0])}"
        )
    stored = (flat - lo).astype(np.uint8)  # offset-binary for signed codes (lo = -2**(k-1)), as-is unsigned
    # (n, 8) bits of each byte LSB first; keep the low k; concatenated row by row they are the stream.
    fields = np.unpackbits(stored[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(fields.reshape(-1), bitorder="little")


def unpack_codes(packed, bits, n, *, signed=True):
    """Inverse of pack_codes: n codes from a packed uint8 buffer.

    Shapes: packed (ceil(k n / 8),) uint8 (or bytes) -> (n,) codes.
    Dtypes: int8 if signed (stored value - 2**(k-1)), uint8 if not.
    Raises ValueError if the buffer's length is not packed_nbytes(n, k) or its
    padding bits are not zero (a truncated or corrupt buffer).
    """
    bits = check_bits(bits, lo=PACK_BITS[0], hi=PACK_BITS[1])
    n = _check_count(n)
    if isinstance(packed, (bytes, bytearray, memoryview)):
        packed = np.frombuffer(packed, dtype=np.uint8)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(f"packed must be a 1-D uint8 array, got dtype {packed.dtype} and shape {packed.shape}")
    expected = packed_nbytes(n, bits)
    if packed.size != expected:
        raise ValueError(f"packed buffer has {packed.size} bytes; {n} codes of {bits} bits need {expected}")
    stream = np.unpackbits(packed, bitorder="little")
    if stream[bits * n:].any():
        raise ValueError(f"padding bits after the {n} codes of {bits} bits are not zero: corrupt buffer")
    fields = np.zeros((n, 8), dtype=np.uint8)
    fields[:, :bits] = stream[: bits * n].reshape(n, bits)
    stored = np.packbits(fields, axis=1, bitorder="little").reshape(n)
    if not signed:
        return stored
    return (stored.astype(np.int16) - 2 ** (bits - 1)).astype(np.int8)
