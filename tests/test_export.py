"""Float32 TFLite export: the LiteRT file behaves like the Keras model."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import data, export, models


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    train, val, info = data.load("mnist5k", batch_size=64, seed=0)
    model = models.build("cnn:width=0.25", info.input_shape, info.num_classes, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(train.take(20), epochs=1, verbose=0)
    return model, val.take(4), info


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


def test_written_files_get_the_usual_permissions(trained, tmp_path):
    model, _, _ = trained
    path = export.to_tflite(model, str(tmp_path / "s.tflite"), class_names=["a"] * 10)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
