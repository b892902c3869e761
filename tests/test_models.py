"""Tests for keras_kd.models: builders by name that map raw pixels to logits."""

import random
import re

import keras
import numpy as np
import pytest

from keras_kd import models
from keras_kd.models import ARCHITECTURES, build, count_params, describe, parse_spec

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)

# Architectures that are cheap to build (< ~1 s) at 28x28x1.
CHEAP = ["mlp", "cnn", "resnet_cifar", "mobilenet_v2", "mobilenet_v3_small"]


def _raw_pixels(rng, shape, n=4):
    return rng.uniform(0.0, 255.0, size=(n,) + tuple(shape)).astype("float32")


def _layer_output(model, layer_name, x):
    """Runs the model's graph from its input up to one named layer."""
    probe = keras.Model(model.input, model.get_layer(layer_name).output)
    return keras.ops.convert_to_numpy(probe(x, training=False))


def _dense_params(n_in, n_out):
    return n_in * n_out + n_out


def _conv_params(k, c_in, c_out, bias=False):
    return k * k * c_in * c_out + (c_out if bias else 0)


def _bn_params(c):  # gamma, beta, moving mean, moving variance
    return 4 * c


def _assert_logits_head(model, num_classes):
    last = model.layers[-1]
    assert isinstance(last, keras.layers.Dense)
    assert last.name == "logits"
    assert last.units == num_classes
    assert last.activation is keras.activations.linear
    assert model.outputs[0] is last.output
    assert tuple(model.output_shape) == (None, num_classes)


# ----------------------------------------------------------------- parse_spec


def test_architectures_are_the_documented_names():
    assert ARCHITECTURES == (
        "mlp", "cnn", "resnet_cifar", "resnet50", "resnet101", "resnet152",
        "mobilenet_v2", "mobilenet_v3_small",
    )
    assert isinstance(ARCHITECTURES, tuple)


# Validation cases are looped inside a few tests, not parametrized: the
# autouse fixture's clear_session costs ~0.3 s per test once big models exist.
PARSE_EXAMPLES = [
    ("cnn", "cnn", {"width": 1.0, "dropout": 0.0, "batchnorm": 0, "gap": 0}),
    ("cnn:width=2", "cnn", {"width": 2.0, "dropout": 0.0, "batchnorm": 0, "gap": 0}),
    ("mlp", "mlp", {"hidden": (1200, 1200), "dropout": 0.0}),
    ("mlp:hidden=1200x1200,dropout=0.2", "mlp",
     {"hidden": (1200, 1200), "dropout": 0.2}),
    ("mlp:hidden=800x800", "mlp", {"hidden": (800, 800), "dropout": 0.0}),
    ("mlp:hidden=64", "mlp", {"hidden": (64,), "dropout": 0.0}),
    ("mobilenet_v2:alpha=0.35", "mobilenet_v2", {"alpha": 0.35}),
    ("mobilenet_v3_small", "mobilenet_v3_small", {"alpha": 1.0}),
    ("resnet50", "resnet50", {}),
    ("resnet_cifar:depth=20,width=1", "resnet_cifar", {"depth": 20, "width": 1.0}),
    ("resnet_cifar:depth=56", "resnet_cifar", {"depth": 56, "width": 1.0}),
    ("  CNN : width = 0.5 , dropout=0.1 ", "cnn",
     {"width": 0.5, "dropout": 0.1, "batchnorm": 0, "gap": 0}),
]


def test_parse_spec_examples():
    for spec, arch, options in PARSE_EXAMPLES:
        got_arch, got_options = parse_spec(spec)
        assert got_arch == arch, spec
        assert got_options == options, spec
        for key, value in options.items():
            assert type(got_options[key]) is type(value), (spec, key)


def test_parse_spec_returns_a_fresh_dict():
    _, a = parse_spec("cnn")
    a["width"] = 99.0
    assert parse_spec("cnn")[1]["width"] == 1.0


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError) as err:
        parse_spec("vgg16:width=2")
    message = str(err.value)
    assert "vgg16" in message
    for arch in ARCHITECTURES:
        assert arch in message


def test_spec_must_be_a_non_empty_string():
    for spec in ["", "   ", None, 3, ["cnn"]]:
        with pytest.raises(ValueError, match="non-empty string"):
            parse_spec(spec)


def test_unknown_option_names_it_and_lists_valid_options():
    with pytest.raises(ValueError) as err:
        parse_spec("cnn:depth=3")
    message = str(err.value)
    assert "'depth'" in message and "'cnn'" in message
    assert "width" in message and "dropout" in message


def test_option_on_architecture_without_options():
    with pytest.raises(ValueError, match="takes no options"):
        parse_spec("resnet50:alpha=1")


MALFORMED = [
    ("cnn:width", "Malformed option 'width'"),
    ("cnn:=2", "Malformed option '=2'"),
    ("cnn:width=", "Malformed option 'width='"),
    ("cnn:", "Malformed option ''"),
    ("cnn:width=2,,dropout=0.1", "Malformed option ''"),
    ("cnn:width=2,width=3", "given twice"),
    ("cnn:width=abc", "expected a number"),
    ("cnn:width=nan", "finite"),
    ("resnet_cifar:depth=20.0", "expected an integer"),
    ("mlp:hidden=12xab", "separated by 'x'"),
]


def test_malformed_options():
    for spec, fragment in MALFORMED:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            parse_spec(spec)


BAD_VALUES = [
    ("cnn:width=0", "width"),
    ("cnn:width=-1", "width"),
    ("resnet_cifar:width=0", "width"),
    ("resnet_cifar:depth=21", "depth"),
    ("resnet_cifar:depth=2", "depth"),
    ("resnet_cifar:depth=-4", "depth"),
    ("mobilenet_v2:alpha=0", "alpha"),
    ("mobilenet_v3_small:alpha=-0.5", "alpha"),
    ("mlp:dropout=1.0", "dropout"),
    ("mlp:dropout=-0.1", "dropout"),
    ("cnn:dropout=1.5", "dropout"),
    ("mlp:hidden=0x10", "hidden"),
]


def test_bad_option_values_name_the_option():
    for spec, option in BAD_VALUES:
        with pytest.raises(ValueError) as err:
            parse_spec(spec)
        message = str(err.value)
        assert f"Bad value for option {option!r}" in message, spec
        assert "valid options" in message, spec


def test_depth_error_explains_6n_plus_2():
    with pytest.raises(ValueError, match=r"6n\+2"):
        build("resnet_cifar:depth=21", CIFAR, 10)


def test_describe():
    assert describe("cnn:width=0.5").startswith("cnn: ")
    assert "16/32/64" in describe("cnn:width=0.5")
    assert "ResNet-20" in describe("resnet_cifar")
    assert "800x800" in describe("mlp:hidden=800x800")
    for arch in ARCHITECTURES:
        text = describe(arch)
        assert text.startswith(arch + ":") and "\n" not in text
    with pytest.raises(ValueError, match="Unknown architecture"):
        describe("nope")


# ------------------------------------------------------------ build: validation


def test_num_classes_must_be_at_least_two():
    for num_classes in [1, 0, -3, 2.5, True, "10", None]:
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            build("mlp:hidden=8", MNIST, num_classes)


def test_input_shape_must_be_three_positive_ints():
    for shape in [(28, 28), (1, 28, 28, 1), (28, 28, 0), (28, -1, 1), (None, 28, 1),
                  (28.0, 28, 1), (True, 28, 1), "28x28", 784, None]:
        with pytest.raises(ValueError, match="input_shape must be"):
            build("mlp:hidden=8", shape, 10)


def test_seed_must_be_an_int():
    with pytest.raises(ValueError, match="seed"):
        build("mlp:hidden=8", MNIST, 10, seed=1.5)


def test_build_rejects_bad_spec_before_building():
    with pytest.raises(ValueError, match="Unknown architecture"):
        build("resnet18", CIFAR, 10)


def test_numpy_ints_and_lists_are_accepted():
    model = build("mlp:hidden=8", [np.int64(28), 28, 1], np.int32(3))
    assert model.input_shape == (None, 28, 28, 1)
    assert model.layers[-1].units == 3


# ------------------------------------------------------- build: common contract


@pytest.mark.parametrize("arch", CHEAP)
def test_every_model_ends_in_linear_logits_and_normalises_first(arch, rng):
    model = build(arch, MNIST, 7)
    assert model.name == arch
    assert model.input_shape == (None,) + MNIST
    _assert_logits_head(model, 7)

    # The first computation on the raw input is the "normalize" layer.
    normalize = model.layers[1]
    assert normalize.name == "normalize"
    assert normalize.input is model.inputs[0]

    x = _raw_pixels(rng, MNIST)
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (4, 7)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    # Logits, not probabilities: rows do not sum to one, signs are mixed.
    assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)
    assert (logits < 0).any()


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet_cifar"])
def test_small_models_rescale_raw_pixels_by_255(arch, rng):
    model = build(arch, MNIST, 10)
    assert isinstance(model.get_layer("normalize"), keras.layers.Rescaling)
    x = _raw_pixels(rng, MNIST)
    np.testing.assert_allclose(_layer_output(model, "normalize", x), x / 255.0,
                               rtol=1e-6, atol=1e-7)


def test_name_override():
    assert build("cnn", MNIST, 10, name="student").name == "student"


def test_logits_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build("cnn:width=0.25", MNIST, 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("block1_conv").compute_dtype == "float16"
    assert model.outputs[0].dtype == "float32"


# ------------------------------------------------------------------------ mlp


def test_mlp_default_is_hintons_1200x1200_teacher():
    model = build("mlp", MNIST, 10)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [l.units for l in dense] == [1200, 1200, 10]
    assert [l.activation for l in dense[:-1]] == [keras.activations.relu] * 2
    expected = 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert expected == 2_395_210
    assert count_params(model) == expected
    assert not any(isinstance(l, keras.layers.Dropout) for l in model.layers)


def test_mlp_student_shape_and_dropout():
    model = build("mlp:hidden=800x800,dropout=0.2", (28, 28, 1), 10)
    assert count_params(model) == (
        _dense_params(784, 800) + _dense_params(800, 800) + _dense_params(800, 10))
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert [d.rate for d in drops] == [0.2, 0.2]
    # Dropout acts in training only.
    x = np.full((2,) + MNIST, 128.0, dtype="float32")
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(model(x, training=False))
    c = keras.ops.convert_to_numpy(model(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# ------------------------------------------------------------------------ cnn


def _cnn_expected_params(width, shape, num_classes, batchnorm=0, gap=0):
    filters = [max(4, round(f * width)) for f in (32, 64, 128)]
    c_in, total = shape[-1], 0
    h, w = shape[0], shape[1]
    for i, f in enumerate(filters):
        total += _conv_params(3, c_in, f, bias=not batchnorm)
        total += _bn_params(f) if batchnorm else 0
        c_in = f
        if not (gap and i == 2):
            h, w = -(-h // 2), -(-w // 2)  # 2x2 max-pool, "same" padding
    features = c_in if gap else h * w * c_in
    return total + _dense_params(features, num_classes)


def test_cnn_param_counts_closed_form_and_grow_with_width():
    counts = []
    for width in (0.25, 0.5, 1.0, 2.0, 0.1):
        got = count_params(build(f"cnn:width={width}", MNIST, 10))
        assert got == _cnn_expected_params(width, MNIST, 10), width
        counts.append(got)
    counts = counts[:4]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[0] < counts[-1] / 20  # ~quadratic in width
    for bn, gap in ((1, 0), (0, 1), (1, 1)):
        spec = f"cnn:width=0.5,batchnorm={bn},gap={gap}"
        assert count_params(build(spec, MNIST, 10)) == _cnn_expected_params(
            0.5, MNIST, 10, batchnorm=bn, gap=gap), spec
    conv = build("cnn:width=0.1", MNIST, 10).get_layer("block1_conv")
    assert conv.filters == 4  # floor of 4 filters


@pytest.mark.parametrize("shape", [(8, 8, 5), (9, 13, 2), (64, 48, 3)])
def test_cnn_works_for_any_size_and_channels(shape, rng):
    model = build("cnn:width=0.25,dropout=0.3", shape, 4)
    assert model.get_layer("dropout").rate == 0.3
    out = model(_raw_pixels(rng, shape, n=2), training=False)
    assert tuple(out.shape) == (2, 4)
    assert count_params(model) == _cnn_expected_params(0.25, shape, 4)


def test_cnn_can_fit_a_small_batch(rng):
    model = build("cnn:width=0.25", MNIST, 10, seed=0)
    x = _raw_pixels(rng, MNIST, n=32)
    y = rng.integers(0, 10, size=32)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=32, epochs=40, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------- resnet_cifar


def _resnet_cifar_expected_params(depth, width, shape, num_classes):
    """He et al. 2016 §4.2, option-A shortcuts (no parameters)."""
    n = (depth - 2) // 6
    base = max(1, round(16 * width))
    total = _conv_params(3, shape[-1], base) + _bn_params(base)
    c_in = base
    for stage in range(3):
        c = base * 2 ** stage
        for _ in range(n):
            total += _conv_params(3, c_in, c) + _bn_params(c)
            total += _conv_params(3, c, c) + _bn_params(c)
            c_in = c
    return total + _dense_params(c_in, num_classes)


def test_resnet20_matches_the_paper():
    model = build("resnet_cifar", CIFAR, 10)
    total = count_params(model)
    assert total == _resnet_cifar_expected_params(20, 1, CIFAR, 10) == 271_098
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 269_722  # "0.27M" in He et al. 2016, Table 6
    assert round(trainable / 1e6, 2) == 0.27
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 19  # + 1 Dense = 20 weighted layers
    assert {l.kernel_size for l in convs} == {(3, 3)}  # no 1x1 projections
    for stage, (size, filters) in enumerate([(32, 16), (16, 32), (8, 64)], 1):
        shape = model.get_layer(f"stage{stage}_block3_out").output.shape
        assert tuple(shape[1:]) == (size, size, filters)


@pytest.mark.parametrize("depth, width", [(8, 1.0), (32, 1.0), (14, 0.5), (8, 2.0)])
def test_resnet_cifar_depth_and_width(depth, width):
    model = build(f"resnet_cifar:depth={depth},width={width}", CIFAR, 100)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == depth - 1
    assert count_params(model) == _resnet_cifar_expected_params(
        depth, width, CIFAR, 100)


def test_resnet_cifar_shortcut_pads_with_zeros(rng):
    """Option A: the downsampling shortcut is x[::2, ::2] followed by zeros."""
    model = build("resnet_cifar:depth=8", CIFAR, 10)
    probe = keras.Model(model.input, [
        model.get_layer("stage1_block1_out").output,
        model.get_layer("stage2_block1_pad").output,
    ])
    before, padded = (keras.ops.convert_to_numpy(t)
                      for t in probe(_raw_pixels(rng, CIFAR, n=2), training=False))
    np.testing.assert_array_equal(padded[..., :16], before[:, ::2, ::2, :])
    np.testing.assert_array_equal(padded[..., 16:], 0.0)


# ----------------------------------------------------------------- mobilenets


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_mobilenets_take_mnist_shapes_and_rescale_once(arch, rng):
    model = build(arch, MNIST, 10)
    # keras.applications needs >= 32x32: a Resizing layer follows normalize.
    resize = model.get_layer("resize")
    assert isinstance(resize, keras.layers.Resizing)
    assert model.layers[2] is resize
    assert tuple(resize.output.shape) == (None, 32, 32, 1)
    # Raw pixels -> [-1, 1], exactly once (MobileNetV3's own Rescaling is off).
    rescalings = [l for l in model.layers if isinstance(l, keras.layers.Rescaling)]
    assert [l.name for l in rescalings] == ["normalize"]
    x = _raw_pixels(rng, MNIST)
    np.testing.assert_allclose(_layer_output(model, "normalize", x),
                               x / 127.5 - 1.0, rtol=1e-5, atol=1e-6)
    resized = _layer_output(model, "resize", x)
    assert resized.min() >= -1.0 - 1e-6 and resized.max() <= 1.0 + 1e-6


def test_mobilenet_without_resize_at_32(rng):
    model = build("mobilenet_v3_small", CIFAR, 10)
    assert not any(isinstance(l, keras.layers.Resizing) for l in model.layers)
    _assert_logits_head(model, 10)


def test_mobilenet_non_square_small_input_resizes_short_side_only():
    model = build("mobilenet_v2:alpha=0.35", (20, 40, 3), 5)
    assert tuple(model.get_layer("resize").output.shape) == (None, 32, 40, 3)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_mobilenet_alpha_shrinks_params(arch):
    small = count_params(build(f"{arch}:alpha=0.35", MNIST, 10))
    full = count_params(build(f"{arch}:alpha=1.0", MNIST, 10))
    assert small < full / 2


def test_mobilenet_v2_matches_keras_applications_count():
    """The body is keras.applications.MobileNetV2 (no-top), unchanged."""
    model = build("mobilenet_v2", CIFAR, 10)
    # keras.applications.MobileNetV2(include_top=False, weights=None): 2,257,984
    assert count_params(model) == 2_257_984 + _dense_params(1280, 10)


# ------------------------------------------------------------ ImageNet resnets


def test_resnet50_at_32x32(rng):
    model = build("resnet50", CIFAR, 10)
    _assert_logits_head(model, 10)
    # keras.applications.ResNet50(include_top=False): 23,587,712 parameters.
    assert count_params(model) == 23_587_712 + _dense_params(2048, 10)
    assert model.get_layer("logits").input.shape[-1] == 2048
    assert not any(isinstance(l, keras.layers.Resizing) for l in model.layers)
    x = _raw_pixels(rng, CIFAR, n=2)
    np.testing.assert_allclose(
        _layer_output(model, "normalize", x),
        x - np.array([123.68, 116.779, 103.939], dtype="float32"),
        rtol=1e-5, atol=1e-4)
    out = keras.ops.convert_to_numpy(model(x, training=False))
    assert out.shape == (2, 10) and np.all(np.isfinite(out))


def test_resnet101_on_mnist_shape():
    model = build("resnet101", MNIST, 10)
    _assert_logits_head(model, 10)
    assert tuple(model.get_layer("resize").output.shape) == (None, 32, 32, 1)
    # ResNet101 no-top 42,658,176 with 3 channels; conv1 is 7x7x3x64 -> 7x7x1x64.
    assert count_params(model) == (
        42_658_176 - 7 * 7 * 2 * 64 + _dense_params(2048, 10))


def test_resnet152_param_count():
    model = build("resnet152", CIFAR, 10)
    assert count_params(model) == 58_370_944 + _dense_params(2048, 10)
    _assert_logits_head(model, 10)


# -------------------------------------------------------- seeds, counting, I/O


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_same_seed_same_weights_regardless_of_global_state():
    a = _weights(build("cnn", MNIST, 10, seed=7))
    keras.utils.set_random_seed(999)
    random.random()
    b = _weights(build("cnn", MNIST, 10, seed=7))
    c = _weights(build("cnn", MNIST, 10, seed=8))
    assert len(a) == len(b) == len(c)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    kernels_a = [w for w in a if w.ndim > 1]
    kernels_c = [w for w in c if w.ndim > 1]
    assert all(not np.array_equal(x, y) for x, y in zip(kernels_a, kernels_c))


def test_seed_reproducible_for_keras_applications():
    a = build("mobilenet_v3_small:alpha=0.35", CIFAR, 10, seed=3)
    b = build("mobilenet_v3_small:alpha=0.35", CIFAR, 10, seed=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(a.get_layer("conv").kernel),
        keras.ops.convert_to_numpy(b.get_layer("conv").kernel))


def test_seeded_build_leaves_python_random_state_alone():
    random.seed(5)
    expected = [random.random() for _ in range(3)]
    random.seed(5)
    build("mlp:hidden=16", MNIST, 10, seed=1)
    assert [random.random() for _ in range(3)] == expected


def test_unseeded_build_follows_global_seed():
    keras.utils.set_random_seed(42)
    a = _weights(build("mlp:hidden=16", MNIST, 10))
    keras.utils.set_random_seed(42)
    b = _weights(build("mlp:hidden=16", MNIST, 10))
    c = _weights(build("mlp:hidden=16", MNIST, 10))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(b[0], c[0])


def test_count_params_includes_non_trainable():
    model = build("cnn:batchnorm=1", MNIST, 10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert frozen == 2 * (32 + 64 + 128)  # BN moving mean and variance
    assert count_params(model) == trainable + frozen == model.count_params()
    assert isinstance(count_params(model), int)


@pytest.mark.parametrize("spec, shape", [("cnn:dropout=0.2", MNIST),
                                         ("resnet_cifar:depth=8", CIFAR)])
def test_save_load_round_trip(spec, shape, tmp_path, rng):
    model = build(spec, shape, 10, seed=0)
    # Move BN statistics off their initial values so they must be saved.
    x = _raw_pixels(rng, shape, n=16)
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, rng.integers(0, 10, 16), epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    keras.backend.clear_session()
    loaded = keras.saving.load_model(path)
    assert loaded.name == model.name
    assert loaded.layers[-1].name == "logits"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-6, atol=1e-6)



# ------------------------------------------------ synchronized BatchNormalization


def _bn_layers(model):
    return [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("spec, shape", [("cnn:batchnorm=1,width=0.25", (8, 8, 1)),
                                         ("mobilenet_v3_small:alpha=0.35", MNIST)])
def test_synchronized_batchnorm_changes_no_weight_and_no_prediction(spec, shape, rng):
    plain = build(spec, shape, 3, seed=4)  # outside any strategy: one replica
    synced = build(spec, shape, 3, seed=4, synchronized_batchnorm=True)
    assert _bn_layers(plain) and not any(l.synchronized for l in _bn_layers(plain))
    assert all(l.synchronized for l in _bn_layers(synced))
    assert len(_bn_layers(synced)) == len(_bn_layers(plain))
    assert synced.name == plain.name and synced.input.name == "pixels"
    assert [type(l) for l in synced.layers] == [type(l) for l in plain.layers]
    for a, b in zip(_weights(plain), _weights(synced)):
        np.testing.assert_array_equal(a, b)
    x = _raw_pixels(rng, shape, n=4)
    np.testing.assert_array_equal(  # inference: the moving statistics, identical
        keras.ops.convert_to_numpy(synced(x, training=False)),
        keras.ops.convert_to_numpy(plain(x, training=False)))
    np.testing.assert_allclose(  # training: the batch statistics (E[x²]-E[x]² when synced)
        keras.ops.convert_to_numpy(synced(x, training=True)),
        keras.ops.convert_to_numpy(plain(x, training=True)), rtol=1e-4, atol=1e-4)
    assert models.unsynchronized_batchnorm(synced) == []
    assert models.unsynchronized_batchnorm(plain) == [l.name for l in _bn_layers(plain)]
    with pytest.raises(ValueError, match="must be True, False or None"):
        build(spec, shape, 3, synchronized_batchnorm="yes")
    # No BatchNormalization: nothing to synchronize.
    assert not _bn_layers(build("mlp:hidden=4", (4, 4, 1), 3, synchronized_batchnorm=True))


def test_synchronize_batchnorm_copies_a_users_nested_model(rng):
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="inner_bn")(
        keras.layers.Dense(5, name="inner_dense")(inner_in)), name="inner")
    frozen = keras.layers.BatchNormalization(name="frozen_bn")
    frozen.trainable = False
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d1"),
                              keras.layers.BatchNormalization(name="outer_bn"), inner,
                              frozen, keras.layers.Dense(3, name="logits")], name="user")
    x = rng.normal(size=(16, 4)).astype("float32")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, rng.normal(size=(16, 3)), epochs=1, verbose=0)  # moving statistics move
    assert sorted(models.unsynchronized_batchnorm(model)) == ["inner_bn", "outer_bn"]
    copy = models.synchronize_batchnorm(model)
    assert models.unsynchronized_batchnorm(copy) == []
    assert models.unsynchronized_batchnorm(model)  # the original is untouched
    assert copy.get_layer("inner").get_layer("inner_bn").synchronized
    for a, b in zip(_weights(model), _weights(copy)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(copy(x, training=False)),
                                  keras.ops.convert_to_numpy(model(x, training=False)))


def test_synchronize_batchnorm_refuses_a_subclassed_model_with_the_fix():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    with pytest.raises(ValueError, match=r"cannot copy model .*synchronized=True"):
        models.synchronize_batchnorm(Net())


def test_replicas_batchnorm_note():
    plain = build("cnn:batchnorm=1,width=0.25", (8, 8, 1), 3)
    assert models.replicas_batchnorm_note(plain, 1) is None
    assert models.replicas_batchnorm_note(models.synchronize_batchnorm(plain), 4) is None
    note = models.replicas_batchnorm_note(plain, 4)
    assert note.startswith("the student 'cnn' trains over 4 replicas")
    assert "'block1_bn', 'block2_bn', 'block3_bn'" in note and "1/4 of the batch" in note
    assert "Fix:" in note and "synchronize_batchnorm(student)" in note


def test_synchronized_batchnorm_saves_and_exports_as_plain_batchnorm(tmp_path, rng):
    """At inference synchronized BN is plain BN: the .keras file keeps the flag,
    the .tflite file computes what Keras computes."""
    import tensorflow as tf

    from keras_kd import export

    model = build("cnn:batchnorm=1,width=0.25", (8, 8, 1), 3, seed=0,
                  synchronized_batchnorm=True)
    x = _raw_pixels(rng, (8, 8, 1), n=16)
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, rng.integers(0, 3, 16), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert all(l.synchronized for l in _bn_layers(loaded))
    path = export.to_tflite(model, str(tmp_path / "m.tflite"))
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(16, "int32"))).batch(8)
    result = export.verify(path, ds, reference_model=model)
    assert result["examples"] == 16 and result["max_abs_diff"] < 1e-4

def test_public_functions_have_docstrings():
    for fn in (build, parse_spec, count_params, describe, models.synchronize_batchnorm,
               models.unsynchronized_batchnorm, models.replicas_batchnorm_note):
        assert fn.__doc__ and len(fn.__doc__.strip()) > 40
    assert models.__doc__ and "logits" in models.__doc__
