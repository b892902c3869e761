"""A ResNet teacher distilled into a MobileNetV2 student, shipped as a verified .tflite.

    # Out of the box, offline: the embedded digits (mnist5k) as 32x32 RGB, a few CPU minutes
    python examples/resnet_to_mobilenet.py
    # CIFAR-10 (prepared beforehand with `tfds build cifar10 --data_dir=DIR`), full integer
    python examples/resnet_to_mobilenet.py --dataset=tfds:cifar10 --data_dir=DIR \\
        --augment=flip_crop --teacher_epochs=30 --epochs=30 --learning_rate=1e-3 \\
        --batch_size=128 --quantization=int8 --output_dir=runs/cifar
    # ImageNet: a ResNet-50 teacher (train it elsewhere and pass --teacher=...keras)
    python examples/resnet_to_mobilenet.py --dataset=tfds:imagenet2012 --data_dir=DIR \\
        --image_size=224,224 --augment=flip_crop --teacher_arch=resnet50 --teacher=resnet50.keras
    # Your own images, one sub-folder per class
    python examples/resnet_to_mobilenet.py --dataset=folder:/data/flowers --image_size=96,96
    # A quick look: 50 steps per epoch, 20 validation batches
    python examples/resnet_to_mobilenet.py --epochs=1 --teacher_epochs=1 \\
        --steps_per_epoch=50 --validation_steps=20

The default data ships with keras_kd (``mnist5k``: 4,000 training and 1,000
validation digits), resized to 32x32 and tiled to three channels
(``--channels=3``), so the same RGB ResNet and MobileNetV2 as for CIFAR-10 run
on it without a download; CIFAR-10 and ImageNet are behind ``--dataset`` and
``--data_dir`` (never downloaded here).

The path: load the data (raw 0-255 pixels) → train the teacher (or load one)
→ distil the student on the *same* augmented batches (``jitter``: small
shifts, for digits; ``flip_crop``, horizontal flip + random crop, for photos;
one view per batch for both models) → export
the student as a ``.tflite``: full-integer int8 calibrated on training images
first, run with the LiteRT interpreter on the validation images and written
only if its top-1 agreement with the Keras student is at least
``--min_agreement``; else the next milder mode (dynamic, float16, none) is
tried (``--quantization=auto``; ``--quantization=int8`` insists on int8 and
fails below the bar; ``keras_kd.export.export_verified``). After the default
few minutes the student's logits are still close together and int8 flips 1-2 %
of its answers, so the default run ships ``dynamic`` (int8 weights, 0.998
agreement, teacher and student about 90 % on the digits); a longer run ships int8.

CPU note: ResNet-20 on CIFAR-10 takes minutes per epoch on a 2-core CPU and
the MobileNetV2 student about as long; use a GPU, or ``--steps_per_epoch`` to
look around. Short runs mislead: with Keras's MobileNetV2 BatchNorm momentum
(0.999) the moving averages need a few thousand steps to catch up with the
weights, and until then the student in inference mode (evaluation, the
.tflite) outputs nearly the same logits for every image — chance accuracy
whatever its training accuracy, and a trivially perfect int8 agreement. So
``--bn_momentum`` (default 0.9) sets the momentum of every BatchNormalization
layer of both models before they train; pass ``--bn_momentum=0`` to keep the
architectures' own for long runs.

Errors (a dataset that is not there, a bad spec or flag) are one line
``resnet_to_mobilenet.py: error: ...``, exit status 2, as ``keras-kd``'s.

Writes ``teacher.keras``, ``student.keras``, ``student.tflite`` (+ ``.json``,
``.labels.txt``) and ``results.json`` into ``--output_dir``.
"""

import json
import os
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from keras_kd import augment, data, export, models
from keras_kd.distribute import deterministic

DEFAULTS = dict(
    dataset="mnist5k",
    data_dir=None,
    image_size="32,32",
    channels=3,
    teacher=None,
    teacher_arch="resnet_cifar:depth=20",
    student_arch="mobilenet_v2:alpha=0.35",
    teacher_epochs=3,
    epochs=8,
    batch_size=64,
    learning_rate=2e-3,
    temperature=4.0,
    alpha=0.9,
    augment="jitter",
    bn_momentum=0.9,
    steps_per_epoch=None,
    validation_steps=None,
    quantization="auto",
    min_agreement=0.99,
    output_dir=None,
    seed=0,
    verbose=2,
)

HELP = {
    "dataset": "mnist5k (embedded, offline), tfds:cifar10, tfds:imagenet2012, any "
               "tfds:<name> or folder:<path>.",
    "data_dir": "tensorflow-datasets data_dir where the dataset was prepared (never downloaded).",
    "image_size": "Resize every image to H,W (needed for ImageNet and mixed-size folders); "
                  "empty: as stored.",
    "channels": "Tile grey (1-channel) images to this many channels (3: RGB, as the "
                "ImageNet/CIFAR architectures are used); 0: as stored.",
    "teacher": "A trained .keras teacher to distil from; empty: train --teacher_arch here.",
    "teacher_arch": "Teacher spec: resnet_cifar:depth=20, resnet50, resnet101, ...",
    "student_arch": "Student spec: mobilenet_v2:alpha=0.35, mobilenet_v3_small, ...",
    "teacher_epochs": "Epochs to train the teacher (ignored with --teacher).",
    "epochs": "Epochs to distil the student.",
    "batch_size": "Batch size.",
    "learning_rate": "Adam learning rate (teacher and student).",
    "temperature": "Distillation temperature T.",
    "alpha": "Weight of T^2 * KL; 1 - alpha weighs the label cross-entropy.",
    "augment": "Augmentation policy, one view per batch for teacher and student: jitter "
               "(digits), flip_crop (photos: CIFAR-10, ImageNet), ...",
    "bn_momentum": "Momentum of every BatchNormalization layer of both models (0.9 suits "
                   "short runs; 0: the architectures' own, 0.999 in MobileNetV2).",
    "steps_per_epoch": "Train on this many batches per epoch (the data repeat); empty: one pass.",
    "validation_steps": "Evaluate and verify on this many validation batches; empty: all "
                        "(the .tflite check stops at 1,000 images).",
    "quantization": "student.tflite: auto (the first of int8, dynamic, float16, none that "
                    "agrees with the Keras student at least --min_agreement), or one of "
                    "them (int8: full integer, calibrated on training images).",
    "min_agreement": "Refuse the .tflite if its top-1 agreement with the Keras student "
                     "on the validation images is below this.",
    "output_dir": "Output folder (default: a new temporary folder).",
    "seed": "Random seed (runs are deterministic for a given seed).",
    "verbose": "Keras verbosity: 0 silent, 1 progress bars, 2 a line per epoch.",
}


def _with_channels(ds, channels):
    """``(images, labels)`` batches with grey images tiled to ``channels`` (a no-op
    when they have that many already)."""
    return ds.map(lambda x, y: (tf.repeat(x, channels, axis=-1), y))


def _set_bn_momentum(model, momentum):
    """Sets the moving-average momentum of ``model``'s BatchNormalization layers."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)


def _fit_kwargs(cfg):
    steps = cfg["steps_per_epoch"]
    return {"steps_per_epoch": int(steps)} if steps else {}


def _accuracy(model, ds):
    """Top-1 accuracy of ``model`` on the labelled batches ``ds``."""
    labels = np.concatenate([np.asarray(y) for _, y in ds])
    outputs = model.predict(ds, verbose=0)
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


def main(**kwargs):
    """Teacher → distilled student → verified .tflite; returns the figures.

    Keyword arguments: those of :data:`DEFAULTS` (``image_size`` as ``(H, W)``
    or ``"H,W"``). Returns a dict with the teacher's and the student's
    validation accuracy, the student's ``tflite`` check (``verify``'s dict:
    ``accuracy``, ``agreement``, ``size_bytes``, ...) and the paths written.
    """
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown arguments {unknown}; valid: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **kwargs}
    out = cfg["output_dir"] or tempfile.mkdtemp(prefix="keras_kd_resnet_to_mobilenet_")
    os.makedirs(out, exist_ok=True)
    print(f"output folder: {out}")
    started = time.perf_counter()
    with deterministic(cfg["seed"]):
        result = _run(cfg, out)
    result["seconds"] = time.perf_counter() - started
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    check = result["tflite"]
    print(
        f"teacher {result['teacher_accuracy']:.4f}, student {result['student_accuracy']:.4f} "
        f"(val accuracy, Keras); {result['tflite_path']}: {check['quantization']}, "
        f"{check['size_bytes'] / 1024:.0f} KiB, accuracy {check['accuracy']:.4f}, "
        f"agreement {check['agreement']:.4f} on {check['examples']} images, "
        f"{check['latency_ms_median']:.2f} ms/image"
    )
    return result


def _run(cfg, out):
    keras.utils.set_random_seed(cfg["seed"])
    train, val, info = data.load(cfg["dataset"], batch_size=cfg["batch_size"],
                                 seed=cfg["seed"], data_dir=cfg["data_dir"],
                                 image_size=cfg["image_size"])
    shape, classes = info.input_shape, info.num_classes
    channels = int(cfg["channels"] or shape[-1])
    if channels != shape[-1]:
        if shape[-1] != 1:
            raise ValueError(f"--channels={channels}: {info.name} has {shape[-1]}-channel "
                             "images; only grey (1-channel) images are tiled. Fix: "
                             "--channels=0 (as stored).")
        train, val = _with_channels(train, channels), _with_channels(val, channels)
        shape = (*shape[:2], channels)
    # One augmented view per batch, seen by the teacher and the student alike.
    train = augment.apply(train, cfg["augment"], shape, seed=cfg["seed"],
                          num_classes=classes)
    calibration = train.take(max(1, -(-300 // cfg["batch_size"])))
    if cfg["steps_per_epoch"]:
        train = train.repeat()
    if cfg["validation_steps"]:
        val = val.take(int(cfg["validation_steps"]))

    if cfg["teacher"]:
        teacher = keras.saving.load_model(cfg["teacher"])
        teacher_path = cfg["teacher"]
    else:
        teacher = models.build(cfg["teacher_arch"], shape, classes, name="teacher",
                               seed=cfg["seed"])
        if cfg["bn_momentum"]:
            _set_bn_momentum(teacher, cfg["bn_momentum"])
        teacher.compile(
            optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True)
            if augment.mixes_labels(cfg["augment"])
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        teacher.fit(train, epochs=cfg["teacher_epochs"], verbose=cfg["verbose"],
                    **_fit_kwargs(cfg))
        teacher_path = os.path.join(out, "teacher.keras")
        teacher.save(teacher_path)

    student = models.build(cfg["student_arch"], shape, classes, name="student",
                           seed=cfg["seed"] + 1)
    if cfg["bn_momentum"]:
        _set_bn_momentum(student, cfg["bn_momentum"])
    distiller = keras_kd.Distiller(teacher, student, temperature=cfg["temperature"],
                                   alpha=cfg["alpha"], evaluate_with_teacher=True)
    distiller.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                      metrics=["accuracy"])
    history = distiller.fit(train, epochs=cfg["epochs"], verbose=cfg["verbose"],
                            **_fit_kwargs(cfg))
    scores = distiller.evaluate(val, return_dict=True, verbose=0)
    student_path = os.path.join(out, "student.keras")
    distiller.student.save(student_path)

    teacher_accuracy = _accuracy(teacher, val)

    tflite_path = os.path.join(out, "student.tflite")
    check = export.export_verified(
        distiller.student, tflite_path, val, quantization=cfg["quantization"],
        representative_data=calibration, min_agreement=cfg["min_agreement"],
        class_names=info.class_names, log=print,
    )
    return {
        "dataset": info.name,
        "input_shape": list(shape),
        "num_classes": classes,
        "teacher_arch": cfg["teacher_arch"] if not cfg["teacher"] else cfg["teacher"],
        "student_arch": cfg["student_arch"],
        "teacher_params": int(teacher.count_params()),
        "student_params": int(student.count_params()),
        "teacher_accuracy": float(teacher_accuracy),
        "student_accuracy": float(scores["accuracy"]),
        "teacher_agreement": float(scores["teacher_agreement"]),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "tflite": {k: v for k, v in check.items() if k != "candidates"},
        "teacher_path": teacher_path,
        "student_path": student_path,
        "tflite_path": tflite_path,
        "config": {k: cfg[k] for k in DEFAULTS if k != "output_dir"},
    }


def _cli():
    from _flags import run  # examples/_flags.py, beside this script

    run(__file__, main, DEFAULTS, HELP,
        interrupted="what finished is in the output folder printed above.",
        kinds={"steps_per_epoch": "integer", "validation_steps": "integer",
               "min_agreement": "float", "bn_momentum": "float"})


if __name__ == "__main__":
    sys.exit(_cli())
