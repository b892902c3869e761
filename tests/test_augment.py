"""Augmentation policies, and consistent teaching: both models see one view."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import augment, data


def test_parse_policies_and_options():
    assert augment.parse("none") == []
    assert augment.parse("jitter") == [
        ("jitter", {"fraction": 2 / 28, "pixels": None, "rotation": 0.0, "zoom": 0.0})]
    assert augment.parse("jitter:pixels=3,zoom=0.1")[0][1] == {
        "fraction": 2 / 28, "pixels": 3.0, "rotation": 0.0, "zoom": 0.1}
    assert augment.parse("jitter:fraction=0.1")[0][1]["fraction"] == 0.1
    assert len(augment.parse("jitter+jitter:pixels=1")) == 2
    assert augment.parse("randaugment:ops=3")[0][1]["ops"] == 3
    assert isinstance(augment.parse("randaugment:ops=3")[0][1]["ops"], int)
    assert [n for n, _ in augment.parse("randaugment+mixup")] == ["randaugment", "mixup"]
    assert augment.parse("function_matching")[0][1] == {"flip": 1, "area": 0.25, "alpha": 1.0}
    assert augment.mixes_labels("jitter+cutmix") and not augment.mixes_labels("flip_crop")


def test_without_label_mixing_keeps_the_image_policies():
    assert augment.without_label_mixing("jitter:pixels=3+mixup") == "jitter:pixels=3"
    assert augment.without_label_mixing(" MixUp:alpha=1 + flip_crop + cutmix") == "flip_crop"
    assert augment.without_label_mixing("mixup") == "none"
    assert augment.without_label_mixing("none") == "none"
    assert augment.without_label_mixing("function_matching") == "function_matching"
    for spec in ("jitter+mixup", "randaugment:ops=3+cutmix+jitter"):
        assert not augment.mixes_labels(augment.without_label_mixing(spec))
    with pytest.raises(ValueError, match="unknown augmentation policy 'mixop'"):
        augment.without_label_mixing("jitter+mixop")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("randaug", "Valid policies: cutmix, flip_crop, function_matching, jitter, "
                    "mixup, none, randaugment"),
        ("jitter:px=2", "valid options: fraction .default 0.0714286., pixels .default unset., "
                        "rotation .default 0., zoom"),
        ("jitter:fraction=0.5", "must be a number in \\[0, 0.49\\]"),
        ("jitter:pixels=-1", "must be a number ≥ 0"),
        ("jitter:pixels=abc", "must be a number ≥ 0"),
        ("randaugment:ops=1.5", "must be an integer in \\[1, 10\\]"),
        ("randaugment:magnitude=2", "in \\[0, 1\\]"),
        ("mixup:alpha=0", "mixup:alpha='0'"),
        ("flip_crop:flip=2", "flip_crop:flip"),
    ],
)
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        augment.parse(spec)


def test_jitter_too_large_for_the_image():
    with pytest.raises(ValueError, match="too large"):
        augment.build("jitter:pixels=5", (8, 8, 1))


def _largest_shift(spec, size, seed=3):
    """The largest integer shift (rows or columns) that turns a single bright pixel at the
    centre of ``size``×``size`` images into each jittered copy's brightest pixel."""
    images = np.zeros((64, size, size, 1), np.float32)
    images[:, size // 2, size // 2, 0] = 255.0
    layer = augment.build(spec, (size, size, 1), seed=seed)  # None: nothing to do
    out = (images if layer is None else layer(images).numpy())[..., 0]
    peaks = [np.unravel_index(np.argmax(o), o.shape) for o in out]
    return max(max(abs(r - size // 2), abs(c - size // 2)) for r, c in peaks)


def test_jitter_default_shift_is_a_share_of_the_side():
    """By default jitter shifts by up to 1/14 of the side: 2 pixels at 28x28 (as before),
    about 9 at 128x128 and at most 1 at 8x8, where 2 pixels would be a quarter of the
    image; pixels= keeps a fixed shift at any size."""
    assert _largest_shift("jitter", 28) == 2
    assert _largest_shift("jitter", 8) <= 1
    assert 6 <= _largest_shift("jitter", 128) <= 10  # 128 / 14 = 9.1
    assert _largest_shift("jitter:pixels=2", 128) == 2
    assert _largest_shift("jitter:fraction=0", 28) == 0
    # the 28x28 layer is the one "jitter:pixels=2" builds, bit for bit
    images = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(augment.build("jitter", (28, 28, 1), seed=5)(images),
                                  augment.build("jitter:pixels=2", (28, 28, 1), seed=5)(images))


def _shift_distance(a, b, max_shift=3):
    """Smallest mean |a - shifted b| over integer shifts (0 for a pure shift)."""
    best = np.inf
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            shifted = np.roll(np.roll(b, dy, axis=0), dx, axis=1)
            best = min(best, np.mean(np.abs(a - shifted)))
    return best


def test_jitter_translates_by_at_most_the_given_pixels():
    (x, y), _, info = data.load_arrays("mnist5k")
    images = x[:32].astype(np.float32)
    layer = augment.build("jitter:pixels=2", info.input_shape, seed=1)
    out = layer(images).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3  # raw pixel range kept
    changed = np.mean(np.abs(out - images), axis=(1, 2, 3)) > 1.0
    assert changed.mean() > 0.5
    # Each output is best explained by a shift of its input of at most 2
    # pixels (bilinear interpolation between integer shifts leaves a residue,
    # far below the unshifted difference), never by a larger one ...
    for a, b in zip(out[:8, ..., 0], images[:8, ..., 0]):
        within = _shift_distance(a, b, 2)
        assert within == pytest.approx(_shift_distance(a, b, 5))
        assert within < 0.6 * np.mean(np.abs(a - b))
    # keras-cv 0.9's vectorized layers ignore training=False (they always
    # augment): which is why keras_kd never puts them inside a model.
    keras_cv_layer = layer.stages[0][1]
    assert not np.array_equal(keras_cv_layer(images, training=False).numpy(), images)


def test_apply_none_is_the_identity_and_jitter_keeps_labels():
    train, _, info = data.load("mnist5k", batch_size=16, seed=0)
    assert augment.apply(train, "none") is train
    aug = augment.apply(train.take(2), "jitter", info.input_shape, seed=0)
    for images, labels in aug:
        assert images.shape[1:] == (28, 28, 1) and labels.dtype == tf.int32


class _Recording(keras_kd.Distiller):
    """Stores the last step's teacher and student logits in variables."""

    def __init__(self, *args, batch, classes, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_teacher = tf.Variable(tf.zeros((batch, classes)), trainable=False)
        self.seen_student = tf.Variable(tf.zeros((batch, classes)), trainable=False)

    def compute_losses(self, teacher_logits, student_logits, y=None):
        self.seen_teacher.assign(teacher_logits)
        self.seen_student.assign(tf.cast(student_logits, tf.float32))
        return super().compute_losses(teacher_logits, student_logits, y)


@pytest.mark.parametrize("spec", ["jitter:pixels=3", "randaugment", "function_matching", "cutmix"])
def test_teacher_targets_are_computed_on_the_students_augmented_batch(spec):
    """Teacher and student compute the same function f; one step, lr 0.

    If both saw the same augmented batch, the recorded teacher and student
    logits are identical. A teacher fed the clean batch (or an independent
    second augmentation) would give different logits, which we also check
    really differ here, so the test can fail.
    """
    (x, y), _, info = data.load_arrays("mnist5k")
    batch = 32
    x, y = x[:batch].astype(np.float32), y[:batch]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(info.input_shape)
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    f = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(h)))
    g = keras.models.clone_model(f)
    g.set_weights(f.get_weights())

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    ds = augment.apply(ds, spec, info.input_shape, seed=4, num_classes=10)
    d = _Recording(f, g, alpha=0.5, batch=batch, classes=10)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    d.fit(ds, epochs=1, verbose=0)

    seen_t, seen_s = d.seen_teacher.numpy(), d.seen_student.numpy()
    np.testing.assert_array_equal(seen_t, seen_s)
    clean = f.predict(x, verbose=0)
    assert np.mean(np.abs(seen_t - clean)) > 1e-3  # the batch was augmented
    second = f.predict(next(iter(ds))[0], verbose=0)
    assert np.mean(np.abs(seen_t - second)) > 1e-3  # not an independent view


def test_evaluation_data_is_never_augmented():
    _, val, _ = data.load("mnist5k", batch_size=100, seed=0)
    first = np.concatenate([b[0].numpy() for b in val.take(3)])
    again = np.concatenate([b[0].numpy() for b in val.take(3)])
    np.testing.assert_array_equal(first, again)
    (_, _), (x_val, _), _ = data.load_arrays("mnist5k")
    # The validation images are the embedded digits, unchanged (same multiset).
    rows = np.sort(first.reshape(len(first), -1), axis=0)
    ref = np.sort(x_val[: len(first)].reshape(len(first), -1).astype(np.float32), axis=0)
    np.testing.assert_array_equal(rows, ref)


@pytest.fixture
def cifar_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16):
        train, _, info = data.load("tfds:cifar10", batch_size=8, seed=0)
        yield next(iter(train)), info


@pytest.mark.parametrize("spec", [p for p in augment.POLICIES if p != "none"]
                         + ["randaugment+mixup"])
@pytest.mark.parametrize("source", ["mnist5k", "tfds_mock_rgb"])
def test_each_policy_on_gray_digits_and_rgb_tfds(spec, source, request):
    if source == "mnist5k":
        (x, y), _, info = data.load_arrays("mnist5k")
        images, labels = tf.constant(x[:8], tf.float32), tf.constant(y[:8])
    else:
        (images, labels), info = request.getfixturevalue("cifar_mock")
    aug = augment.build(spec, info.input_shape, seed=2, num_classes=info.num_classes)
    out, out_labels = aug(images, labels)
    out = out.numpy()
    assert out.shape == tuple(images.shape) and out.dtype == np.float32
    assert out.min() >= -1e-3 and out.max() <= 255.0 + 1e-3  # raw pixel range kept
    assert np.mean(np.abs(out - images.numpy())) > 0.5  # it did augment
    if augment.mixes_labels(spec):
        out_labels = out_labels.numpy()
        assert out_labels.shape == (8, info.num_classes) and out_labels.dtype == np.float32
        np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, atol=1e-5)
        assert out_labels.min() >= 0.0
    else:
        np.testing.assert_array_equal(out_labels.numpy(), labels.numpy())


def _indexed_batch(batch=8, size=16):
    """Constant images, example k has value 20(k+1), and label k."""
    values = 20.0 * (np.arange(batch) + 1)
    images = np.broadcast_to(values[:, None, None, None], (batch, size, size, 3))
    return tf.constant(images, tf.float32), tf.range(batch), values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_labels_are_the_mixing_weights_of_the_images(seed, rng):
    # Random images with labels 0..7: each output image must be the label-
    # weighted sum of the inputs, exactly (MixUp is linear).
    x = tf.constant(rng.uniform(0, 255, (8, 12, 12, 3)), tf.float32)
    aug = augment.build("mixup:alpha=1", (12, 12, 3), seed=seed, num_classes=10)
    out, labels = aug(x, tf.range(8))
    labels = labels.numpy()
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    assert labels[:, 8:].max() == 0.0
    expected = np.einsum("bk,khwc->bhwc", labels[:, :8], x.numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-3)
    assert (labels.max(axis=1) < 0.999).any()  # it did mix


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cutmix_labels_are_the_pasted_pixel_shares(seed):
    """Label weight of each source == the share of pixels it contributes.

    keras-cv 0.9's own CutMix fails this near the image border (it uses the
    unclipped box area); keras_kd corrects the labels.
    """
    x, y, values = _indexed_batch()
    aug = augment.build("cutmix", (16, 16, 3), seed=seed, num_classes=10)
    out, labels = aug(x, y)
    out, labels = out.numpy(), labels.numpy()
    shares = np.stack([[np.mean(np.isclose(img, v)) for v in values] for img in out])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)  # every pixel from some input
    np.testing.assert_allclose(labels[:, :8], shares, atol=1e-6)
    assert labels[:, 8:].max() == 0.0
    assert (shares.max(axis=1) < 1.0).any()  # it did cut and paste


def test_mixing_policy_without_labels_is_a_clear_error():
    images = tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 1), np.float32)).batch(2)
    with pytest.raises(ValueError, match="mixes labels .MixUp/CutMix., but the dataset yields images only"):
        augment.apply(images, "mixup", num_classes=3)
    # Image-only policies work on image-only datasets.
    out = augment.apply(images, "flip_crop", seed=0)
    assert next(iter(out)).shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="mixes labels"):
        augment.build("cutmix", (8, 8, 1))(tf.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="needs the number of classes"):
        augment.build("mixup", (8, 8, 1))(tf.zeros((2, 8, 8, 1)), tf.constant([0, 1]))


def test_value_range_that_does_not_match_the_data():
    (x, y), _, info = data.load_arrays("mnist5k")
    scaled = tf.data.Dataset.from_tensor_slices((x[:8] / 255.0, y[:8])).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="look scaled to \\[0, 1\\].*value_range=\\(0, 1\\)"):
        next(iter(augment.apply(scaled, "randaugment")))
    # ... and with the matching range it runs and stays in [0, 1].
    out = augment.apply(scaled, "randaugment", value_range=(0, 1), seed=0)
    images = np.concatenate([b[0].numpy() for b in out])
    assert images.max() <= 1.0 + 1e-6 and images.min() >= 0.0
    shifted = tf.data.Dataset.from_tensor_slices((x[:8] - 128.0, y[:8])).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside value_range .0, 255."):
        next(iter(augment.apply(shifted, "jitter")))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        augment.build("randaugment", (8, 8, 4))


_REPLICAS = """
import json, sys
from keras_kd import augment, distribute
distribute.configure_cpu_devices(2)
import keras, numpy as np, tensorflow as tf
import keras_kd
strategy = distribute.get_strategy("mirrored")
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (64, 16, 16, 3)).astype("float32")
y = rng.integers(0, 5, 64)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
ds = augment.apply(ds, sys.argv[1], seed=3, num_classes=5)
def f():
    i = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(i))
    return keras.Model(i, keras.layers.Dense(5)(keras.layers.Flatten()(h)))
teacher = f()
student = keras.models.clone_model(teacher)
student.set_weights(teacher.get_weights())
d = keras_kd.build_distiller(strategy, teacher, student, temperature=2.0, alpha=0.5,
                             optimizer=keras.optimizers.SGD(0.0))
h = d.fit(ds, epochs=1, verbose=0).history
# Control: a student that sees its own, second view (a random shift inside
# it) must give KL > 0 here, or this measurement could not detect anything.
def shifted_student():
    g = keras.models.clone_model(teacher)
    g.set_weights(teacher.get_weights())
    i = keras.Input((16, 16, 3))
    return keras.Model(i, g(keras.layers.RandomTranslation(0.2, 0.2, seed=1)(i)))
c = keras_kd.build_distiller(strategy, teacher, shifted_student, temperature=2.0,
                             alpha=0.5, optimizer=keras.optimizers.SGD(0.0))
hc = c.fit(ds, epochs=1, verbose=0).history
print("RESULT" + json.dumps({"replicas": strategy.num_replicas_in_sync,
      "distillation_loss": h["distillation_loss"][-1],
      "teacher_agreement": h["teacher_agreement"][-1],
      "control_loss": hc["distillation_loss"][-1]}))
"""


def test_consistent_views_under_a_two_replica_strategy(tmp_path):
    """Each replica's teacher sees its student's view: KL(f(v) || f(v)) = 0."""
    import json
    import subprocess
    import sys

    script = tmp_path / "replicas.py"
    script.write_text(_REPLICAS)
    run = subprocess.run([sys.executable, str(script), "function_matching"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["replicas"] == 2
    assert abs(res["distillation_loss"]) < 1e-6
    assert res["teacher_agreement"] == 1.0
    assert res["control_loss"] > 1e-3  # a second, independent view is detected


@pytest.mark.parametrize("spec", ["jitter", "flip_crop", "randaugment", "mixup", "cutmix"])
def test_every_epoch_gets_fresh_views(spec, rng):
    """Iterating the pipeline again draws new augmentations (not one fixed set)."""
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 5)).batch(8)
    ds = augment.apply(ds, spec, seed=4, num_classes=5)
    first = np.concatenate([b[0].numpy() for b in ds])
    second = np.concatenate([b[0].numpy() for b in ds])
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("spec", ["jitter+mixup", "randaugment+cutmix", "flip_crop"])
def test_augmentation_stays_float32_under_a_mixed_precision_policy(spec):
    """Under mixed_float16, keras-cv's layers returned float16 images, which MixUp's
    float32 ratios could not multiply (the job failed with mixed precision and mixup);
    RandAugment failed outright. The global policy is left as it was."""
    x = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 1)).astype("float32")
    y = np.array([0, 1, 2, 1])
    keras.config.set_dtype_policy("mixed_float16")
    try:
        aug = augment.build(spec, (12, 12, 1), seed=3, num_classes=3)
        assert keras.config.dtype_policy().name == "mixed_float16"
        images, labels = aug(tf.constant(x), tf.constant(y))
    finally:
        keras.config.set_dtype_policy("float32")
    assert images.dtype == tf.float32 and np.isfinite(images.numpy()).all()
    assert images.shape == x.shape
    if augment.mixes_labels(spec):
        assert labels.dtype == tf.float32
        np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-6)
    else:
        np.testing.assert_array_equal(labels.numpy(), y)
