"""The greedy per-layer bit search behind the paper study's "beyond the paper" rows."""
import numpy as np
import pytest

import sqref
from sqref.compress import factor_model
from sqref.data import DATA_DIR, load_split
from sqref.model import predict
from sqref.studies import _payload_ratio, greedy_bits


@pytest.fixture(scope="module")
def setting():
    model = sqref.load(DATA_DIR / "lenet300.h5")
    val = load_split(split="val")
    return factor_model(model, rank=30)[0], val, predict(model, val[0])


def test_max_drop_rule_stays_within_the_budget(setting):
    factored, val, float_val = setting
    bits, qm = greedy_bits(factored, val, float_val, max_drop=0.5, bias_bits=16)
    drop = 100 * (np.mean(float_val == val[1]) - np.mean(predict(qm, val[0]) == val[1]))
    assert drop <= 0.5
    assert min(bits.values()) < 8  # it did lower something


def test_target_ratio_rule_reaches_the_ratio(setting):
    factored, val, float_val = setting
    bits, qm = greedy_bits(factored, val, float_val, target_ratio=40.0, bias_bits=16)
    assert _payload_ratio(qm) >= 40.0
    assert {layer.quant.bits for layer in qm.layers if getattr(layer, "quant", None)} == set(bits.values())


def test_exactly_one_stopping_rule(setting):
    factored, val, float_val = setting
    with pytest.raises(ValueError, match="exactly one"):
        greedy_bits(factored, val, float_val, max_drop=0.5, target_ratio=40.0)


def test_per_layer_bits_rejects_an_unknown_rule(setting):
    from sqref.studies import per_layer_bits
    factored, val, _ = setting
    with pytest.raises(ValueError, match="rule must be one of max ratio, best accuracy at 50x, got 'fastest'"):
        per_layer_bits(factored, "fastest", val, progress=False)
