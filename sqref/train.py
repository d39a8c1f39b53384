"""SGD training of a sqref model: softmax cross-entropy, momentum, weight
decay, a cosine learning-rate schedule, seeded mini-batches, optional
random-shift augmentation, and early stopping on the validation split.

Pure in the sense that matters: the input model is never modified; training
works on copies of its arrays and returns a new model.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from sqref.grad import check_distillation, distillation_loss, model_gradients, softmax_cross_entropy
from sqref.model import PARAM_LAYERS, Model, layer_arrays, predict, run
from sqref.progress import Progress


def with_params(model: Model, params: list[dict]) -> Model:
    """A copy of `model` whose Conv2d/Linear layers take the given arrays."""
    layers = tuple(dataclasses.replace(layer, **p) if isinstance(layer, PARAM_LAYERS) else layer
                   for layer, p in zip(model.layers, params))
    return dataclasses.replace(model, layers=layers)


def random_shift(x: np.ndarray, *, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by a random integer (dy, dx) in [-max_shift, max_shift],
    filling with zeros (the MNIST background)."""
    if max_shift == 0:
        return x
    N, C, H, W = x.shape
    s = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
    offsets = rng.integers(0, 2 * s + 1, size=(N, 2))
    out = np.empty_like(x)
    for n, (dy, dx) in enumerate(offsets):
        out[n] = padded[n, :, dy : dy + H, dx : dx + W]
    return out


KEEP = ("best", "best-latest", "last")


def replaces_kept(val_acc: float, kept_acc: float, keep: str) -> bool:
    """Whether an epoch with validation accuracy `val_acc` replaces the kept
    epoch (accuracy `kept_acc`): a better one always does; an equal one only
    under keep="best-latest". (keep="last" returns the last epoch anyway.)"""
    return val_acc > kept_acc or (keep == "best-latest" and val_acc == kept_acc)


def accuracy(model: Model, x, y) -> float:
    return float(np.mean(predict(model, x) == y))


def train(model: Model, train_xy, val_xy, *, epochs: int = 30, lr: float = 0.05, momentum: float = 0.9,
          weight_decay: float = 5e-4, batch_size: int = 64, seed: int = 0, max_shift: int = 2,
          patience: int | None = None, progress: bool = False, grad_transform=None, keep: str = "best",
          teacher: Model | None = None, temperature: float = 1.0, alpha: float = 0.0, on_epoch=None):
    """Train with SGD and return (model, history): history has one dict per
    epoch (epoch, loss, val_accuracy, kept), the model is that of the kept
    epoch: the one with the best validation accuracy (`keep="best"`: the earliest of tied epochs;
    `keep="best-latest"`: the latest of them) or of the last epoch
    (`keep="last"`).

    Update per step, for every parameter p with gradient g (weight decay on
    weights only, not biases):
        v <- momentum * v + g + weight_decay * p;   p <- p - lr_t * v,
        lr_t = lr * (1 + cos(pi * t / T)) / 2 over the T steps of all epochs.
    `grad_transform(model, params) -> model_for_forward`, if given, maps the
    float parameters to the model used in the forward pass (quantization-aware
    fine-tuning uses it for fake quantization with the straight-through
    estimator: gradients of the quantized model update the float weights).
    `teacher`, if given, is a model whose logits on each (augmented) batch are
    distilled into the model being trained: the loss is
    grad.distillation_loss with `temperature` and `alpha` (alpha = 0: the
    labels only, as without a teacher).
    `on_epoch(epoch, val_model)`, if given, is called after every epoch with
    the epoch number (from 1) and the model validated (quantized when
    fine-tuning): a study can record what each epoch predicts.
    """
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if teacher is not None:
        check_distillation(temperature, alpha)
    x_train, y_train = train_xy
    x_val, y_val = val_xy
    rng = np.random.default_rng(seed)
    params = [{k: a.astype(np.float32).copy() for k, a in layer_arrays(layer).items()} for layer in model.layers]
    velocity = [{k: np.zeros_like(a) for k, a in p.items()} for p in params]
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total_steps = epochs * steps_per_epoch
    best = (-1.0, None, 0)
    history = []
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", enabled=progress)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb = random_shift(x_train[idx], max_shift=max_shift, rng=rng)
            current = with_params(model, params)
            forward_model = current if grad_transform is None else grad_transform(current)
            loss_fn = softmax_cross_entropy
            if teacher is not None:
                loss_fn = functools.partial(distillation_loss, teacher_logits=run(teacher, xb),
                                            temperature=temperature, alpha=alpha)
            loss, _, grads = model_gradients(forward_model, xb, y_train[idx], loss_fn)
            lr_t = np.float32(lr * 0.5 * (1 + math.cos(math.pi * step / total_steps)))
            for p, v, g in zip(params, velocity, grads):
                for key in p:
                    decay = weight_decay if key == "weight" else 0.0
                    v[key] *= np.float32(momentum)
                    v[key] += g[key] + np.float32(decay) * p[key]
                    p[key] -= lr_t * v[key]
            losses.append(float(loss))
            step += 1
            bar.update(b + 1, f"loss {np.mean(losses):.4f}")
        current = with_params(model, params)
        val_model = current if grad_transform is None else grad_transform(current)
        val_acc = accuracy(val_model, x_val, y_val)
        if on_epoch is not None:
            on_epoch(epoch + 1, val_model)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_accuracy": val_acc})
        bar.close(f"loss {np.mean(losses):.4f} val {100 * val_acc:.2f}%")
        if replaces_kept(val_acc, best[0], keep):
            best = (val_acc, [{k: a.copy() for k, a in p.items()} for p in params], epoch + 1)
        if patience is not None and epoch + 1 - best[2] >= patience:
            break
    kept_epoch = history[-1]["epoch"] if keep == "last" else best[2]
    for h in history:
        h["kept"] = h["epoch"] == kept_epoch
    trained = with_params(model, params if keep == "last" else best[1])
    return trained, history
