"""The trainer: epoch selection (early stopping on the validation split) and distillation."""
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
    kept = [h["epoch"] for h in history if h["kept"]]
    tied = [h["epoch"] for h in history if h["val_accuracy"] == want]
    assert kept == [{"best": tied[0], "best-latest": tied[-1], "last": 3}[keep]]


def test_train_rejects_an_unknown_keep():
    x, y = load_split(split="train")
    with pytest.raises(ValueError, match="keep must be one of"):
        train(zoo.lenet300(0), (x[:8], y[:8]), (x[:8], y[:8]), epochs=1, keep="first", progress=False)


def _arrays(model):
    from sqref.model import layer_arrays
    return [a for layer in model.layers for a in layer_arrays(layer).values()]


def test_distilling_a_model_into_itself_changes_nothing():
    # alpha = 1, teacher = the model itself, no weight decay: the soft gradient
    # p_T(s) - p_T(t) is exactly zero at every step, so SGD never moves.
    x, y = load_split(split="train")
    start = zoo.lenet300(0)
    model, _ = train(start, (x[:128], y[:128]), (x[:64], y[:64]), epochs=1, lr=0.05, weight_decay=0.0,
                     progress=False, keep="last", teacher=start, temperature=4.0, alpha=1.0)
    for a, b in zip(_arrays(model), _arrays(start)):
        assert a.tobytes() == b.tobytes()


def test_distillation_with_alpha_zero_is_training_on_the_labels():
    x, y = load_split(split="train")
    kw = dict(epochs=1, lr=0.05, progress=False, keep="last", seed=3)
    plain, _ = train(zoo.lenet300(0), (x[:128], y[:128]), (x[:64], y[:64]), **kw)
    taught, _ = train(zoo.lenet300(0), (x[:128], y[:128]), (x[:64], y[:64]), teacher=zoo.lenet300(1),
                      temperature=4.0, alpha=0.0, **kw)
    for a, b in zip(_arrays(plain), _arrays(taught)):
        assert a.tobytes() == b.tobytes()


def test_distillation_learns_the_teachers_function_not_the_labels():
    # The teacher is trained on shifted labels (digit d labelled d + 1 mod 10).
    # A student distilled with alpha = 1 ignores the true labels and follows the
    # teacher; with alpha = 0 it follows the labels. Held-out images: the odd rows.
    import numpy as np
    from sqref.model import predict
    x, y = load_split(split="train")
    fit, held = np.arange(0, len(x), 2), np.arange(1, len(x), 2)
    kw = dict(epochs=2, lr=0.05, progress=False, keep="last")
    teacher, _ = train(zoo.lenet300(1, fc_init_scale=1.0), (x[fit], (y[fit] + 1) % 10), (x[:64], y[:64]), **kw)
    teacher_preds = predict(teacher, x[held])
    for alpha in (1.0, 0.0):
        student, _ = train(zoo.lenet300(0, fc_init_scale=1.0), (x[fit], y[fit]), (x[:64], y[:64]), teacher=teacher,
                           temperature=4.0, alpha=alpha, **kw)
        preds = predict(student, x[held])
        follows_teacher, follows_labels = np.mean(preds == teacher_preds), np.mean(preds == y[held])
        # the two targets disagree on every image, so a student follows one of them; both fits reach about 85-90%
        if alpha == 1:
            assert follows_teacher > 0.8 and follows_labels < 0.1
        else:
            assert follows_labels > 0.8 and follows_teacher < 0.1


def test_train_rejects_bad_distillation_settings_before_training():
    x, y = load_split(split="train")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        train(zoo.lenet300(0), (x[:8], y[:8]), (x[:8], y[:8]), epochs=1, progress=False, teacher=zoo.lenet300(1),
              temperature=-1)


@pytest.mark.parametrize("keep", ["best", "best-latest", "last"])
def test_train_cli_reports_the_epoch_it_saved(keep, tmp_path, capsys):
    import json

    import sqref
    from sqref.cli import main
    out = tmp_path / "m.h5"
    assert main(["train", "--arch", "lenet300", "--epochs", "4", "--keep", keep, "--fc-init-scale", "1",
                 "-o", str(out), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    val = load_split(split="val")
    assert accuracy(sqref.load(out), *val) == report["val_accuracy"]
    assert sqref.load(out).meta["kept_epoch"] == report["kept_epoch"]
