"""sqref.packing: hand-computed bytes, a Python big-integer oracle, round trips
for every k in 1..8 and awkward lengths, and bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqref import quant
from sqref.packing import code_range, pack_codes, packed_nbytes, unpack_codes


def oracle_pack(codes, bits, signed):
    """The layout as one Python integer: code i (offset-binary if signed) at bit k*i, little-endian bytes."""
    offset = 2 ** (bits - 1) if signed else 0
    stream = sum((int(q) + offset) << (bits * i) for i, q in enumerate(codes))
    return list(stream.to_bytes((bits * len(codes) + 7) // 8, "little"))


# ----------------------------------------------------------------------------- literal cases
def test_literal_bytes():
    # k = 3: [-3, 0, 3, 1] -> offset [1, 4, 7, 5]; stream bits (LSB first) 100 001 111 101 (+ 4 zero bits)
    #   byte 0 = bits 0..7 = 1,0,0,0,0,1,1,1 = 1 + 32 + 64 + 128 = 0xE1; byte 1 = 1,1,0,1,0,0,0,0 = 0x0B
    np.testing.assert_array_equal(pack_codes(np.array([-3, 0, 3, 1], np.int8), 3), [0xE1, 0x0B])
    # k = 4: [-8, 7, 0] -> [0, 15, 8]: nibbles low first: 0x F0, then 0x08 (upper nibble padding)
    np.testing.assert_array_equal(pack_codes(np.array([-8, 7, 0], np.int8), 4), [0xF0, 0x08])
    # k = 1: [-1, 0, 0, -1, 0, 0, 0, 0, 0] -> bits 0,1,1,0,1,1,1,1 | 1 -> 2+4+16+32+64+128 = 246, then 1
    np.testing.assert_array_equal(pack_codes(np.array([-1, 0, 0, -1, 0, 0, 0, 0, 0], np.int8), 1), [246, 1])
    # k = 5 unsigned: [31, 1] -> 31 | 1 << 5 = 63 in a 10-bit stream -> [63, 0]
    np.testing.assert_array_equal(pack_codes(np.array([31, 1], np.uint8), 5), [63, 0])
    # k = 8 unsigned: the bytes themselves; signed: q + 128
    np.testing.assert_array_equal(pack_codes(np.array([0, 255, 18], np.uint8), 8), [0, 255, 18])
    np.testing.assert_array_equal(pack_codes(np.array([-128, 127, 0], np.int8), 8), [0, 255, 128])
    # and back
    np.testing.assert_array_equal(unpack_codes(np.array([0xE1, 0x0B], np.uint8), 3, 4), [-3, 0, 3, 1])
    np.testing.assert_array_equal(unpack_codes(bytes([63, 0]), 5, 2, signed=False), [31, 1])


def test_packed_nbytes_literal():
    assert [packed_nbytes(n, 3) for n in (0, 1, 2, 3, 8)] == [0, 1, 1, 2, 3]  # ceil(3n / 8)
    assert packed_nbytes(1_000_003, 7) == 875_003  # 7 000 021 bits -> 875 002.6 -> 875 003 bytes
    assert packed_nbytes(10**12, 5) == 625 * 10**9  # integer arithmetic: no float rounding at this size


def test_code_range():
    assert code_range(1, signed=True) == (-1, 0) and code_range(1, signed=False) == (0, 1)
    assert code_range(4, signed=True) == (-8, 7) and code_range(8, signed=False) == (0, 255)


# ----------------------------------------------------------------------------- properties
@st.composite
def code_arrays(draw):
    bits = draw(st.integers(1, 8))
    signed = draw(st.booleans())
    lo, hi = code_range(bits, signed=signed)
    n = draw(st.sampled_from([0, 1, 7, 8, 9, 15, 17]) | st.integers(0, 120))  # long lengths: test below
    codes = draw(st.lists(st.integers(lo, hi) | st.sampled_from([lo, hi]), min_size=n, max_size=n))
    return np.array(codes, dtype=np.int8 if signed else np.uint8), bits, signed


@given(code_arrays())
def test_pack_matches_the_big_integer_oracle_and_round_trips(case):
    codes, bits, signed = case
    packed = pack_codes(codes, bits)  # signedness from the dtype
    assert packed.dtype == np.uint8 and packed.size == packed_nbytes(codes.size, bits) == (bits * codes.size + 7) // 8
    np.testing.assert_array_equal(packed, oracle_pack(codes.tolist(), bits, signed))
    back = unpack_codes(packed, bits, codes.size, signed=signed)
    assert back.dtype == codes.dtype
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip_of_a_long_awkward_length(bits):
    n = 1_000_003  # prime: the last byte is partly padding for every k but 8
    lo, hi = code_range(bits, signed=True)
    codes = np.random.default_rng(bits).integers(lo, hi + 1, n).astype(np.int8)
    packed = pack_codes(codes, bits)
    assert packed.size == (bits * n + 7) // 8
    np.testing.assert_array_equal(unpack_codes(packed, bits, n), codes)


@pytest.mark.parametrize("scheme", quant.SCHEMES)
def test_round_trip_of_quantized_codes(scheme):
    w = np.random.default_rng(0).normal(size=(3, 5, 7))
    codes, _, _ = quant.quantize(w, bits=4, alpha=2.0 if scheme == "symmetric" else None, scheme=scheme)
    signed = scheme == "symmetric"  # int8 codes in [-7, 7], or uint8 codes in [0, 15]
    back = unpack_codes(pack_codes(codes, 4), 4, codes.size, signed=signed).reshape(codes.shape)
    np.testing.assert_array_equal(back, codes)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match=r"2 codes out of range for 3-bit signed codes \[-4, 3\]: worst -9"):
        pack_codes(np.array([0, 4, -9, 1], np.int8), 3)
    with pytest.raises(ValueError, match=r"unsigned codes \[0, 15\]: worst 16 at flat index 1"):
        pack_codes(np.array([3, 16], np.uint8), 4)
    with pytest.raises(ValueError, match=r"unsigned codes \[0, 7\]: worst -1"):
        pack_codes(np.array([-1, 2], np.int8), 3, signed=False)
    for bits, error in ((0, ValueError), (9, ValueError), (2.5, TypeError), ("8", TypeError), (True, TypeError)):
        with pytest.raises(error, match=repr(bits) if error is TypeError else str(bits)):
            pack_codes(np.zeros(3, np.int8), bits)
        with pytest.raises(error, match=repr(bits) if error is TypeError else str(bits)):
            unpack_codes(np.zeros(2, np.uint8), bits, 3)
    with pytest.raises(TypeError, match="integer array"):
        pack_codes(np.zeros(3), 4)
    with pytest.raises(ValueError, match="has 3 bytes; 4 codes of 3 bits need 2"):
        unpack_codes(np.zeros(3, np.uint8), 3, 4)
    with pytest.raises(ValueError, match="has 1 bytes; 4 codes of 3 bits need 2"):
        unpack_codes(np.zeros(1, np.uint8), 3, 4)
    with pytest.raises(ValueError, match="padding bits .* not zero"):
        unpack_codes(np.array([0, 0x10], np.uint8), 3, 4)  # bit 12 is padding
    with pytest.raises(ValueError, match="n must be an int >= 0, got -1"):
        unpack_codes(np.zeros(0, np.uint8), 3, -1)
    with pytest.raises(TypeError, match="1-D uint8"):
        unpack_codes(np.zeros(2, np.int8), 3, 4)
