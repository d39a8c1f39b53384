"""Which epoch should fine-tuning return? Keep rules compared by cross-fitting
on the validation split alone.

Early stopping picks an epoch by its validation score, and that same score
then overstates the pick (the maximum of 30 noisy measurements). To compare
keep rules without reading the test split, each rule picks its epoch on one
half of the validation split and is scored on the other half, for both
directions of many random stratified halvings.

Every rule is a pure function of the per-epoch validation logits
(epochs, N, classes), the labels (N,) and the float teacher's logits
(N, classes), returning a 0-based epoch index.
"""
from __future__ import annotations

import numpy as np

from sqref.grad import distillation_loss, softmax_cross_entropy


def _accuracy(logits, y) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _latest_max(values) -> int:
    values = np.asarray(values)
    return len(values) - 1 - int(np.argmax(values[::-1]))


def _per_epoch(score, logits, y, teacher):
    return np.array([score(z.astype(np.float64), y, teacher.astype(np.float64)) for z in logits])


def _label_accuracy(z, y, t):
    return _accuracy(z, y)


def _ce(z, y, t):
    return softmax_cross_entropy(z, y)[0]


def _objective(z, y, t):  # the shipped fine-tuning loss (compress.FINETUNE_DISTILL at its value when compared)
    return distillation_loss(z, y, t, temperature=4.0, alpha=0.9)[0]


def _kl(z, y, t):
    return distillation_loss(z, y, t, temperature=1.0, alpha=1.0)[0]


def _agreement(z, y, t):
    return _accuracy(z, np.argmax(t, axis=1))


# The rules compared, fixed before the comparison was run.
KEEP_RULES = {
    "best accuracy, latest tie": lambda L, y, t: _latest_max(_per_epoch(_label_accuracy, L, y, t)),
    "best accuracy, earliest tie": lambda L, y, t: int(np.argmax(_per_epoch(_label_accuracy, L, y, t))),
    "last epoch": lambda L, y, t: len(L) - 1,
    "lowest cross-entropy": lambda L, y, t: int(np.argmin(_per_epoch(_ce, L, y, t))),
    "lowest distillation loss (T 4, alpha 0.9)": lambda L, y, t: int(np.argmin(_per_epoch(_objective, L, y, t))),
    "lowest KL to the float model (T 1)": lambda L, y, t: int(np.argmin(_per_epoch(_kl, L, y, t))),
    "best agreement, latest tie": lambda L, y, t: _latest_max(_per_epoch(_agreement, L, y, t)),
}


def stratified_half(y, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask selecting floor(n_c / 2) of the n_c images of every class c."""
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        mask[idx[: len(idx) // 2]] = True
    return mask


def crossfit(logits, y, teacher_logits, rules=None, *, splits: int = 20, seed: int = 0) -> dict:
    """Score every rule: for `splits` random stratified halvings and both
    directions, the rule picks an epoch on one half, and the pick's accuracy
    minus the teacher's accuracy, and its agreement with the teacher, are
    measured on the other half. Returns {rule: array (2 * splits, 3)} of
    (accuracy minus teacher accuracy, agreement, 1-based epoch)."""
    logits, y, teacher_logits = np.asarray(logits), np.asarray(y), np.asarray(teacher_logits)
    if logits.ndim != 3 or logits.shape[1:] != teacher_logits.shape or len(y) != logits.shape[1]:
        raise ValueError(f"logits must be (epochs, N, classes) with teacher logits (N, classes) and N labels, "
                         f"got {logits.shape}, {teacher_logits.shape} and {len(y)} labels")
    rules = KEEP_RULES if rules is None else rules
    rng = np.random.default_rng(seed)
    teacher_preds = np.argmax(teacher_logits, axis=1)
    out = {name: [] for name in rules}
    for _ in range(splits):
        half = stratified_half(y, rng)
        for pick_on, score_on in ((half, ~half), (~half, half)):
            for name, rule in rules.items():
                e = rule(logits[:, pick_on], y[pick_on], teacher_logits[pick_on])
                z = logits[e][score_on]
                out[name].append((_accuracy(z, y[score_on]) - _accuracy(teacher_logits[score_on], y[score_on]),
                                  _accuracy(z, teacher_preds[score_on]), e + 1))
    return {name: np.array(v) for name, v in out.items()}
