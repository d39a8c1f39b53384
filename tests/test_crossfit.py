"""Keep rules and their cross-fitted comparison (sqref.crossfit): literal
cases, a property against the whole-split score, and shape errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from sqref.crossfit import KEEP_RULES, crossfit, stratified_half


def one_hot_logits(preds, classes=3, margin=5.0):
    z = np.zeros((len(preds), classes))
    z[np.arange(len(preds)), preds] = margin
    return z


Y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
TEACHER = one_hot_logits(Y)  # the float model is right on every image


def test_rules_pick_the_literal_epochs():
    wrong = (Y + 1) % 3
    epochs = np.stack([one_hot_logits(np.where(np.arange(8) < 2, wrong, Y)),  # 2 wrong
                       one_hot_logits(Y),                                      # all right
                       one_hot_logits(Y),                                      # all right again
                       one_hot_logits(np.where(np.arange(8) < 5, wrong, Y))])  # 5 wrong
    picks = {name: rule(epochs, Y, TEACHER) for name, rule in KEEP_RULES.items()}
    assert picks["best accuracy, latest tie"] == 2
    assert picks["best accuracy, earliest tie"] == 1
    assert picks["last epoch"] == 3
    assert picks["best agreement, latest tie"] == 2
    # equal logits give equal losses, and argmin takes the first
    assert picks["lowest cross-entropy"] == picks["lowest distillation loss (T 4, alpha 0.9)"] == 1
    assert picks["lowest KL to the float model (T 1)"] == 1


def test_stratified_half_takes_half_of_every_class():
    y = np.repeat(np.arange(4), [6, 7, 2, 1])
    mask = stratified_half(y, np.random.default_rng(3))
    assert [int(mask[y == c].sum()) for c in range(4)] == [3, 3, 1, 0]
    again = stratified_half(y, np.random.default_rng(3))
    assert np.array_equal(mask, again)


def test_crossfit_scores_a_rule_on_the_half_it_did_not_see():
    # epoch 1 is right everywhere, the last epoch wrong everywhere: picking by accuracy
    # scores 0 points against the (perfect) float model, keeping the last -100.
    epochs = np.stack([one_hot_logits((Y + 1) % 3), one_hot_logits(Y), one_hot_logits((Y + 2) % 3)])
    scores = crossfit(epochs, Y, TEACHER, splits=3)
    assert scores["best accuracy, latest tie"].shape == (6, 3)
    assert np.array_equal(scores["best accuracy, latest tie"], np.tile([0.0, 1.0, 2], (6, 1)))
    assert np.array_equal(scores["last epoch"], np.tile([-1.0, 0.0, 3], (6, 1)))


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 6))
def test_both_directions_average_to_the_whole_split(seed, pairs, epochs):
    # with an even count in every class the two halves have equal sizes, so for a rule
    # that does not look at the data ("last epoch") the mean of the two directions is
    # the score on the whole split
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 2 * pairs)
    logits = rng.normal(size=(epochs, len(y), 3))
    teacher = rng.normal(size=(len(y), 3))
    v = crossfit(logits, y, teacher, {"last epoch": KEEP_RULES["last epoch"]}, splits=2, seed=seed)["last epoch"]
    whole = np.mean(np.argmax(logits[-1], 1) == y) - np.mean(np.argmax(teacher, 1) == y)
    agreement = np.mean(np.argmax(logits[-1], 1) == np.argmax(teacher, 1))
    for k in (0, 2):
        assert v[k : k + 2, 0].mean() == pytest.approx(whole, abs=1e-12)  # rounding of two float means only
        assert v[k : k + 2, 1].mean() == pytest.approx(agreement, abs=1e-12)


def test_crossfit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits must be \(epochs, N, classes\).*got \(8, 3\)"):
        crossfit(TEACHER, Y, TEACHER)
