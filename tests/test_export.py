"""TFLite export in every quantization mode: the LiteRT file behaves like Keras."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import _io, data, export, models


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    train, val, info = data.load("mnist5k", batch_size=64, seed=0)
    model = models.build("cnn:width=0.25", info.input_shape, info.num_classes, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(train.take(40), epochs=1, verbose=0)
    return model, val.take(4), info


@pytest.fixture(scope="module")
def arrays():
    """mnist5k as arrays: the first 300 training images calibrate int8; the
    1,000 held-back validation images check the files."""
    (x_train, _), (x_val, y_val), _ = data.load_arrays("mnist5k")
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(100)
    return x_train[:300], val


def test_export_and_verify_agree_with_keras(trained, tmp_path):
    model, val, info = trained
    path = export.to_tflite(model, str(tmp_path / "s.tflite"), class_names=info.class_names)
    assert os.path.getsize(path) > 1000
    with open(export.labels_path(path)) as f:
        assert f.read().split() == list(info.class_names)
    result = export.verify(path, val, reference_model=model)
    assert result["examples"] == 256
    assert result["agreement"] >= 0.99
    assert result["max_abs_diff"] < 1e-3
    # The accuracy is computed independently of the Keras path.
    x = np.concatenate([b[0].numpy() for b in val])
    y = np.concatenate([b[1].numpy() for b in val])
    keras_acc = np.mean(model.predict(x, verbose=0).argmax(-1) == y)
    assert abs(result["accuracy"] - keras_acc) <= 1 / 256 + 1e-9
    assert result["latency_ms_median"] > 0
    assert result["size_bytes"] == os.path.getsize(path)


def test_interpreter_takes_raw_pixels_and_returns_logits(trained, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, val, _ = trained
    path = export.to_tflite(model, str(tmp_path / "s.tflite"))
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, 28, 28, 1] and inp["dtype"] == np.float32
    image = next(iter(val))[0][:1].numpy()
    assert image.max() > 1.0  # raw 0-255 pixels go in, no preprocessing
    it.set_tensor(inp["index"], image)
    it.invoke()
    np.testing.assert_allclose(
        it.get_tensor(out["index"]), model.predict(image, verbose=0), atol=1e-4
    )


def test_probabilities_option_appends_softmax(trained, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, val, _ = trained
    path = export.to_tflite(model, str(tmp_path / "p.tflite"), probabilities=True)
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    image = next(iter(val))[0][:1].numpy()
    it.set_tensor(it.get_input_details()[0]["index"], image)
    it.invoke()
    probs = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        probs, tf.nn.softmax(model.predict(image, verbose=0)).numpy(), atol=1e-5
    )


def test_failed_conversion_leaves_an_existing_file_untouched(trained, tmp_path, monkeypatch):
    model, _, _ = trained
    path = tmp_path / "s.tflite"
    path.write_bytes(b"a good old export")

    real = tf.lite.TFLiteConverter.from_keras_model

    def failing_converter(m):
        converter = real(m)

        def boom():
            raise RuntimeError("conversion failed")

        converter.convert = boom
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", failing_converter)
    with pytest.raises(RuntimeError, match="conversion failed"):
        export.to_tflite(model, str(path))
    assert path.read_bytes() == b"a good old export"
    assert sorted(os.listdir(tmp_path)) == ["s.tflite"]  # no temp files left


def test_failed_write_leaves_no_partial_file(trained, tmp_path, monkeypatch):
    from keras_kd import _io

    def bad_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "replace", bad_replace)
    with pytest.raises(OSError, match="disk full"):
        _io.write_bytes(str(tmp_path / "x.tflite"), b"123")
    assert os.listdir(tmp_path) == []


def test_export_errors(trained, tmp_path):
    model, _, _ = trained
    with pytest.raises(ValueError, match="keras.Model"):
        export.to_tflite("student.keras", str(tmp_path / "s.tflite"))
    with pytest.raises(ValueError, match=r"\.tflite"):
        export.to_tflite(model, str(tmp_path / "s.bin"))
    inputs = keras.Input((None, None, 1))
    flexible = keras.Model(
        inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    with pytest.raises(ValueError, match="not fully fixed"):
        export.to_tflite(flexible, str(tmp_path / "f.tflite"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot create"):
        export.to_tflite(model, str(blocker / "s.tflite"))


def test_softmax_ending_model_exports_logits_or_probabilities_once(trained, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, val, _ = trained
    probs_model = keras.Model(model.inputs, keras.layers.Softmax()(model.outputs[0]))
    image = next(iter(val))[0][:1].numpy()
    logits = model.predict(image, verbose=0)
    for probabilities, expected in ((False, logits), (True, tf.nn.softmax(logits).numpy())):
        path = export.to_tflite(probs_model, str(tmp_path / f"{probabilities}.tflite"),
                                probabilities=probabilities)
        it = Interpreter(model_path=path)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], image)
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        check = export.verify(path, val, reference_model=probs_model, probabilities=probabilities)
        assert check["agreement"] >= 0.99 and check["max_abs_diff"] < 1e-4


def test_a_mixed_float16_model_is_exported_in_float32(trained, tmp_path):
    """TFLite's builtin kernels take no float16: the file computes what a
    float32 model with the same weights computes."""
    _, val, info = trained
    reference = models.build("mlp:hidden=32", info.input_shape, info.num_classes, seed=3)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build("mlp:hidden=32", info.input_shape, info.num_classes, seed=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    path = export.to_tflite(model, str(tmp_path / "m.tflite"))
    result = export.verify(path, val, reference_model=reference)
    assert result["agreement"] == 1.0 and result["max_abs_diff"] < 1e-3


def test_written_files_get_the_usual_permissions(trained, tmp_path):
    model, _, _ = trained
    path = export.to_tflite(model, str(tmp_path / "s.tflite"), class_names=["a"] * 10)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def _tensor_dtypes(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    dtypes = [np.dtype(t["dtype"]).name for t in it.get_tensor_details()]
    return it, {d: dtypes.count(d) for d in set(dtypes)}


@pytest.mark.parametrize(
    "mode, int8_io, min_agreement",
    [("none", False, 0.99), ("float16", False, 0.99), ("dynamic", False, 0.97),
     ("int8", False, 0.97), ("int8", True, 0.97)],
)
def test_each_quantization_mode_loads_and_agrees(trained, arrays, tmp_path, mode, int8_io,
                                                 min_agreement):
    model, _, info = trained
    representative, val = arrays
    path = export.to_tflite(model, str(tmp_path / "s.tflite"), mode, representative,
                            int8_io=int8_io, class_names=info.class_names)
    it, dtypes = _tensor_dtypes(path)  # loads in the LiteRT interpreter
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    io_dtype = np.int8 if int8_io else np.float32
    assert inp["dtype"] == io_dtype and out["dtype"] == io_dtype
    # What each mode stores: float16 weights; int8 weights with float
    # activations; int8 everywhere but the float input and output.
    assert ("float16" in dtypes) == (mode == "float16")
    assert ("int8" in dtypes) == (mode in ("dynamic", "int8"))
    if mode == "dynamic":
        assert dtypes["float32"] > 2
    if mode == "int8":
        assert dtypes.get("float32", 0) == (0 if int8_io else 2)
    result = export.verify(path, val, reference_model=model)
    assert result["examples"] == 1000  # held-back validation images
    assert result["agreement"] >= min_agreement, result
    assert result["quantization"] == mode
    assert result["input_dtype"] == np.dtype(io_dtype).name
    assert np.isfinite(result["max_abs_diff"])


def test_int8_and_dynamic_files_are_at_most_035x_float32(tmp_path):
    """On a Dense-heavy model (101,770 weights) the header does not dominate."""
    model = models.build("mlp:hidden=128", (28, 28, 1), 10, seed=0)
    representative = np.random.default_rng(0).uniform(0, 255, (50, 28, 28, 1))
    sizes = {
        mode: os.path.getsize(export.to_tflite(model, str(tmp_path / f"{mode}.tflite"), mode,
                                               representative))
        for mode in export.QUANTIZATIONS
    }
    assert sizes["none"] > 4 * 100_000  # float32 weights
    assert sizes["int8"] <= 0.35 * sizes["none"], sizes
    assert sizes["dynamic"] <= 0.35 * sizes["none"], sizes
    assert sizes["float16"] <= 0.55 * sizes["none"], sizes


def test_metadata_describes_the_file(trained, arrays, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, _, info = trained
    representative, _ = arrays
    path = export.to_tflite(model, str(tmp_path / "app.tflite"), "int8", representative,
                            probabilities=True, int8_io=True, class_names=info.class_names)
    inside = export.read_metadata(path)
    with open(export.metadata_path(path)) as f:
        beside = json.load(f)
    assert export.metadata_path(path) == str(tmp_path / "app.json")
    assert inside == beside
    assert inside["format"] == "keras_kd.tflite/1" and inside["quantization"] == "int8"
    assert inside["model_file"] == "app.tflite" and inside["labels_file"] == "app.labels.txt"
    assert inside["class_names"] == list(info.class_names)
    assert inside["input"]["shape"] == [1, 28, 28, 1]
    assert inside["input"]["dtype"] == "int8" and inside["input"]["value_range"] == [0, 255]
    assert inside["output"]["kind"] == "probabilities" and inside["output"]["shape"] == [1, 10]
    assert inside["flex_ops"] == [] and inside["representative_examples"] == 300
    it = Interpreter(model_path=path)
    for detail, described in ((it.get_input_details()[0], inside["input"]),
                              (it.get_output_details()[0], inside["output"])):
        scale, zero_point = detail["quantization"]
        assert described["quantization"] == pytest.approx(
            {"scale": scale, "zero_point": zero_point})
    # Calibrated on raw 0-255 pixels: the int8 input is pixel - 128.
    assert inside["input"]["quantization"] == {"scale": 1.0, "zero_point": -128}
    float_path = export.to_tflite(model, str(tmp_path / "f.tflite"))
    assert export.read_metadata(float_path)["input"]["quantization"] is None
    assert export.read_metadata(float_path)["output"]["kind"] == "logits"


def test_verify_dequantizes_int8_probabilities(trained, arrays, tmp_path):
    """verify reads the output kind from the metadata and compares dequantized values."""
    model, _, _ = trained
    representative, val = arrays
    path = export.to_tflite(model, str(tmp_path / "p.tflite"), "int8", representative,
                            probabilities=True, int8_io=True)
    result = export.verify(path, val, reference_model=model)
    assert result["output_kind"] == "probabilities"
    assert result["max_abs_diff"] < 0.2  # probabilities, not raw int8 codes
    assert result["agreement"] >= 0.97


def _flex_model(op):
    inputs = keras.Input((8,))
    hidden = keras.layers.Lambda(op, name="special")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def test_flex_ops_are_refused_unless_allowed(tmp_path):
    model = _flex_model(lambda x: tf.math.cumprod(x, axis=-1))
    path = str(tmp_path / "f.tflite")
    with pytest.raises(ValueError, match=r"builtin kernels do not have: Cumprod.*allow_flex"):
        export.to_tflite(model, path)
    assert os.listdir(tmp_path) == []
    export.to_tflite(model, path, allow_flex=True)
    assert export.read_metadata(path)["flex_ops"] == ["Cumprod"]
    x = tf.data.Dataset.from_tensor_slices((np.ones((4, 8), np.float32), np.zeros(4))).batch(2)
    with pytest.raises(ValueError, match="Flex"):  # ai-edge-litert has no Flex delegate
        export.verify(path, x, reference_model=model)
    with pytest.raises(export.AgreementError, match="cannot be measured"):
        export.export_verified(model, str(tmp_path / "g.tflite"), x, quantization="none",
                               allow_flex=True, min_agreement=0.99)
    unchecked = export.export_verified(model, str(tmp_path / "h.tflite"), x,
                                       quantization="none", allow_flex=True)
    assert unchecked["verified"] is False and unchecked["flex_ops"] == ["Cumprod"]


def test_ops_that_not_even_flex_has_are_named(tmp_path):
    model = _flex_model(lambda x: tf.math.erfinv(tf.sigmoid(x)))
    with pytest.raises(ValueError, match="neither LiteRT's builtins nor the Flex.*Erfinv"):
        export.to_tflite(model, str(tmp_path / "e.tflite"), allow_flex=True)


@pytest.mark.parametrize("mode", ["dynamic", "int8"])
def test_failed_quantized_conversion_leaves_an_existing_file_untouched(
        trained, arrays, tmp_path, monkeypatch, mode):
    model, _, _ = trained
    representative, _ = arrays
    for name in ("s.tflite", "s.json"):
        (tmp_path / name).write_bytes(b"a good old " + name.encode())
    real = tf.lite.TFLiteConverter.from_keras_model

    def failing_converter(m):
        converter = real(m)
        converter.convert = lambda: (_ for _ in ()).throw(RuntimeError("conversion failed"))
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", failing_converter)
    with pytest.raises(RuntimeError, match="conversion failed"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), mode, representative)
    assert (tmp_path / "s.tflite").read_bytes() == b"a good old s.tflite"
    assert (tmp_path / "s.json").read_bytes() == b"a good old s.json"
    assert sorted(os.listdir(tmp_path)) == ["s.json", "s.tflite"]  # no temp files left


def test_export_verified_keeps_a_good_file_when_the_new_one_disagrees(trained, arrays,
                                                                      tmp_path):
    model, _, info = trained
    _, val = arrays
    good = export.export_verified(model, str(tmp_path / "s.tflite"), val,
                                  quantization="none", min_agreement=0.99,
                                  class_names=info.class_names)
    assert good["agreement"] >= 0.99 and good["quantization"] == "none"
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    assert sorted(before) == ["s.json", "s.labels.txt", "s.tflite"]
    assert json.loads(before["s.json"])["verification"]["agreement"] == good["agreement"]
    # Calibrating int8 on blank images maps every real digit to one class.
    blank = np.zeros((20, 28, 28, 1), np.float32)
    with pytest.raises(export.AgreementError, match=r"fewer than 97\.00%.*int8"):
        export.export_verified(model, str(tmp_path / "s.tflite"), val, quantization="int8",
                               representative_data=blank, min_agreement=0.97)
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before


def test_auto_keeps_the_first_mode_that_reaches_the_bar(trained, arrays, tmp_path):
    model, _, _ = trained
    representative, val = arrays
    result = export.export_verified(model, str(tmp_path / "a.tflite"), val,
                                    representative_data=representative)
    assert result["candidates"][0]["quantization"] == "int8"
    assert result["quantization"] == result["candidates"][-1]["quantization"]
    assert result["agreement"] >= export.AUTO_MIN_AGREEMENT
    assert all(c["agreement"] < export.AUTO_MIN_AGREEMENT for c in result["candidates"][:-1])
    assert export.read_metadata(str(tmp_path / "a.tflite"))["quantization"] == \
        result["quantization"]
    # A bar only float32 can meet: every smaller mode is tried first.
    strict = export.export_verified(model, str(tmp_path / "b.tflite"), val,
                                    representative_data=representative, min_agreement=1.0)
    assert [c["quantization"] for c in strict["candidates"]][0] == "int8"
    assert strict["agreement"] == 1.0
    # Without representative data, auto starts at dynamic.
    no_data = export.export_verified(model, str(tmp_path / "c.tflite"), val)
    assert no_data["candidates"][0]["quantization"] == "dynamic"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_quantization_errors(trained, tmp_path):
    model, val, _ = trained
    with pytest.raises(ValueError, match="needs representative_data.*dynamic"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "int8")
    with pytest.raises(ValueError, match="unknown quantization='int4'"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "int4")
    with pytest.raises(ValueError, match="unknown quantization='auto'.*export_verified"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "auto")
    with pytest.raises(ValueError, match="int8_io needs quantization=int8, got 'dynamic'"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "dynamic", int8_io=True)
    with pytest.raises(ValueError, match="int8_io needs quantization=int8, got 'auto'"):
        export.export_verified(model, str(tmp_path / "s.tflite"), val, int8_io=True)
    with pytest.raises(ValueError, match="is empty"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "int8", np.zeros((0, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"shape \(32, 32, 3\)"):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "int8", np.zeros((4, 32, 32, 3)))
    with pytest.raises(ValueError, match="min_agreement must be a fraction in"):
        export.export_verified(model, str(tmp_path / "s.tflite"), val, min_agreement=99)
    assert os.listdir(tmp_path) == []


def test_check_settings_names_the_flag_or_the_argument():
    for mode in ("auto", *export.QUANTIZATIONS):
        export.check_settings(mode, None, int8_io=mode == "int8")
    export.check_settings("int8", 0.0, True, flag="quantization", auto=False)
    export.check_settings("none", 1.0)
    with pytest.raises(ValueError, match=r"^unknown --export_quantization='int4'; "
                                         r"valid: auto, none, float16, dynamic, int8\.$"):
        export.check_settings("int4", flag="--export_quantization")
    with pytest.raises(ValueError, match=r"^unknown quantization='auto'; "
                                         r"valid: none, float16, dynamic, int8\. .*export_verified"):
        export.check_settings("auto", flag="quantization", auto=False)
    with pytest.raises(ValueError, match="^--int8_io needs --quantization=int8, got 'auto': "
                                         "only a fully integer model"):
        export.check_settings("auto", int8_io=True)
    with pytest.raises(ValueError, match="^int8_io needs quantization=int8, got 'float16'"):
        export.check_settings("float16", int8_io=True, flag="quantization")
    for bad in (-0.01, 1.5, 99):
        with pytest.raises(ValueError, match=r"^--min_agreement must be a fraction in \[0, 1\] "
                                             r"\(e\.g\. 0\.99\), got "):
            export.check_settings("auto", bad)
    with pytest.raises(ValueError, match="^min_agreement must be a fraction"):
        export.check_settings("dynamic", 2, flag="quantization")


def _dead_relu_model():
    """A hidden layer whose ReLUs never fire: its int8 scale degenerates."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dead = keras.layers.Dense(8, activation="relu",
                              bias_initializer=keras.initializers.Constant(-1e3))
    logits = keras.layers.Dense(10, bias_initializer=keras.initializers.RandomNormal(seed=0))
    return keras.Model(inputs, logits(dead(x)))


def test_int8_file_that_does_not_run_is_refused(arrays, tmp_path):
    representative, val = arrays
    model = _dead_relu_model()
    with pytest.raises(export.RuntimeCheckError, match="does not run in the LiteRT.*dynamic"):
        export.to_tflite(model, str(tmp_path / "d.tflite"), "int8", representative)
    assert os.listdir(tmp_path) == []
    result = export.export_verified(model, str(tmp_path / "d.tflite"), val,
                                    representative_data=representative, log=print)
    assert "does not run" in result["candidates"][0]["error"]
    assert result["quantization"] == "dynamic" and result["agreement"] == 1.0


# ---------------------------------------------------------------- temporary folders


def test_an_export_interrupted_inside_the_converter_leaves_no_temporary_folder(
        trained, arrays, tmp_path, monkeypatch):
    """Ctrl-C while the converter calibrates int8: its SavedModel was written into a
    hidden folder beside the output (not /tmp), which is gone afterwards."""
    import tempfile

    model, _, _ = trained
    representative, _ = arrays
    real, seen = tf.lite.TFLiteConverter.from_keras_model, {}

    def interrupted_converter(m):
        converter = real(m)
        convert = converter.convert

        def interrupting():
            seen["tempdir"] = tempfile.gettempdir()
            seen["inside"] = os.listdir(seen["tempdir"])  # the converter's SavedModel
            raise KeyboardInterrupt
            yield  # a generator, as the converter expects

        def run():
            converter.representative_dataset = interrupting
            return convert()

        converter.convert = run
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", interrupted_converter)
    before = tempfile.tempdir
    with pytest.raises(KeyboardInterrupt):
        export.to_tflite(model, str(tmp_path / "s.tflite"), "int8", representative)
    assert os.path.dirname(seen["tempdir"]) == str(tmp_path)
    assert os.path.basename(seen["tempdir"]).startswith(_io.TEMP_PREFIX)
    assert seen["inside"]  # the converter really wrote its files there
    assert not os.path.exists(seen["tempdir"])
    assert os.listdir(tmp_path) == []
    assert tempfile.tempdir == before


def test_temporary_folders_of_killed_exports_are_swept(trained, tmp_path):
    """A folder left by an export killed outright (SIGKILL: no finally) is removed by
    the next export into that folder; one of a live process or another host is kept."""
    import socket
    import subprocess
    import sys

    model, _, _ = trained
    host = _io.host_name()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{_io.TEMP_PREFIX}{host}-{dead_pid}-abc123"
    live = tmp_path / f"{_io.TEMP_PREFIX}{host}-{os.getppid()}-def456"
    other_host = tmp_path / f"{_io.TEMP_PREFIX}not{host}-{dead_pid}-ghi789"
    for folder in (stale, live, other_host):
        (folder / "tmpsaved" / "assets").mkdir(parents=True)
    assert socket.gethostname()  # the names are this host's
    export.to_tflite(model, str(tmp_path / "s.tflite"))
    assert not stale.exists()
    assert live.exists() and other_host.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live.name, other_host.name, "s.json", "s.tflite"])


# ---------------------------------------------------------------- a clean console


NOISE = (
    "I0000 00:00:1796120549.966138   19771 reader.cc:83] Reading SavedModel from: /tmp/x\n"
    "W0000 00:00:1796120549.965808   19771 tf_tfl_flatbuffer_helpers.cc:364] Ignored "
    "output_format.\n"
    "I1201 10:22:29.700004 140001088334720 signature_serialization.py:156] Function "
    "`function` contains input name(s) resource with unsupported characters\n"
    "INFO:tensorflow:Assets written to: /tmp/tmp2kvwuyrn/assets\n"
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
    "output_inference_type: FLOAT32\n"
)


def test_the_console_filter_drops_info_lines_and_keeps_errors(capfd):
    """What C++ code writes to fd 2 around a converter/LiteRT call: TensorFlow's and
    LiteRT's INFO/WARNING lines are dropped, an error line and anything unknown are
    kept (also when the call raises); with tensorflow_logs(True) all of it shows."""
    import logging

    from keras_kd import _console

    kept = ("E0000 00:00:1796120550.1   19771 convert.cc:12] a real converter error\n"
            "an unknown line\n")
    logger = logging.getLogger("tensorflow")
    level = logger.level
    with pytest.raises(RuntimeError, match="the call failed"):
        with _console.quiet_tensorflow():
            assert not logger.isEnabledFor(logging.INFO)
            os.write(2, (NOISE + kept).encode())
            raise RuntimeError("the call failed")
    assert capfd.readouterr().err == kept
    assert logger.level == level
    with _console.tensorflow_logs(True), _console.quiet_tensorflow():
        os.write(2, NOISE.encode())
    assert capfd.readouterr().err == NOISE
    assert logger.level == level


def test_the_console_filter_passes_lines_on_as_they_come(capfd):
    """A line the call writes reaches the console while the call still runs, so a
    converter that then dies in C++ (no ``finally``) does not take its last words
    with it."""
    import time

    from keras_kd import _console

    seen = ""
    with _console.quiet_tensorflow():
        os.write(2, b"F0000 00:00:1796120550.1   19771 convert.cc:12] Check failed: x\n")
        deadline = time.monotonic() + 10
        while "Check failed" not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
            seen += capfd.readouterr().err
    assert "Check failed: x" in seen
