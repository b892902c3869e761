"""The teacher as an input: loading a saved classifier and checking it fits the data.

    teacher = teachers.load("teacher.keras", info)   # info: keras_kd.data.DatasetInfo

Every model keras_kd reads from disk (``--teacher``, ``keras-kd export
--model``, a checkpoint's finished phase) goes through :func:`load_model`,
so a missing or unreadable file gets one clear error that names the flag.
"""

import os

import keras

from keras_kd import errors, views

__all__ = ["load", "load_model", "check_path", "check_fits", "logits_view"]


def check_path(path, flag="--model"):
    """Raises ValueError unless ``path`` is a file (checked before anything runs)."""
    if not os.path.isfile(path):
        raise ValueError(
            f"{flag}={path!r} does not exist. Fix: pass the path of a saved Keras "
            "model (written by model.save('model.keras'))."
        )


def load_model(path, flag="--model"):
    """Loads a saved Keras model; clear ``ValueError``s name ``flag`` and the fix."""
    check_path(path, flag)
    try:
        model = keras.saving.load_model(path)
    except Exception as err:
        raise ValueError(
            f"{flag}={path!r} is not a Keras model file ({errors.short(err, 200)}). Fix: "
            "pass a file written by model.save('model.keras')."
        ) from err
    if not isinstance(model, keras.Model):
        raise ValueError(f"{flag}={path!r} holds a {type(model).__name__}, not a keras.Model.")
    return model


def check_fits(model, info, role):
    """Raises ValueError if ``model``'s input or classes do not fit ``info``."""
    in_shape = tuple(model.inputs[0].shape[1:])
    if any(a is not None and a != b for a, b in zip(in_shape, info.input_shape)) or (
        len(in_shape) != len(info.input_shape)
    ):
        raise ValueError(
            f"the {role} takes inputs of shape {in_shape}, but {info.name!r} has "
            f"images of shape {tuple(info.input_shape)}. Fix: use the dataset the "
            f"{role} was trained on, or --image_size to resize the images."
        )
    classes = model.outputs[0].shape[-1]
    if classes != info.num_classes:
        raise ValueError(
            f"the {role} outputs {classes} classes, but {info.name!r} has "
            f"{info.num_classes}. Fix: use a {role} trained on this dataset."
        )


def load(path, info, flag="--teacher"):
    """Loads a saved Keras classifier (``flag`` names it in errors) and checks it fits ``info``."""
    model = load_model(path, flag)
    check_fits(model, info, "teacher")
    return model


def logits_view(teacher, dtype="float32"):
    """The frozen teacher's inference view: ``(view, recovered)``.

    ``view`` computes the teacher's logits in ``dtype`` (float32, bfloat16 or
    float16: :func:`keras_kd.views.with_compute_dtype`, a copy for a reduced
    dtype) and stops before a final softmax (:func:`keras_kd.views.logits_model`;
    ``recovered`` is True then). The model it runs is frozen (``trainable =
    False``); for float32 and a float32 teacher, that is ``teacher`` itself.
    The one place a teacher's view is built: the Distiller, the cache and the
    job's checks call it. Call the view with ``training=False``.

    Raises:
      ValueError: an unknown ``dtype``; a subclassed teacher with a reduced
        ``dtype`` or ending in a softmax.
    """
    runner = views.with_compute_dtype(teacher, dtype)
    runner.trainable = False
    return views.logits_model(runner, "teacher")
