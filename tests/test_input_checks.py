"""Issue 15, "Nothing silent": bad data and bad teachers stop with an error that names
the problem and the fix (augmentation on NaN, a softmax keras_kd cannot cut, broken
image files, unreadable model paths, Lambda layers, empty data)."""

import types
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_kd import augment, checks, data, modelfiles, teachers

# -- 1. NaN / Inf reaching the augmentation ------------------------------------------------


@pytest.mark.parametrize("bad, words", [(np.nan, "NaN count and Inf count:] [2] [0]"),
                                        (np.inf, "NaN count and Inf count:] [0] [2]"),
                                        (-np.inf, "NaN count and Inf count:] [0] [2]")])
def test_augmentation_names_nan_and_inf_plainly(bad, words):
    x = np.full((4, 8, 8, 1), 100.0, np.float32)
    x[1, 2, 3, 0] = x[3, 0, 0, 0] = bad
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(4) % 2)).batch(4)
    for spec in ("jitter", "mixup"):
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            next(iter(augment.apply(ds, spec, seed=0, num_classes=2)))
        text = str(err.value)
        assert "pixel values that are NaN or infinite" in text and words in text, text
        assert "Fix: find where they come from" in text
        assert "outside value_range" not in text and "look scaled" not in text
    # the finite batch still passes (the check adds no false alarm)
    x[np.isinf(x) | np.isnan(x)] = 0.0
    ok = tf.data.Dataset.from_tensor_slices((x, np.arange(4) % 2)).batch(4)
    assert next(iter(augment.apply(ok, "jitter", seed=0)))[0].shape == (4, 8, 8, 1)


# -- 2. a softmax keras_kd cannot cut: the teacher outputs probabilities ---------------------


def _teacher(head, classes=4, shape=(6, 6, 1)):
    """A small functional model: flatten, Dense(classes), then ``head`` (a layer or None)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    z = keras.layers.Dense(classes)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
    return keras.Model(inputs, z if head is None else head(z), name="t")


def _student(classes=4, shape=(6, 6, 1)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))


@keras.saving.register_keras_serializable(package="test_input_checks")
class _ProbabilityHead(keras.layers.Layer):
    """A custom last layer that applies a softmax (invisible to keras_kd's graph cut)."""

    def call(self, z):
        return keras.ops.softmax(z)


class _SoftmaxInCall(keras.Model):
    """A subclassed teacher whose call() ends in a softmax (no layer to inspect)."""

    def __init__(self):
        super().__init__(name="sub")
        self.flat, self.dense = keras.layers.Flatten(), keras.layers.Dense(4)

    def call(self, x):
        return keras.ops.softmax(self.dense(self.flat(x)))


@pytest.mark.parametrize("head", ["lambda", "custom", "lambda_float16"])
def test_a_softmax_keras_kd_cannot_cut_is_refused(head):
    import keras_kd

    layer = _ProbabilityHead() if head == "custom" else keras.layers.Lambda(keras.ops.softmax)
    teacher = _teacher(layer)
    x = np.random.default_rng(1).uniform(0, 255, (5, 6, 6, 1)).astype(np.float32)
    p = keras.ops.convert_to_numpy(teacher(x))  # independent reference: a distribution
    assert (p >= 0).all() and np.allclose(p.sum(-1), 1, atol=1e-6)
    dtype = "float16" if head.endswith("float16") else "float32"
    with pytest.raises(ValueError, match=r"the teacher \('t'\) outputs probabilities, not "
                       r"logits.*Fix: .*keras.layers.Softmax\(\).*Dense\(num_classes\)"):
        teachers.logits_view(teacher, dtype)
    with pytest.raises(ValueError, match="outputs probabilities, not logits"):
        keras_kd.Distiller(teacher, _student(), temperature=2.0)  # the notebook path
    with pytest.raises(ValueError, match=r"the teacher_2 \('t'\) outputs probabilities"):
        teachers.logits_view(teacher, role="teacher_2")
    with pytest.raises(ValueError, match=r"teacher 2 \('t'\) outputs probabilities"):
        teachers.logits_view([_teacher(None), teacher], temperature=2.0)


def test_a_subclassed_softmax_is_probed_when_its_input_shape_is_known():
    teacher = _SoftmaxInCall()
    teacher(np.zeros((1, 6, 6, 1), np.float32))  # built, but no keras.Input: shape unknown
    teachers.logits_view(teacher)  # nothing to probe on (documented)
    with pytest.raises(ValueError, match=r"the teacher \('sub'\) outputs probabilities"):
        teachers.logits_view(teacher, input_shape=(6, 6, 1))


@pytest.mark.parametrize("head", [None, "relu", "sigmoid", "softmax_layer", "log_softmax"])
def test_logits_never_trip_the_probe(head):
    """Logits (also all >= 0 after a ReLU, or a sigmoid's) pass; a Softmax layer is cut."""
    layer = {None: None, "relu": keras.layers.ReLU(), "sigmoid": keras.layers.Activation("sigmoid"),
             "softmax_layer": keras.layers.Softmax(),
             "log_softmax": keras.layers.Activation("log_softmax")}[head]
    teacher = _teacher(layer)
    view, recovered = teachers.logits_view(teacher)
    assert recovered == (head == "softmax_layer")
    x = np.random.default_rng(2).uniform(0, 255, (8, 6, 6, 1)).astype(np.float32)
    z = keras.ops.convert_to_numpy(view(x))
    assert not ((z >= 0).all() and np.allclose(z.sum(-1), 1, atol=1e-4))  # the reference


# -- 3. a broken image in a folder: dataset --------------------------------------------------


def _folder(root, per_class=4, classes=("a", "b")):
    """PNGs root/<class>/<i>.png (16x16 grey noise), written with PIL."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_a_truncated_image_is_named_at_load_time(tmp_path):
    root = _folder(tmp_path / "imgs")
    whole = (root / "b" / "2.png").read_bytes()
    (root / "b" / "2.png").write_bytes(whole[: len(whole) // 2])  # cut short
    (root / "a" / "3.png").write_bytes(whole[:-20])  # only its end missing
    # the reference: PIL still opens both (headers intact); the decoder cannot read them
    for f in (root / "b" / "2.png", root / "a" / "3.png"):
        assert Image.open(f).size == (16, 16)
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(f.read_bytes())
    for load in (data.load, data.load_unbatched):
        with pytest.raises(ValueError) as err:
            load(f"folder:{root}")
        text = str(err.value)
        assert text.startswith(f"2 of the 8 images in {str(root)!r} cannot be decoded: "
                               f"{str(root / 'a' / '3.png')!r}, {str(root / 'b' / '2.png')!r}")
        assert "Invalid PNG data" in text and "Fix: remove or replace these files" in text
    (root / "a" / "3.png").unlink()
    (root / "b" / "2.png").write_bytes(whole)
    _, _, info = data.load(f"folder:{root}")  # repaired: it loads
    assert (info.num_train, info.num_validation) == (6, 1)


# -- 6. empty data -----------------------------------------------------------------------------


def test_an_empty_tfds_split_is_named_with_the_fix(tmp_path):
    from test_data import KerasKdTinyTrainOnly

    KerasKdTinyTrainOnly(data_dir=str(tmp_path)).download_and_prepare()  # 50 examples
    name = "tfds:keras_kd_tiny_train_only"
    for split, cut in ((0.99, "train[:1%]"), (0.01, "train[99%:]")):  # 0.5 example: none
        for load in (data.load, data.load_unbatched):
            with pytest.raises(ValueError) as err:
                load(name, data_dir=str(tmp_path), validation_split=split)
            assert str(err.value).startswith(f"the split {cut!r} of {name!r} holds no examples")
            assert f"Fix: use a larger dataset, or (in Python) a validation_split, now {split:g}" \
                in str(err.value)
    _, _, info = data.load(name, data_dir=str(tmp_path))
    assert (info.num_train, info.num_validation) == (40, 10)


def test_empty_arrays_are_refused_by_finish():
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 4, 4, 1), np.float32),
                                                np.zeros((0,), np.int32)))
    full = tf.data.Dataset.from_tensor_slices((np.zeros((3, 4, 4, 1), np.float32),
                                               np.zeros((3,), np.int32)))
    # one rule and one error for data known to be empty (checks.check_not_empty): fit's too
    with pytest.raises(checks.EmptyDataError, match=r"^train_ds is empty \(a tf.data.Dataset "
                       r"of element spec .*\): there is nothing to train on or to score\. Fix: "
                       "check where the data comes from"):
        data.finish(empty, full, batch_size=2)
    with pytest.raises(checks.EmptyDataError, match="^val_ds is empty"):
        data.finish(full, empty, batch_size=2)
    info = types.SimpleNamespace(name="tiny", num_train=0, input_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="^train_ds of 'tiny' is empty"):
        data.finish(empty, full, info, batch_size=2)
    assert issubclass(checks.EmptyDataError, ValueError)
    train, val = data.finish(full, full, batch_size=2)
    assert sum(int(x.shape[0]) for x, _ in train) == 3 == sum(int(x.shape[0]) for x, _ in val)


@pytest.mark.parametrize("layout, words", [
    ("no_images", "has class sub-folders ['a', 'b'] but no images in them"),
    ("empty_class", "Class sub-folder(s) ['c'] of"),
    ("empty_split", "leaves an empty training or validation split")])
def test_a_folder_without_images_is_named_at_load_time(tmp_path, layout, words):
    root = tmp_path / "d"
    if layout == "no_images":
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            (root / c / "notes.txt").write_text("not an image")
    else:
        _folder(root, per_class=1 if layout == "empty_split" else 3)
        if layout == "empty_class":
            (root / "c").mkdir()
    with pytest.raises(ValueError) as err:
        data.load(f"folder:{root}")
    assert words in str(err.value) and str(root) in str(err.value) and "Fix:" in str(err.value)


# -- 4. model paths: say what is wrong with the file, and which flag (or stored file) -------


def _model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_a_damaged_model_file_says_what_is_wrong(tmp_path):
    _model().save(tmp_path / "good.keras")
    _model().save(tmp_path / "good.h5")
    whole_h5 = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole_h5[: len(whole_h5) // 2])
    (tmp_path / "text.h5").write_text("a text file")
    with zipfile.ZipFile(tmp_path / "good.keras") as z, \
            zipfile.ZipFile(tmp_path / "other.keras", "w") as other:
        assert "config.json" in z.namelist()  # the reference: what model.save writes
        other.writestr("notes.txt", "a zip, but not of a model")
    raw = bytearray((tmp_path / "good.keras").read_bytes())
    with zipfile.ZipFile(tmp_path / "good.keras") as z:
        info = z.getinfo("config.json")
    start = info.header_offset + 30 + len(info.filename)  # inside config.json's bytes
    raw[start:start + 8] = b"\0" * 8
    (tmp_path / "crc.keras").write_bytes(bytes(raw))
    expected = {"cut.h5": "a truncated HDF5 file", "text.h5": "not an HDF5 file",
                "other.keras": "a zip archive without config.json",
                "crc.keras": "a damaged zip archive (Bad CRC-32"}
    for name, reason in expected.items():
        with pytest.raises(ValueError) as err:
            modelfiles.load_model(str(tmp_path / name), "--teacher")
        text = str(err.value)
        assert text.startswith(f"--teacher={str(tmp_path / name)!r} is not a Keras model "
                               f"file ({reason}"), text
        assert "save or copy it again in full" in text


def test_a_broken_stored_file_blames_the_file_not_a_flag(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "teacher.keras").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError) as err:
        modelfiles.load_model(str(ckpt / "teacher.keras"), "--checkpoint_dir")
    text = str(err.value)
    assert text.startswith(f"the file {str(ckpt / 'teacher.keras')!r} (stored by an earlier "
                           "run in --checkpoint_dir) is not a readable Keras model file")
    assert "Fix: delete that file so the run redoes its phase, or pass a new " \
           "--checkpoint_dir" in text
    assert "--checkpoint_dir=" not in text and "--teacher" not in text
    with pytest.raises(ValueError, match=r"^the file .*sweep.* \(stored by an earlier run in "
                       r"--output_dir\) .*Fix: delete that file"):
        modelfiles.load_model(str(_stored_copy(tmp_path)), "--output_dir")


def _stored_copy(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "best.keras").write_text("garbage")
    return tmp_path / "sweep" / "best.keras"


# -- 5. a Lambda refused in safe_mode: the fix that works for the command at hand ----------


def test_the_lambda_fix_fits_the_command_and_works(tmp_path):
    inputs = keras.Input((6, 6, 1))
    scaled = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(scaled)))
    model.save(tmp_path / "lam.keras")
    path = str(tmp_path / "lam.keras")
    with pytest.raises(ValueError) as err:
        modelfiles.load_model(path, "--model")  # keras-kd export
    text = str(err.value)
    assert "keras_kd.export.export_verified(model, 'model.tflite', val_ds)" in text
    assert "Distiller" not in text and "--model=folder" not in text
    with pytest.raises(ValueError) as err:
        modelfiles.load_model(path, "--teacher")
    text = str(err.value)
    assert "keras.saving.load_model(path, safe_mode=False)" in text
    assert "model.export(folder), of a model ending in logits), and pass --teacher=folder" in text
    # ... and the fix it names works: loaded unsafely, exported, the folder loads in safe mode
    trusted = keras.saving.load_model(path, safe_mode=False)
    trusted.export(str(tmp_path / "folder"), verbose=False)
    again = modelfiles.load_model(str(tmp_path / "folder"), "--teacher")
    x = np.random.default_rng(0).uniform(0, 255, (3, 6, 6, 1)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    view, _ = teachers.logits_view(again)  # ends in logits: accepted as a teacher
    assert view is again
