"""A teacher trained elsewhere (keras_kd.teachers): its preprocessing, its file
formats (.keras, legacy .h5, SavedModel folder), the errors, its diagnosis."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.applications import imagenet_utils

from keras_kd import checks, data, diagnostics, modelfiles, preprocessing, shapes, teachers, views

VALID = "valid: none (raw 0-255), unit (x/255), tf (x/127.5 - 1)"


# -- preprocessing -----------------------------------------------------------------------


@pytest.fixture
def rgb(rng):
    return rng.uniform(0, 255, size=(4, 6, 5, 3)).astype(np.float32)


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_named_preprocessing_is_keras_applications_preprocess_input(mode, rgb):
    want = imagenet_utils.preprocess_input(rgb.copy(), mode=mode)
    np.testing.assert_allclose(preprocessing.preprocess(rgb, mode).numpy(), want,
                               rtol=1e-6, atol=1e-5)
    pixels = np.round(rgb).astype(np.uint8)  # integer images are cast to float32 first
    np.testing.assert_allclose(preprocessing.preprocess(pixels, mode).numpy(),
                               imagenet_utils.preprocess_input(pixels.copy(), mode=mode),
                               rtol=1e-6, atol=1e-5)


def test_unit_none_and_affine_preprocessing(rgb):
    assert np.array_equal(preprocessing.preprocess(rgb, "unit").numpy(), rgb / np.float32(255))
    assert np.array_equal(preprocessing.preprocess(rgb, None).numpy(), rgb)
    np.testing.assert_allclose(preprocessing.preprocess(rgb, "scale=2,offset=-1").numpy(),
                               rgb * 2 - 1, rtol=1e-6)
    np.testing.assert_allclose(preprocessing.preprocess(rgb, "offset=-127.5").numpy(), rgb - 127.5)
    np.testing.assert_allclose(preprocessing.preprocess(rgb, "scale=1/255").numpy(), rgb / 255,
                               rtol=1e-6)


@pytest.mark.parametrize("spec, canonical", [
    (None, "none"), ("", "none"), (" Unit ", "unit"), ("caffe", "caffe"),
    ("scale=0.00392157", "scale=0.00392157,offset=0"),
    ("offset = -1", "scale=1,offset=-1"),
    ("offset=-1,scale=2", "scale=2,offset=-1"),
    ("scale=1/255", "scale=0.00392156863,offset=0"),
    ("scale=1,offset=0", "none"),
])
def test_parse_preprocessing_canonical_forms(spec, canonical):
    assert preprocessing.parse_preprocessing(spec) == canonical
    assert preprocessing.parse_preprocessing(canonical) == canonical  # a fixed point


@pytest.mark.parametrize("spec", ["foo", "imagenet", "scale=", "scale=abc", "gain=2",
                                  "scale=1,scale=2", "scale=0", "scale=inf", "scale=1/0",
                                  "scale=2;offset=1", 3])
def test_bad_preprocessing_names_the_valid_forms(spec):
    with pytest.raises(ValueError, match="unknown teacher preprocessing") as err:
        preprocessing.parse_preprocessing(spec)
    assert VALID in str(err.value) and "scale=S,offset=O." in str(err.value)


@pytest.mark.parametrize("spec", ["torch", "caffe"])
def test_imagenet_preprocessing_needs_three_channels(spec):
    gray = np.zeros((2, 4, 4, 1), np.float32)
    message = rf"'{spec}' needs 3 \(RGB\) channels, the images have 1\. Fix: "
    with pytest.raises(ValueError, match=message):
        preprocessing.preprocess(gray, spec)
    with pytest.raises(ValueError, match=message):
        preprocessing.preprocessing_layer(spec, channels=1)
    assert isinstance(preprocessing.preprocessing_layer("unit", channels=1), preprocessing.Preprocessing)


def test_preprocessing_layer_round_trips_and_none_adds_nothing(rgb, tmp_path):
    assert preprocessing.preprocessing_layer("none") is None
    assert preprocessing.preprocessing_layer(None) is None
    layer = preprocessing.preprocessing_layer("torch", channels=3)
    config = layer.get_config()
    assert config["spec"] == "torch"
    again = preprocessing.Preprocessing.from_config(config)
    assert again.spec == "torch"
    want = imagenet_utils.preprocess_input(rgb.copy(), mode="torch")
    np.testing.assert_allclose(again(rgb).numpy(), want, rtol=1e-6, atol=1e-5)
    # registered: a model holding it saves and loads in safe_mode
    inputs = keras.Input(rgb.shape[1:])
    model = keras.Model(inputs, preprocessing.Preprocessing("scale=2,offset=-1")(inputs))
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    assert back.layers[-1].get_config()["spec"] == "scale=2,offset=-1"
    np.testing.assert_allclose(back(rgb).numpy(), rgb * 2 - 1, rtol=1e-6)


# -- a teacher trained elsewhere on 0-1 inputs, in three formats ---------------------------


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A small CNN trained in plain Keras on mnist5k scaled to 0-1, ending in a
    softmax, saved as .keras, legacy .h5 and a SavedModel folder."""
    (x, y), (x_val, y_val), info = data.load_arrays("mnist5k")
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ], name="elsewhere")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x / 255.0, y, epochs=2, batch_size=64, verbose=0)
    folder = tmp_path_factory.mktemp("elsewhere")
    model.save(folder / "t.keras")
    model.save(folder / "t.h5")
    model.export(str(folder / "t_savedmodel"), verbose=False)
    return types.SimpleNamespace(
        folder=folder, info=info, x_val=x_val, y_val=y_val,
        probs=model.predict(x_val / 255.0, batch_size=250, verbose=0))


def val_batches(env, n=1000):
    return tf.data.Dataset.from_tensor_slices((env.x_val[:n], env.y_val[:n])).batch(250)


@pytest.mark.parametrize("name", ["t.keras", "t.h5", "t_savedmodel"])
def test_each_format_loads_and_predicts_as_the_model(elsewhere, name):
    model = teachers.load(str(elsewhere.folder / name), elsewhere.info)
    x = elsewhere.x_val[:300]
    probs = model(preprocessing.preprocess(x, "unit"), training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probs), elsewhere.probs[:300],
                               rtol=1e-4, atol=1e-6)
    assert model.outputs[0].shape[-1] == 10
    # a .keras / .h5 softmax head is cut off for distillation; a SavedModel is opaque
    _, recovered = views.logits_model(model)
    assert recovered == (name != "t_savedmodel")


def test_a_lambda_layer_gets_the_safe_mode_message(tmp_path):
    inputs = keras.Input((28, 28, 1))
    scaled = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(scaled)))
    for name in ["lam.keras", "lam.h5"]:
        model.save(tmp_path / name)
        with pytest.raises(ValueError) as err:
            modelfiles.load_model(str(tmp_path / name), "--teacher")
        text = str(err.value)
        assert text.startswith(f"--teacher={str(tmp_path / name)!r} has a Lambda layer")
        for part in ["whose Python code keras does not run when it loads a file (safe_mode",
                     "has no option to turn it off, on purpose",
                     "rebuild the model with built-in layers in place of the Lambda (e.g. "
                     "Rescaling", "keras.saving.load_model(path, safe_mode=False) and distil "
                     "from it there with keras_kd.Distiller(model, student, ...)"]:
            assert part in text, (name, part, text)


def test_a_custom_layer_keras_cannot_find(tmp_path):
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(3)(Doubler()(inputs))).save(tmp_path / "c.keras")
    with pytest.raises(ValueError, match="uses the custom class 'Doubler', which keras cannot"):
        modelfiles.load_model(str(tmp_path / "c.keras"), "--teacher")


def test_files_that_are_not_models(elsewhere, tmp_path):
    cases = {"junk.keras": b"not a model", "junk.h5": b"not a model",
             "cut.keras": (elsewhere.folder / "t.keras").read_bytes()[:2000],
             "cut.h5": (elsewhere.folder / "t.h5").read_bytes()[:2000],
             "model.pkl": b"\x80\x04"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"--teacher='{tmp_path / name}' is not a Keras "
                           r"model file \(.*\)\. Fix: pass a file written by model\.save"):
            teachers.load(str(tmp_path / name), elsewhere.info)
    with pytest.raises(ValueError, match="not a zip archive"):
        modelfiles.load_model(str(tmp_path / "cut.keras"))
    with pytest.raises(ValueError, match="does not exist"):
        modelfiles.load_model(str(tmp_path / "nope.keras"), "--teacher")


def test_saved_model_pb_and_folders(elsewhere, tmp_path):
    (tmp_path / "plain").mkdir()
    for call in (modelfiles.check_path, modelfiles.load_model):
        with pytest.raises(ValueError, match=r"--teacher='.*plain' is a folder without "
                           r"saved_model\.pb"):
            call(str(tmp_path / "plain"), "--teacher")
    modelfiles.check_path(str(elsewhere.folder / "t_savedmodel"), "--teacher")  # fine
    with pytest.raises(ValueError, match="the file of a SavedModel: pass its folder"):
        modelfiles.load_model(str(elsewhere.folder / "t_savedmodel" / "saved_model.pb"))
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(inputs)
    keras.Model(inputs, [keras.layers.Dense(10)(flat), keras.layers.Dense(2)(flat)]).export(
        str(tmp_path / "two"), verbose=False)
    with pytest.raises(ValueError, match="returns 2 outputs .*a teacher has one"):
        modelfiles.load_model(str(tmp_path / "two"), "--teacher")


def _model(shape, classes):
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))


def test_models_that_do_not_fit_the_data(elsewhere, tmp_path):
    info = elsewhere.info  # (28, 28, 1), 10 classes
    _model((28, 28, 1), 3).save(tmp_path / "three.keras")
    with pytest.raises(ValueError, match="the teacher outputs 3 classes, but 'mnist5k' has 10"):
        teachers.load(str(tmp_path / "three.keras"), info)
    rgb = _model((28, 28, 3), 10)
    for resize_ok in (False, True):
        with pytest.raises(ValueError, match=r"inputs of shape \(28, 28, 3\).*never the chan"):
            teachers.check_fits(rgb, info, "teacher", resize_ok=resize_ok)
        with pytest.raises(ValueError, match=r"inputs of shape \(784,\)"):
            teachers.check_fits(_model((784,), 10), info, "teacher", resize_ok=resize_ok)
    bigger = _model((32, 32, 1), 10)
    with pytest.raises(ValueError, match=r"inputs of shape \(32, 32, 1\).*--image_size"):
        teachers.check_fits(bigger, info, "teacher")
    teachers.check_fits(bigger, info, "teacher", resize_ok=True)  # the Distiller resizes
    bigger.save(tmp_path / "bigger.keras")
    loaded = teachers.load(str(tmp_path / "bigger.keras"), info, resize_ok=True)
    assert loaded.inputs[0].shape[1] == 32
    inputs = keras.Input((None, None, 1))  # any size
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    teachers.check_fits(keras.Model(inputs, keras.layers.Dense(10)(pooled)), info, "teacher")


@pytest.mark.parametrize("shape, fits", [
    ((28, 28, 1), True), ((32, 32, 1), True), ((None, None, 1), True), ((14, 40, 1), True),
    ((28, 28, 3), False), ((784,), False), ((28, 28), False), ((28, 28, 1, 1), False)])
def test_one_rule_for_model_against_data_and_teacher_against_student(shape, fits):
    """"Image models may differ in height and width, never in channels": a model fits
    28x28x1 data with resizing exactly when it may teach a 28x28x1 student."""
    import dataclasses


    @dataclasses.dataclass
    class Info:
        input_shape: tuple = (28, 28, 1)
        num_classes: int = 10
        name: str = "digits"

    if None in shape:  # any height and width: pooled, not flattened
        inputs = keras.Input(shape)
        model = keras.Model(inputs, keras.layers.Dense(10)(
            keras.layers.GlobalAveragePooling2D()(inputs)))
    else:
        model = _model(shape, 10)
    student = _model((28, 28, 1), 10)
    outcomes = []
    for check in (lambda: teachers.check_fits(model, Info(), "teacher", resize_ok=True),
                  lambda: shapes.check_same_io(model, student)):
        try:
            check()
            outcomes.append(True)
        except ValueError:
            outcomes.append(False)
    assert outcomes == [fits, fits]
    assert shapes.resizable(shape, (28, 28, 1)) == (len(shape) == 3 and fits)


# -- diagnosis -----------------------------------------------------------------------------


def reference(z, y, temperature):
    """Every figure of diagnose, the plain way (float64, loops for the bins)."""
    z = z.astype(np.float64)
    n, k = z.shape

    def softmax(a):
        e = np.exp(a)
        return e / e.sum(axis=1, keepdims=True)

    p1, pt = softmax(z), softmax(z / temperature)
    conf, pred = p1.max(axis=1), p1.argmax(axis=1)
    ece, edges = 0.0, np.linspace(0, 1, 16)
    for lo, hi in zip(edges[:-1], edges[1:]):  # Guo et al. 2017: bins (lo, hi]
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.sum() / n * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return {
        "accuracy": (pred == y).mean(), "errors": int((pred != y).sum()), "examples": n,
        "num_classes": k, "chance": 1 / k, "ece": ece,
        "top1_probability": pt.max(axis=1).mean(),
        # the one-hot check's figure: the same mean at max(T, 4) (README's teacher table)
        "top1_probability_at_reference": softmax(z / max(temperature, 4.0)).max(axis=1).mean(),
        "reference_temperature": max(temperature, 4.0),
        "entropy": -(pt * np.log(pt)).sum(axis=1).mean(), "max_entropy": np.log(k),
        "logit_std": np.mean([np.sqrt(np.mean((row - row.mean()) ** 2)) for row in z]),
        "temperature": temperature,
        "outputs_probabilities": bool(np.all(z >= 0)
                                      and all(abs(row.sum() - 1) < 1e-3 for row in z)),
    }


def assert_figures(got, want, rtol=1e-9):
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-12, err_msg=key)


def identity_teacher(k):
    return keras.Sequential([keras.Input((k,)), keras.layers.Identity()])


def test_diagnose_known_logits(rng):
    z = (rng.normal(size=(203, 7)) * 3).astype(np.float32)
    y = rng.integers(0, 7, size=203)
    ds = tf.data.Dataset.from_tensor_slices((z, y)).batch(50)
    got = diagnostics.diagnose(identity_teacher(7), ds, temperature=2.5)
    assert_figures(got, reference(z, y, 2.5))
    one_hot = tf.data.Dataset.from_tensor_slices((z, np.eye(7)[y])).batch(64)
    assert_figures(diagnostics.diagnose(identity_teacher(7), one_hot, 2.5), reference(z, y, 2.5))
    # all-zero logits: uniform soft targets, calibration |accuracy - 1/N|
    flat = diagnostics.diagnose(identity_teacher(4), [(np.zeros((8, 4)), np.array([0] * 2 + [1] * 6))])
    assert flat["accuracy"] == 0.25 and flat["errors"] == 6 and flat["logit_std"] == 0
    assert flat["top1_probability"] == pytest.approx(0.25) and flat["ece"] == pytest.approx(0)
    assert flat["entropy"] == pytest.approx(np.log(4)) == flat["max_entropy"]


def test_diagnose_errors():
    teacher = identity_teacher(3)
    with pytest.raises(ValueError, match="empty"):
        diagnostics.diagnose(teacher, [])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        diagnostics.diagnose(teacher, [(np.zeros((2, 3)), np.zeros(2))], temperature=0)
    with pytest.raises(ValueError, match="NaN or infinite on 1 of 2"):
        diagnostics.diagnose(teacher, [(np.array([[0, 1, np.nan], [0, 1, 2]]), np.zeros(2))])
    with pytest.raises(ValueError, match="labels do not fit the teacher's 3 classes"):
        diagnostics.diagnose(teacher, [(np.zeros((2, 3)), np.array([0, 3]))])


def test_diagnose_a_real_teacher_and_the_wrong_scale(elsewhere):
    model = modelfiles.load_model(str(elsewhere.folder / "t.keras"))
    logits_model, recovered = views.logits_model(model)
    assert recovered
    z = np.concatenate([logits_model(x / np.float32(255), training=False).numpy()
                        for x, _ in val_batches(elsewhere).as_numpy_iterator()])
    unit = diagnostics.diagnose(model, val_batches(elsewhere), 4.0, preprocessing="unit")
    assert_figures(unit, reference(z, elsewhere.y_val, 4.0), rtol=1e-5)
    assert unit["accuracy"] > 0.8
    raw = diagnostics.diagnose(model, val_batches(elsewhere), 4.0, preprocessing="none")
    print(f"\n0-1 teacher at T=4: top1_probability with 'unit' {unit['top1_probability']:.4f}, "
          f"with 'none' (raw 0-255) {raw['top1_probability']:.4f}; accuracy "
          f"{unit['accuracy']:.4f} / {raw['accuracy']:.4f}; logit std {unit['logit_std']:.2f} / "
          f"{raw['logit_std']:.2f}")
    print(diagnostics.describe(unit, "unit"))
    print(diagnostics.describe(raw, "none"))
    assert raw["top1_probability"] > unit["top1_probability"] + 0.2
    assert raw["logit_std"] > 10 * unit["logit_std"]


def test_describe_diagnosis():
    d = {"accuracy": 0.98, "errors": 20, "examples": 1000, "num_classes": 10, "chance": 0.1,
         "ece": 0.0123, "top1_probability": 0.6204, "entropy": 1.0512,
         "max_entropy": np.log(10), "logit_std": 4.06, "temperature": 4.0}
    assert diagnostics.describe(d) == (
        "teacher: val accuracy 98.00% (chance 10.00%), ECE 0.012, soft targets at T=4: top-1 "
        "probability 0.62, entropy 1.05 of 2.30 nats, logit std 4.1")
    assert diagnostics.describe(d, "teacher_1").startswith("teacher_1: val accuracy")


# -- the checks on a diagnosis ---------------------------------------------------------


@keras.saving.register_keras_serializable(package="test_teachers")
class _ScaledSoftmax(keras.layers.Layer):
    """A last layer keras_kd cannot cut: ``scale · softmax(z)`` (rows summing to ``scale``)."""

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, z):
        return keras.ops.softmax(z) * keras.ops.cast(self.scale, z.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@pytest.mark.parametrize("dtype, scale", [("float32", 1.0005), ("bfloat16", 1.01)])
def test_one_probability_rule_for_the_probe_and_the_diagnosis(dtype, scale, rng):
    """Outputs >= 0 whose rows sum to 1 within checks.PROBABILITY_SUM_TOLERANCE (1e-3;
    3e-2 for 16-bit outputs) are probabilities for the teacher's probe
    (teachers.check_logits) and for diagnose alike: one rule."""
    policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    z = keras.layers.Dense(3, dtype=policy)(inputs)
    teacher = keras.Model(inputs, _ScaledSoftmax(scale, dtype=policy)(z), name="t")
    x = rng.normal(size=(32, 4)).astype(np.float32)
    out = teacher(x)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    sums = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")).astype(np.float64).sum(-1)
    # the reference: rows off 1 by more than the old probe's 1e-4 (float32) or the old
    # diagnosis's 1e-3 (bfloat16), within the rule's tolerance of a softmax in that dtype
    assert np.abs(sums - 1).min() > (1e-4 if dtype == "float32" else 1e-3)
    assert np.abs(sums - 1).max() <= checks.PROBABILITY_SUM_TOLERANCE[
        "wide" if dtype == "float32" else "16-bit"]
    ds = tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, size=32))).batch(16)
    assert diagnostics.diagnose(teacher, ds, 2.0)["outputs_probabilities"]
    with pytest.raises(ValueError, match=r"the teacher \('t'\) outputs probabilities, not logits"):
        teachers.logits_view(teacher, dtype)
    assert checks.are_probabilities(np.array([[0.3, 0.7], [1.0, 0.0]]))
    assert not checks.are_probabilities(np.array([[0.3, 0.7], [1.0, 0.1]]))  # a row of 1.1
    assert not checks.are_probabilities(np.array([[1.3, -0.3]]))  # sums to 1, not >= 0
    assert checks.are_probabilities(np.array([[0.51, 0.5]]), "float16")
    assert not checks.are_probabilities(np.array([[0.51, 0.5]]), "float32")


def test_check_stops_a_near_chance_teacher_and_warns_on_one_hot_targets(elsewhere):
    model = modelfiles.load_model(str(elsewhere.folder / "t.keras"))
    unit = diagnostics.diagnose(model, val_batches(elsewhere), 4.0, preprocessing="unit")
    raw = diagnostics.diagnose(model, val_batches(elsewhere), 4.0, preprocessing="none")
    assert diagnostics.check(unit) == []  # fed right: no warning
    (note,) = diagnostics.check(raw)  # fed 0-255 pixels: one-hot soft targets
    assert "nearly one-hot" in note and "--teacher_preprocessing" in note
    assert "--temperature" in note
    chance = {**unit, "accuracy": 0.19}  # below twice chance (0.2) for 10 classes
    with pytest.raises(diagnostics.TeacherError, match=r"scores 19.00%.*chance 10.00%.*"
                       r"--teacher_preprocessing.*class.*order.*--min_teacher_accuracy"):
        diagnostics.check(chance)
    assert diagnostics.check(chance, min_accuracy=0.1) == []  # the override
    with pytest.raises(diagnostics.TeacherError, match="the bar 95.00%"):
        diagnostics.check(unit, min_accuracy=0.95)
    flat = {**unit, "logit_std": 0.25}  # nearly uniform soft targets
    assert any("nearly flat" in n for n in diagnostics.check(flat))
    # A softmax that could not be cut (inside the SavedModel): refused, with the fix.
    saved = modelfiles.load_model(str(elsewhere.folder / "t_savedmodel"))
    probs = diagnostics.diagnose(saved, val_batches(elsewhere), 4.0, preprocessing="unit")
    assert probs["outputs_probabilities"] and not unit["outputs_probabilities"]
    with pytest.raises(diagnostics.TeacherError, match="outputs probabilities, not logits.*"
                       "re-export the SavedModel"):
        diagnostics.check(probs)


# -- the job with a teacher from elsewhere -----------------------------------------------


def _job(tmp_path, name, *argv):
    from test_cli import TINY, run_cli

    out = tmp_path / name
    code = run_cli(TINY + ["--export=false", f"--output_dir={out}", *argv])
    return code, out


def test_job_with_a_teacher_from_elsewhere(elsewhere, tmp_path, capsys):
    """The 0-1 teacher: warned about when fed raw pixels, not with --teacher_preprocessing=unit
    (also as a legacy .h5); the figures in metrics.json and report.md."""
    keras_file = str(elsewhere.folder / "t.keras")
    code, out = _job(tmp_path, "raw", f"--teacher={keras_file}")
    assert code == 0
    printed = capsys.readouterr().out
    assert "warning: the teacher's soft targets are nearly one-hot even at T=4" in printed
    for teacher in (keras_file, str(elsewhere.folder / "t.h5")):
        code, out = _job(tmp_path, f"unit{teacher[-2:]}", f"--teacher={teacher}",
                         "--teacher_preprocessing=unit")
        assert code == 0
        printed = capsys.readouterr().out
        assert "nearly one-hot" not in printed and "teacher: val accuracy" in printed
        metrics = json.loads((out / "metrics.json").read_text())
        (diagnosis,) = metrics["teacher_diagnostics"]["teachers"]
        assert diagnosis["preprocessing"] == "unit" and diagnosis["accuracy"] > 0.8
        assert metrics["teacher_diagnostics"]["warnings"] == []
        assert metrics["config"]["teacher_preprocessing"] == "unit"
        teacher_row = next(r for r in metrics["models"] if r["model"] == "teacher")
        assert teacher_row["accuracy"] == diagnosis["accuracy"]
        report_md = (out / "report.md").read_text()
        assert "## Teacher" in report_md and "| teacher | `unit` |" in report_md


def test_every_ensemble_member_is_checked(elsewhere, tmp_path, capsys):
    """A member that outputs probabilities (a softmax inside its SavedModel) stops the run,
    although the ensemble's own figures would not show it."""
    members = f"{elsewhere.folder / 't.keras'},{elsewhere.folder / 't_savedmodel'}"
    code, out = _job(tmp_path, "mixed", f"--teacher={members}", "--teacher_preprocessing=unit")
    err = capsys.readouterr().err
    assert code == 2 and "the teacher_2 ('t_savedmodel') outputs probabilities, not logits" in err
    assert not (out / "baseline.keras").exists()


def test_job_stops_before_any_student_on_a_near_chance_teacher(tmp_path, capsys):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((28, 28, 1))
    constant = keras.Model(inputs, keras.layers.Dense(
        10, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(
            [5.0] + [0.0] * 9))(keras.layers.Flatten()(inputs)))  # always class 0: 10%
    constant.save(tmp_path / "bad.keras")
    code, out = _job(tmp_path, "bad", f"--teacher={tmp_path / 'bad.keras'}")
    captured = capsys.readouterr()
    assert code == 2 and "cannot teach this data; no student was trained" in captured.err
    assert "baseline:" not in captured.out and not (out / "baseline.keras").exists()
    code, out = _job(tmp_path, "accepted", f"--teacher={tmp_path / 'bad.keras'}",
                     "--min_teacher_accuracy=0")
    assert code == 0 and (out / "student.keras").exists()


def test_job_with_an_ensemble_and_a_teacher_at_its_own_size(tmp_path):
    code, out = _job(tmp_path, "ens", "--teacher_arch=mlp:hidden=16,cnn:width=0.125",
                     "--teacher_image_size=32,32", "--teacher_weights=1,3", "--export=true",
                     "--export_quantization=none")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["model"]: r for r in metrics["models"]}
    assert {"teacher_1", "teacher_2", "ensemble", "baseline", "distilled"} == set(rows)
    assert rows["ensemble"]["params"] == rows["teacher_1"]["params"] + rows["teacher_2"]["params"]
    diagnosed = metrics["teacher_diagnostics"]["teachers"]
    assert [d["model"] for d in diagnosed] == ["teacher_1", "teacher_2", "ensemble"]
    assert metrics["config"]["teacher_weights"] == "1,3"
    report_md = (out / "report.md").read_text()
    assert "| teacher_1 |" in report_md and "| ensemble |" in report_md
    assert (out / "teacher_1.keras").exists() and (out / "teacher_2.keras").exists()
    for name in ("teacher_1", "teacher_2"):  # trained at 32x32 on the 28x28 digits
        assert keras.saving.load_model(out / f"{name}.keras").inputs[0].shape[1:3] == (32, 32)
    sidecar = json.loads((out / "student.json").read_text())
    assert sidecar["input"]["shape"] == [1, 28, 28, 1]  # the student keeps its own size
    assert metrics["tflite"]["agreement"] >= 0.99


def test_one_hot_is_judged_at_a_raised_temperature_not_the_runs_low_one():
    """T = 1 (the job's default) makes any good teacher's clean-image targets peaked; the
    warning is for targets that stay one-hot when raised to T = 4 (a teacher fed the wrong
    scale), checked on the logits of a sharp but sane teacher and a 255x one."""
    sane = np.array([[6.0, 1.0, 0.0, -1.0]] * 8)  # top-1 0.99 at T=1, 0.60 at T=4
    for t in (1.0, 4.0):
        d = diagnostics._figures(sane, np.zeros(8), t)
        assert d["reference_temperature"] == 4.0
        want = np.exp(sane[0] / 4 - np.log(np.exp(sane[0] / 4).sum())).max()
        assert d["top1_probability_at_reference"] == pytest.approx(want)
        assert diagnostics.check({**d, "accuracy": 1.0}) == []
    assert diagnostics._figures(sane, np.zeros(8), 1.0)["top1_probability"] > 0.98
    scaled = diagnostics._figures(255 * sane, np.zeros(8), 1.0)
    (note,) = diagnostics.check({**scaled, "accuracy": 1.0})
    assert "nearly one-hot even at T=4" in note
    assert diagnostics._figures(sane, np.zeros(8), 8.0)["reference_temperature"] == 8.0


def test_the_default_bar_is_twice_chance_but_reachable():
    base = {"ece": 0.0, "top1_probability": 0.5, "entropy": 0.5, "max_entropy": 0.69,
            "logit_std": 2.0, "temperature": 3.0}
    with pytest.raises(diagnostics.TeacherError, match="the bar 20.00%"):
        diagnostics.check({**base, "accuracy": 0.199, "chance": 0.1})
    assert diagnostics.check({**base, "accuracy": 0.2, "chance": 0.1}) == []
    # Two classes: twice chance would be 100 %; the bar is halfway, 75 %.
    with pytest.raises(diagnostics.TeacherError, match="the bar 75.00%"):
        diagnostics.check({**base, "accuracy": 0.7, "chance": 0.5})
