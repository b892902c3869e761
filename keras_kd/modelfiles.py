"""Reading a model from disk: a ``.keras`` file, a legacy ``.h5``, or a SavedModel folder.

    model = modelfiles.load_model("teacher.keras", "--teacher")

Every model keras_kd reads from disk (``--teacher``, ``keras-kd export
--model``, a checkpoint's finished phase) goes through :func:`load_model`, so
a missing or unreadable file gets one clear error that names the flag and the
fix (for the command at hand, or for a file an earlier run stored).
"""

import os
import re
import zipfile

import keras
import tensorflow as tf

from keras_kd import errors

__all__ = ["load_model", "check_path"]


def _stored(flag):
    """True when ``flag`` names a run folder (``--checkpoint_dir``, a sweep's
    ``--output_dir``: it ends in ``_dir``) that keras_kd stored the model file in,
    rather than the flag whose value is the model's path."""
    return flag.endswith("_dir")


def _named(path, flag):
    """How errors name the model: ``--teacher='t.keras'``, or a stored file."""
    return (f"the file {path!r} (stored by an earlier run in {flag})" if _stored(flag)
            else f"{flag}={path!r}")


def check_path(path, flag="--model"):
    """Raises ValueError unless ``path`` is a file or a SavedModel folder (one
    with ``saved_model.pb``); checked before anything runs."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"{_named(path, flag)} is a folder without saved_model.pb, so it is not a "
                "SavedModel. Fix: pass a SavedModel folder (written by model.export(path)), "
                "or the path of a model file (.keras or legacy .h5) inside it.")
        return
    if not os.path.isfile(path):
        raise ValueError(
            f"{_named(path, flag)} does not exist. Fix: pass the path of a saved Keras "
            "model (written by model.save('model.keras')), a legacy .h5 file or a "
            "SavedModel folder (model.export(path)).")


_MODEL_FILES = ("pass a file written by model.save('model.keras'), a legacy .h5, or a "
                "SavedModel folder (model.export(path))")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _in_python(flag):
    """What to do in Python with a model loaded there, for the command that read ``flag``."""
    if flag == "--model":  # keras-kd export
        return ("convert it there with keras_kd.export.export_verified(model, "
                "'model.tflite', val_ds)")
    return "distil from it there with keras_kd.Distiller(model, student, ...)"


def _broken_file(path, err):
    """Why ``path`` (a file keras.saving.load_model refused) is not a model file."""
    text = str(err)
    ext = os.path.splitext(path)[1].lower()
    if os.path.basename(path) == "saved_model.pb":
        return "the file of a SavedModel: pass its folder instead"
    if ext == ".keras":
        if not zipfile.is_zipfile(path):
            return "not a zip archive, as every .keras file is: truncated, or another format"
        if isinstance(err, zipfile.BadZipFile) or "CRC" in text:
            return (f"a damaged zip archive ({errors.short(err, 120)}): corrupted or cut "
                    "short in a copy")
        if "config.json" in text:
            return "a zip archive without config.json: not written by model.save"
    elif ext in (".h5", ".hdf5"):
        with open(path, "rb") as f:
            if f.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                return "not an HDF5 file, as every .h5 model is: another format, or damaged"
        if "truncated" in text:
            return ("a truncated HDF5 file: shorter than its header says, e.g. a copy cut "
                    "short")
    else:
        return f"keras reads .keras and legacy .h5 files, not {ext or 'a file without extension'}"
    return errors.short(err, 200)


def _unreadable(path, flag, err):
    """The ValueError for a file keras.saving.load_model refused."""
    text, who = str(err), _named(path, flag)
    if "safe_mode" in text:
        lam = "Lambda" in text
        what = ("has a Lambda layer, whose Python code keras does not run when it loads a "
                "file (safe_mode: a saved Lambda can run any code)" if lam else
                f"was refused by keras in safe_mode ({errors.short(err, 200)})")
        saved_model = ("" if flag == "--model" or _stored(flag) else
                       ", or save it there as a SavedModel, which holds no Python code "
                       "(model.export(folder), of a model ending in logits), and pass "
                       f"{flag}=folder")
        return ValueError(
            f"{who} {what}. keras-kd loads model files in safe_mode only and has no option "
            "to turn it off, on purpose. Fix: rebuild the model with built-in layers in place "
            + ("of the Lambda (e.g. Rescaling for input scaling, Softmax for a softmax)"
               if lam else "of the refused one") + " and save it again; or, if you wrote "
            "and trust the file, load it in Python with keras.saving.load_model(path, "
            f"safe_mode=False) and {_in_python(flag)}{saved_model}.")
    missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
    if missing:
        kind, name = missing.groups()
        return ValueError(
            f"{who} uses the custom {kind} {name!r}, which keras cannot find (a "
            "model file holds its name, not its code). Fix: in Python, import the code that "
            f"defines {name!r} (registered with @keras.saving.register_keras_serializable()) "
            f"or pass custom_objects to keras.saving.load_model, and {_in_python(flag)}; or "
            "rebuild the model with built-in layers only.")
    reason = _broken_file(path, err)
    if _stored(flag):
        return ValueError(
            f"{who} is not a readable Keras model file ({reason}). Fix: delete that file so "
            f"the run redoes its phase, or pass a new {flag} and a new --output_dir (or delete "
            "both: the output folder is tied to its checkpoint) to start over.")
    return ValueError(f"{who} is not a Keras model file ({reason}). Fix: {_MODEL_FILES} "
                      "(a truncated or damaged file: save or copy it again in full).")


def _load_saved_model(path, flag):
    """A SavedModel folder as a functional model over its serving_default signature."""
    try:
        layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    except Exception as err:
        raise ValueError(
            f"{_named(path, flag)} is a SavedModel keras cannot load through its serving_default "
            f"signature ({errors.short(err, 200)}). Fix: export it with a serving_default "
            "signature (Keras 3: model.export(path); TensorFlow: tf.saved_model.save(model, "
            "path, signatures=...)), or save it as a .keras file.") from err
    specs = tf.nest.flatten(layer.call_endpoint_fn.structured_input_signature)
    if len(specs) != 1 or specs[0].shape.rank is None:
        raise ValueError(
            f"{_named(path, flag)}: its serving_default signature takes {len(specs)} input(s) "
            f"({specs}); keras_kd feeds one batch of images of known rank. Fix: export a "
            "model with a single image input.")
    inputs = keras.Input(shape=tuple(specs[0].shape[1:]), dtype=specs[0].dtype.name)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        names = sorted(outputs)
        outputs = [outputs[name] for name in names]
    else:
        names = None
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(
                f"{_named(path, flag)}: its serving_default signature returns {len(outputs)} "
                f"outputs ({', '.join(names or [])}); a teacher has one (its logits or "
                "class probabilities). Fix: export a model with a single output.")
        outputs = outputs[0]
    name = "".join(c if c.isalnum() or c in "_-." else "_"
                   for c in os.path.basename(os.path.normpath(path)))
    return keras.Model(inputs, outputs, name=name or "saved_model")


def load_model(path, flag="--model"):
    """Loads a saved Keras model; clear ``ValueError``s name ``flag`` and the fix.

    ``path``: a ``.keras`` file (read in safe_mode: a Lambda layer's code is
    not run), a legacy ``.h5`` file, or a SavedModel folder, which becomes a
    functional model over ``keras.layers.TFSMLayer(path, "serving_default")``
    with the signature's input shape (a softmax inside it cannot be cut off).
    Errors: a missing path, a folder without ``saved_model.pb``, a file that is
    not a model (text, truncated, a damaged zip or HDF5 file), a Lambda or custom
    layer keras will not load; each names the fix, for the command at hand.

    ``flag``: the flag whose value is ``path`` (``--teacher``; ``--model`` is
    ``keras-kd export``'s), or the run folder's flag (one ending in ``_dir``:
    ``--checkpoint_dir``, a sweep's ``--output_dir``) when ``path`` is a file an
    earlier run stored there: its errors then name that file and say to delete
    it (the phase runs again) instead of blaming a flag the user did not pass.
    """
    check_path(path, flag)
    if os.path.isdir(path):
        return _load_saved_model(path, flag)
    try:
        model = keras.saving.load_model(path)
    except Exception as err:
        raise _unreadable(path, flag, err) from err
    if not isinstance(model, keras.Model):
        raise ValueError(f"{_named(path, flag)} holds a {type(model).__name__}, not a keras.Model.")
    return model
