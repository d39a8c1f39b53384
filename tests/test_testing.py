"""sqref.testing.assert_bit_exact: passes on identical arrays, and its failure
message carries what numpy.testing's does and a histogram of differences."""
import re

import numpy as np
import pytest

from sqref.testing import assert_bit_exact


def failure(actual, desired, **kw):
    with pytest.raises(AssertionError) as info:
        assert_bit_exact(actual, desired, **kw)
    return str(info.value)


@pytest.mark.parametrize(
    "a",
    [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.array(7, dtype=np.int64),
        np.zeros((0, 3), np.int32),
        np.float32([1.5, np.nan, -np.inf, -0.0]),
    ],
)
def test_passes_on_identical_arrays(a):
    assert_bit_exact(a, a.copy())


def test_message_counts_histogram_worst_and_first_indices():
    desired = np.arange(20, dtype=np.int64).reshape(4, 5)
    actual = desired.copy()
    actual[0, 1] += 1
    actual[1, 2] += 1
    actual[2, 3] -= 1
    actual[3, 4] += 7
    msg = failure(actual, desired, err_msg="mode=tflite")
    assert msg.startswith("Arrays are not bit-exact: mode=tflite")
    assert "mismatched elements: 4 / 20 (20%)" in msg
    assert "differences actual - desired (value: count): {+1: 2, -1: 1, +7: 1}" in msg
    assert "worst difference: +7 at index (3, 4): actual 26, desired 19" in msg
    listed = re.findall(r"^   \((\d+), (\d+)\): (-?\d+) vs (-?\d+)$", msg, flags=re.M)
    assert listed == [("0", "1", "2", "1"), ("1", "2", "8", "7"), ("2", "3", "12", "13"), ("3", "4", "26", "19")]
    assert "shape (4, 5), dtype int64" in msg


def test_message_lists_only_the_first_mismatches():
    msg = failure(np.ones(100, np.uint8), np.zeros(100, np.uint8), max_listed=3)
    assert "mismatched elements: 100 / 100 (100%)" in msg
    assert "{+1: 100}" in msg
    assert len(re.findall(r"^   \(\d+,\): 1 vs 0$", msg, flags=re.M)) == 3 and "... and 97 more" in msg


def test_unsigned_differences_do_not_wrap():
    msg = failure(np.array([0], np.uint8), np.array([255], np.uint8))
    assert "{-255: 1}" in msg and "actual 0, desired 255" in msg


def test_shape_mismatch():
    msg = failure(np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8))
    assert "shapes differ: actual (2, 3), desired (3, 2)" in msg


def test_dtype_mismatch_is_a_failure_not_a_cast():
    msg = failure(np.zeros(3, np.uint8), np.zeros(3, np.int64))
    assert "dtypes differ: actual uint8, desired int64" in msg


def test_floats_compare_bit_patterns():
    msg = failure(np.float32([-0.0, 1.0]), np.float32([0.0, 1.0]))
    assert "mismatched elements: 1 / 2" in msg
    assert "-0.0 [0x80000000] vs 0.0 [0x00000000]" in msg
    msg = failure(np.float64([1.0 + 2**-52]), np.float64([1.0]))
    assert "{+2.22045e-16: 1}" in msg


def test_scalar_mismatch():
    msg = failure(np.int32(3), np.int32(4))
    assert "mismatched elements: 1 / 1" in msg and "{-1: 1}" in msg and "shape (), dtype int32" in msg
