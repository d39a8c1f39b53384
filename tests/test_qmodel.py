"""Quantized models: file round trip, size accounting, per-layer bits."""
import h5py
import numpy as np
import pytest

import sqref
from sqref import accounting, zoo
from sqref.compress import factor_model
from sqref.hdf5 import FileFormatError
from sqref.model import Conv2d, Flatten, Linear, Model
from sqref.qmodel import parse_bits, quantize_model


def tiny_model():
    rng = np.random.default_rng(0)
    conv = Conv2d(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32))
    fc = Linear(rng.standard_normal((5, 48)).astype(np.float32), rng.standard_normal(5).astype(np.float32))
    return Model((conv, Flatten(), fc), (1, 6, 6), ("conv1", "flatten", "fc1"))


@pytest.mark.parametrize("kwargs", [
    dict(bits=4), dict(bits=3, per_channel=True), dict(bits=5, scheme="asymmetric"),
    dict(bits=2, rule="max", rounding="half_away"), dict(bits="conv=8,fc=2", bias_bits=16),
    dict(bits=6, per_channel=True, scheme="asymmetric", rule="percentile"),
])
def test_quantized_file_round_trip_is_exact(tmp_path, kwargs):
    qm = quantize_model(tiny_model(), **kwargs)
    sqref.save(qm, tmp_path / "q.h5")
    back = sqref.load(tmp_path / "q.h5")
    for a, b in zip(qm.layers, back.layers):
        if a.kind in ("conv2d", "linear"):
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)
            np.testing.assert_array_equal(a.quant.codes, b.quant.codes)
            np.testing.assert_array_equal(a.quant.scale, b.quant.scale)
            np.testing.assert_array_equal(a.quant.zero_point, b.quant.zero_point)
            np.testing.assert_array_equal(a.quant.alpha, b.quant.alpha)
            assert (a.quant.bits, a.quant.axis, a.quant.scheme, a.quant.rule, a.quant.rounding, a.quant.bias_bits) == \
                   (b.quant.bits, b.quant.axis, b.quant.scheme, b.quant.rule, b.quant.rounding, b.quant.bias_bits)
    x = np.random.default_rng(1).random((4, 1, 6, 6), dtype=np.float32)
    np.testing.assert_array_equal(sqref.run(qm, x), sqref.run(back, x))
    with h5py.File(tmp_path / "q.h5", "r") as f:
        assert "weight" not in f["layers/0000"]  # only the packed codes are stored


def test_payload_counts_every_byte_by_the_formula(tmp_path):
    qm = quantize_model(tiny_model(), bits="conv=3,fc=5", bias_bits=16)
    s = accounting.sizes(qm, None)
    conv, fc = s["layers"]
    # conv: 27 codes x 3 bits = 81 bits -> 11 bytes; 1 scale (4 B); symmetric: no zero point; 3 float16 biases (6 B)
    assert (conv["codes_bytes"], conv["scales_bytes"], conv["zero_points_bytes"], conv["biases_bytes"]) == (11, 4, 0, 6)
    # fc: 240 codes x 5 bits = 1200 bits = 150 bytes; 1 scale; 5 float16 biases
    assert (fc["codes_bytes"], fc["scales_bytes"], fc["biases_bytes"]) == (150, 4, 10)
    assert s["total"]["payload_bytes"] == 11 + 4 + 6 + 150 + 4 + 10
    assert s["total"]["original_bytes"] == 4 * (27 + 3 + 240 + 5)
    pc = accounting.sizes(quantize_model(tiny_model(), bits=4, per_channel=True, scheme="asymmetric"))
    # per channel asymmetric: 3 (conv) and 5 (fc) scales of 4 B and zero points of 1 B
    assert pc["layers"][0]["scales_bytes"] == 12 and pc["layers"][0]["zero_points_bytes"] == 3
    assert pc["layers"][1]["scales_bytes"] == 20 and pc["layers"][1]["zero_points_bytes"] == 5


def test_svd_ranks_and_original_size_are_counted():
    model = zoo.lenet300(seed=0)
    factored, reports = factor_model(model, rank=20)
    assert [r["kept_whole"] for r in reports] == [False, False, True]  # fc3 (10x100): break-even rank is 9
    qm = quantize_model(factored, bits=8)
    s = accounting.sizes(qm)
    assert s["total"]["original_params"] == 266_610
    assert s["total"]["rank_bytes"] == 8  # two factored layers, an int32 rank each
    codes = 20 * (784 + 300) + 20 * (300 + 100) + 100 * 10
    biases = 300 + 100 + 10
    assert s["total"]["payload_bytes"] == codes + 4 * 5 + 4 * biases + 8


def test_huffman_bits_literal():
    # counts 4, 2, 1, 1 -> code lengths 1, 2, 3, 3 -> 4 + 4 + 3 + 3 = 14 bits
    assert accounting.huffman_bits(np.array([0, 0, 0, 0, 1, 1, 2, 3])) == 14
    assert accounting.huffman_bits(np.zeros(5, np.int8)) == 5


@pytest.mark.parametrize("spec, expected", [
    ("4", {"conv1": 4, "fc1": 4}), (4, {"conv1": 4, "fc1": 4}), ("conv=8,fc=2", {"conv1": 8, "fc1": 2}),
    ("8,fc1=3", {"conv1": 8, "fc1": 3}),
])
def test_parse_bits(spec, expected):
    m = tiny_model()
    assert parse_bits(spec, m.names, tuple(layer.kind for layer in m.layers)) == expected


@pytest.mark.parametrize("spec, message", [
    ("fc=4", "gives no width for conv1"), ("9", "must be an integer in"), ("conv=x", "'x'"),
    ("8,fc9=3", "'fc9' in bits spec"), (True, "bits must be an int"),
])
def test_parse_bits_errors(spec, message):
    m = tiny_model()
    with pytest.raises(ValueError, match=message):
        parse_bits(spec, m.names, tuple(layer.kind for layer in m.layers))


def test_tampered_bits_or_codes_are_refused(tmp_path):
    sqref.save(quantize_model(tiny_model(), bits=4), tmp_path / "q.h5")
    for attr, value, message in (("bits", 9, "attribute 'bits' = 9, expected an integer in"), ("bits", 3, "packed bytes"),
                                 ("shape", np.array([2**40, 2]), "shape attribute")):
        bad = tmp_path / f"bad_{attr}_{value if np.isscalar(value) else 'big'}.h5"
        bad.write_bytes((tmp_path / "q.h5").read_bytes())
        with h5py.File(bad, "r+") as f:
            f["layers/0002/quant"].attrs[attr] = value
        with pytest.raises(FileFormatError, match=message):
            sqref.load(bad)
