"""Knowledge distillation of a Keras classifier into a smaller student.

The student is given, or derived from the teacher: the same chain of layers with `width` of
its filters and units (the pruner's rebuild, freshly initialised). It learns from the
teacher's softened outputs (temperature `T`, the loss scaled by T² as Hinton et al. do) mixed
with the hard labels (`alpha` is the teacher's share). The defaults (T = 2, alpha = 0.5) are
what helped on the seed's CNN with a budget of a few epochs; T = 4 hurt there
(`bench/factory_prune_distill.py`).

A model that is not a classifier (a detector's raw head, a regression) is distilled by
`distill_heads`: the student matches the teacher's head outputs (mean squared error), mixed
with the model's own training loss on the labels where one is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_edge.controller.factory import prune as prune_mod
from lepton_edge.shared.errors import UserError


def derive_student(teacher: Any, width: float) -> Any:
    """The teacher's architecture at `width` (0 < width < 1) of its prunable layers' size,
    with fresh weights."""
    if not 0 < width < 1:
        raise UserError(f"student width {width} is outside (0, 1): e.g. 0.25 keeps a quarter")
    import keras

    narrow, _ = prune_mod.prune_model(teacher, 1 - width)
    student = keras.models.clone_model(narrow)  # same layers and sizes, new initial weights
    student.name = f"{teacher.name}_student{round(width * 100)}"
    return student


def check_student(teacher: Any, student: Any) -> None:
    """One line when the student cannot stand in for the teacher."""
    for what, t, s in (
        ("input", teacher.inputs[0].shape, student.inputs[0].shape),
        ("output", teacher.outputs[0].shape, student.outputs[0].shape),
    ):
        if tuple(t[1:]) != tuple(s[1:]):
            raise UserError(
                f"the student's {what} shape {tuple(s[1:])} differs from the teacher's "
                f"{tuple(t[1:])}: it must take and give the same tensors"
            )


def _logits(probabilities_or_logits: np.ndarray, probabilities: bool) -> np.ndarray:
    if probabilities:
        logits: np.ndarray = np.log(np.clip(probabilities_or_logits, 1e-7, 1.0))
        return logits
    return probabilities_or_logits


def distill(
    teacher: Any,
    student: Any,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
) -> Any:
    """Train `student` on `teacher`'s softened outputs on `x` (and the labels `y`, weighted
    `1 - alpha`); returns the student."""
    check_student(teacher, student)
    prune_mod.check_budget(len(x), epochs)
    if temperature <= 0:
        raise UserError(f"temperature {temperature} must be above 0 (1 = no softening)")
    if not 0 <= alpha <= 1:
        raise UserError(f"alpha {alpha} is outside [0, 1]: the teacher's share of the loss")
    if y is None:
        alpha = 1.0
    elif len(y) != len(x):
        raise UserError(f"{len(x)} training samples but {len(y)} labels")
    prune_mod.check_labels(teacher, np.zeros(0, np.int64) if y is None else y)
    import keras
    from keras import ops

    keras.utils.set_random_seed(seed)
    teacher_probs = teacher.layers[-1].get_config().get("activation") == "softmax"
    student_probs = student.layers[-1].get_config().get("activation") == "softmax"
    teacher_out = np.asarray(teacher.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    soft = _softmax(_logits(teacher_out, teacher_probs) / temperature)
    classes = soft.shape[-1]
    hard = np.zeros_like(soft) if y is None else np.eye(classes, dtype=np.float32)[y]
    targets = np.concatenate([soft, hard], axis=-1)

    def loss(target: Any, output: Any) -> Any:
        soft_t, hard_t = target[:, :classes], target[:, classes:]
        logits = ops.log(ops.clip(output, 1e-7, 1.0)) if student_probs else output
        soft_s = ops.log_softmax(logits / temperature, axis=-1)
        kl = ops.sum(soft_t * (ops.log(ops.clip(soft_t, 1e-7, 1.0)) - soft_s), axis=-1)
        ce = -ops.sum(hard_t * ops.log_softmax(logits, axis=-1), axis=-1)
        return alpha * temperature**2 * kl + (1 - alpha) * ce

    student.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    student.fit(x, targets, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return student


def distill_heads(
    teacher: Any,
    student: Any,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    task_loss: Any = None,
    match: Any = None,
    alpha: float = 0.5,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> Any:
    """Train `student` to give `teacher`'s head outputs on `x` (one output, e.g. a detector's
    raw per-cell logits and box terms): `alpha` of the loss is the mean squared error to the
    teacher, `1 - alpha` the model's own `task_loss(y, output)` when `y` and it are given.
    `match` maps both outputs before they are compared, e.g. the head's own activation
    (`keras.ops.sigmoid`), so that a background cell's -12 against -9 costs nothing.
    Returns the student."""
    check_student(teacher, student)
    prune_mod.check_budget(len(x), epochs)
    if len(teacher.outputs) != 1:
        raise UserError(
            f"the teacher has {len(teacher.outputs)} outputs: distil the model that gives its "
            "raw head as one tensor (before decoding), as examples/shapes_detector does"
        )
    if not 0 <= alpha <= 1:
        raise UserError(f"alpha {alpha} is outside [0, 1]: the teacher's share of the loss")
    if (y is None) != (task_loss is None):
        raise UserError("give both y and task_loss (or neither: the teacher alone teaches)")
    if y is not None and len(y) != len(x):
        raise UserError(f"{len(x)} training samples but {len(y)} labels")
    import keras
    from keras import ops

    keras.utils.set_random_seed(seed)
    taught = np.asarray(teacher.predict(x, batch_size=64, verbose=0), dtype=np.float32)
    if match is not None:
        taught = np.asarray(match(taught), dtype=np.float32)
    width = taught.shape[-1]
    targets = taught if y is None else np.concatenate([taught, y.astype(np.float32)], axis=-1)
    share = alpha if y is not None else 1.0

    def loss(target: Any, output: Any) -> Any:
        mine = output if match is None else match(output)
        matched = ops.mean(ops.square(mine - target[..., :width]), axis=-1)
        if task_loss is None:
            return matched
        return share * matched + (1 - share) * task_loss(target[..., width:], output)

    student.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    student.fit(x, targets, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return student


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out
