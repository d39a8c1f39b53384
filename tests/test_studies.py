"""The greedy per-layer bit search behind the paper study's "beyond the paper"
rows, and the keep-rule study's promise not to read the test split."""
import numpy as np
import pytest

import sqref
from sqref.compress import factor_model
from sqref.data import DATA_DIR, load_split
from sqref.model import predict
from sqref.studies import tables as studies
from sqref.crossfit import KEEP_RULES
from sqref.studies.tables import greedy_bits, payload_ratio


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
    assert payload_ratio(qm) >= 40.0
    assert {layer.quant.bits for layer in qm.layers if getattr(layer, "quant", None)} == set(bits.values())


def test_exactly_one_stopping_rule(setting):
    factored, val, float_val = setting
    with pytest.raises(ValueError, match="exactly one"):
        greedy_bits(factored, val, float_val, max_drop=0.5, target_ratio=40.0)


def test_per_layer_bits_rejects_an_unknown_rule(setting):
    from sqref.studies.tables import per_layer_bits
    factored, val, _ = setting
    with pytest.raises(ValueError, match="rule must be one of max ratio, best accuracy at 50x, got 'fastest'"):
        per_layer_bits(factored, "fastest", val, progress=False)


def test_finetune_keep_study_reads_validation_only(monkeypatch):
    # a reduced run (one seed, two epochs, two halvings): every rule gets a row, the pick is
    # one of them, and the test split is never loaded
    real = studies.load_split

    def no_test(*args, split, **kwargs):
        assert split != "test", "the keep-rule study read the test split"
        return real(*args, split=split, **kwargs)

    monkeypatch.setattr(studies, "load_split", no_test)
    monkeypatch.setattr(studies, "SELECT_SEEDS", (0,))
    monkeypatch.setattr(studies, "SELECT_SETTING", (20, "2,conv1=4", 2))
    monkeypatch.setattr(studies, "CROSSFIT_SPLITS", 2)
    text = studies.finetune_keep_study(progress=False)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| keep rule")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(KEEP_RULES)
    pick = text.split("Pick: **")[1].split("**")[0]
    assert pick in KEEP_RULES
    assert "then bits **2,conv1=4 (111.7x)**" in text or "then bits **2,conv1=4,fc2=4 (103.4x)**" in text
