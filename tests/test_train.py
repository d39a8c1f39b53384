"""The trainer's epoch selection (early stopping on the validation split)."""
import pytest

from sqref import zoo
from sqref.data import load_split
from sqref.train import accuracy, replaces_kept, train


def test_replaces_kept_literal():
    assert replaces_kept(0.96, 0.95, "best") and replaces_kept(0.96, 0.95, "best-latest")
    assert not replaces_kept(0.95, 0.95, "best")  # the earliest of tied epochs stays
    assert replaces_kept(0.95, 0.95, "best-latest")  # the latest of tied epochs wins
    assert not replaces_kept(0.94, 0.95, "best-latest")


@pytest.mark.parametrize("keep", ["best", "best-latest", "last"])
def test_train_returns_the_kept_epoch(keep):
    x, y = load_split(split="train")
    val = load_split(split="val")
    model, history = train(zoo.lenet300(0), (x[:512], y[:512]), val, epochs=3, lr=0.05, progress=False, keep=keep)
    accs = [h["val_accuracy"] for h in history]
    want = {"best": max(accs), "best-latest": max(accs), "last": accs[-1]}[keep]
    assert accuracy(model, *val) == want


def test_train_rejects_an_unknown_keep():
    x, y = load_split(split="train")
    with pytest.raises(ValueError, match="keep must be one of"):
        train(zoo.lenet300(0), (x[:8], y[:8]), (x[:8], y[:8]), epochs=1, keep="first", progress=False)
