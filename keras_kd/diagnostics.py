"""Teacher diagnostics: is this teacher worth distilling, and are its soft targets soft?

    d = diagnostics.diagnose(teacher, val_ds, temperature=4.0, preprocessing="unit")
    print(diagnostics.describe(d))           # also keras_kd.diagnose
    notes = diagnostics.check(d)             # warnings; raises TeacherError near chance

The job runs them on every teacher (and the ensemble) before any student
trains; BUILD_NOTES.md ("Teachers") has the measurements behind the thresholds.
"""

import math

import keras
import numpy as np

from keras_kd import checks, losses, views
from keras_kd import preprocessing as prep

__all__ = ["diagnose", "describe", "evaluate", "predictions", "check", "check_bar", "TeacherError",
           "ONE_HOT_TOP1", "ONE_HOT_REFERENCE_T", "FLAT_LOGIT_STD"]




def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _figures(logits, labels, temperature, calibration_temperature=1.0, dtype="float32"):
    """The figures of :func:`diagnose` from float32 logits (n, N) and labels (n,);
    ``dtype``: the dtype the model computed them in."""
    z = np.asarray(logits, np.float32).astype(np.float64)
    n, classes = z.shape
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z).all(axis=1)).sum())
        raise ValueError(f"the teacher's logits are NaN or infinite on {bad} of {n} "
                         "examples. Fix: check the teacher and its preprocessing.")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == classes:  # one-hot
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1).astype(np.int64)
    if labels.shape[0] != n or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"the labels do not fit the teacher's {classes} classes "
                         f"({labels.shape[0]} labels for {n} examples, range "
                         f"{labels.min()}..{labels.max()}).")
    correct = z.argmax(axis=1) == labels
    confidence = np.exp(_log_softmax(z / calibration_temperature)).max(axis=1)
    bins = np.clip(np.searchsorted(np.linspace(0.0, 1.0, 16), confidence) - 1, 0, 14)
    ece = sum(np.mean(bins == b) * abs(correct[bins == b].mean() - confidence[bins == b].mean())
              for b in range(15) if np.any(bins == b))
    log_p = _log_softmax(z / temperature)
    p = np.exp(log_p)
    reference = max(temperature, ONE_HOT_REFERENCE_T)
    return {
        "top1_probability_at_reference": float(
            np.exp(_log_softmax(z / reference)).max(axis=1).mean()),
        "reference_temperature": float(reference),
        "accuracy": float(correct.mean()),
        "errors": int(n - correct.sum()),
        "examples": int(n),
        "num_classes": int(classes),
        "chance": 1.0 / classes,
        "ece": float(ece),
        "top1_probability": float(p.max(axis=1).mean()),
        "entropy": float(-(p * log_p).sum(axis=1).mean()),
        "max_entropy": math.log(classes),
        "logit_std": float(z.std(axis=1).mean()),
        "temperature": float(temperature),
        # rows that are distributions: a softmax keras_kd could not cut
        "outputs_probabilities": checks.are_probabilities(z, dtype),
    }


def _outputs(model, dataset, spec=None):
    """``model``'s float32 logits [n, N], the labels and the dtype ``model`` output
    them in, over ``(images, labels)`` batches (images given
    :func:`keras_kd.preprocessing.preprocess` with ``spec`` if one is set)."""
    logits, labels, dtype = [], [], "float32"
    for batch in dataset:
        images = batch[0] if spec is None else prep.preprocess(batch[0], spec)
        z = model(images, training=False)
        dtype = keras.backend.standardize_dtype(z.dtype)
        logits.append(keras.ops.convert_to_numpy(z).astype(np.float32))
        labels.append(keras.ops.convert_to_numpy(batch[1]))
    if not logits:
        raise ValueError("the dataset to score the model on is empty.")
    return np.concatenate(logits), np.concatenate(labels), dtype


def evaluate(model, dataset, teacher_pred=None):
    """Scores of a logits model on validation batches of ``(images, labels)``.

    ``{"accuracy", "errors", "examples", "loss"}`` (``loss``: the mean softmax
    cross-entropy, in float64), plus ``"agreement"``, the fraction of examples
    whose top-1 class is ``teacher_pred``'s, when that is given.
    """
    logits, labels, _ = _outputs(model, dataset)
    labels = labels.reshape(-1).astype(np.int64)
    pred = logits.argmax(-1)
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    ce = np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]
    scores = {"accuracy": float(np.mean(pred == labels)), "errors": int(np.sum(pred != labels)),
              "examples": len(labels), "loss": float(np.mean(ce))}
    if teacher_pred is not None:
        scores["agreement"] = float(np.mean(pred == teacher_pred))
    return scores


def predictions(model, dataset):
    """The top-1 classes of a logits model on ``(images, labels)`` batches, in order."""
    return _outputs(model, dataset)[0].argmax(-1)


def diagnose(teacher, dataset, temperature=4.0, preprocessing=None, calibration_temperature=1.0):
    """How good the teacher is and how soft its targets are, on ``dataset``.

    ``teacher``: a model (one ending in a softmax is read through
    :func:`keras_kd.views.logits_model`); ``dataset`` yields ``(images, labels)``
    batches of raw images, each given :func:`keras_kd.preprocessing.preprocess`
    with ``preprocessing`` and then the teacher (``training=False``). From the float32 logits z (in
    float64), over the n examples and N classes:

    - accuracy, errors, examples (n), num_classes (N), chance = 1/N;
    - ece: expected calibration error of softmax(z) (T = 1), 15 equal-width
      confidence bins (lo, hi]: Σ_b n_b/n · |accuracy_b − mean confidence_b|;
    - top1_probability: mean of max softmax(z/T); entropy: mean of
      −Σ p log p of softmax(z/T) in nats, of at most max_entropy = log N;
    - top1_probability_at_reference: the same top-1 mean at
      reference_temperature = max(T, :data:`ONE_HOT_REFERENCE_T`), what
      :func:`check` judges "nearly one-hot" on;
    - logit_std: mean over examples of the (population) std of z across classes;
    - temperature: T;
    - outputs_probabilities: every row of z is a probability distribution
      (:func:`keras_kd.checks.are_probabilities`, the rule of the teacher's
      probe too): a softmax keras_kd could not cut, refused by :func:`check`.

    ValueError for a bad temperature, an empty dataset, non-finite logits, or
    labels outside the teacher's classes.
    """
    temperature = losses.check_temperature(temperature)
    spec = prep.parse_preprocessing(preprocessing)
    view, _ = views.logits_model(teacher, "teacher")
    logits, labels, dtype = _outputs(view, dataset, spec)
    return _figures(logits, labels, temperature, calibration_temperature, dtype)


def describe(d, name="teacher"):
    """One line for the log from a :func:`diagnose` dict, e.g. ``teacher: val accuracy
    98.00% (chance 10.00%), ECE 0.012, soft targets at T=4: top-1 probability 0.62,
    entropy 1.05 of 2.30 nats, logit std 4.1``."""
    return (f"{name}: val accuracy {100 * d['accuracy']:.2f}% (chance {100 * d['chance']:.2f}%), "
            f"ECE {d['ece']:.3f}, soft targets at T={d['temperature']:g}: top-1 probability "
            f"{d['top1_probability']:.2f}, entropy {d['entropy']:.2f} of "
            f"{d['max_entropy']:.2f} nats, logit std {d['logit_std']:.1f}")


#: Soft targets whose mean top-1 probability at T reaches this are nearly
#: one-hot: no dark knowledge. Measured on mnist5k (BUILD_NOTES.md, "Teachers"):
#: a 0-1 teacher fed raw pixels stays >= 0.995 even at T = 8, while well-fed
#: teachers were at most 0.91 at T = 2.
ONE_HOT_TOP1 = 0.98
#: ... judged at ``max(T, this)``: at T = 1 (function matching, the job's default) a
#: well-fed teacher's targets on clean images are peaked (mnist5k ``cnn``: 0.986) and
#: the mixed views carry the rest; a teacher fed the wrong scale stays one-hot at any T.
ONE_HOT_REFERENCE_T = 4.0
#: Logits this flat (mean std across classes) look like probabilities: the
#: model applies a softmax keras_kd could not cut (measured: 0.25 for such a
#: SavedModel, 3.7-6.4 for logits).
FLAT_LOGIT_STD = 0.5


class TeacherError(ValueError):
    """A teacher that cannot be right for this data: the run stops before any student trains."""


def check_bar(min_accuracy, name="min_teacher_accuracy"):
    """``min_accuracy`` checked: None (the default bar) or a fraction in [0, 1]."""
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {min_accuracy}.")
    return min_accuracy


def check(d, min_accuracy=None, name="teacher", trained=False):
    """The warnings a :func:`diagnose` dict calls for; raises :class:`TeacherError` when
    the teacher's accuracy is below ``min_accuracy``, by default twice chance (2 / N),
    but at most halfway from chance to 100 % (so 75 % for two classes, not 100 %).
    ``trained``: the teacher was trained in this run (other likely causes)."""
    chance = d["chance"]
    floor = min(2 * chance, (1 + chance) / 2) if check_bar(min_accuracy) is None else min_accuracy
    if d["accuracy"] < floor:
        causes = ("it trained too little or diverged (--teacher_epochs, --learning_rate, "
                  "--teacher_arch)" if trained else
                  "the teacher expects other input scaling (--teacher_preprocessing: unit, tf, "
                  "torch, caffe or scale=S,offset=O), its classes are in another order than "
                  "the dataset's (sorted folder names for folder: data), or it was trained on "
                  "other data")
        raise TeacherError(
            f"the {name} scores {100 * d['accuracy']:.2f}% on the validation split (chance "
            f"{100 * d['chance']:.2f}%, the bar {100 * floor:.2f}%), so it cannot teach this "
            f"data; no student was trained. Likely causes: {causes}. Fix the cause, or pass "
            "--min_teacher_accuracy to accept it.")
    if d.get("outputs_probabilities"):
        raise TeacherError(
            f"the {name} outputs probabilities, not logits: on every validation image its "
            "outputs are non-negative and sum to 1 (a softmax keras_kd could not cut off, e.g. "
            "inside a Lambda layer or a SavedModel). Distilling them as logits would soften "
            "nothing. Fix: give keras_kd the model without its final softmax (a model whose "
            "last layer is a Softmax or Dense(activation='softmax') is cut by keras_kd itself), "
            "e.g. re-export the SavedModel from the layer before the softmax.")
    notes = []
    t = d.get("reference_temperature", d["temperature"])
    top1 = d.get("top1_probability_at_reference", d["top1_probability"])
    if top1 >= ONE_HOT_TOP1:
        notes.append(
            f"the {name}'s soft targets are nearly one-hot even at T={t:g} (mean top-1 "
            f"probability {top1:.3f}, logit std {d['logit_std']:.3g}): they carry almost "
            + ("no dark knowledge. Fix: raise --temperature." if trained else
               "no dark knowledge. If the teacher was trained on scaled inputs, pass "
               "--teacher_preprocessing (e.g. unit for 0-1); otherwise raise --temperature."))
    if d["logit_std"] < FLAT_LOGIT_STD:
        notes.append(
            f"the {name}'s outputs are nearly flat (logit std {d['logit_std']:.3g}, soft-target "
            f"entropy {d['entropy']:.2f} of {d['max_entropy']:.2f} nats): its soft targets are "
            "close to uniform. Check that the model outputs logits (not probabilities) and "
            "that --temperature is not too high.")
    return notes