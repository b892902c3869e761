"""Augmentation policies, and consistent teaching: both models see one view."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import augment, data


def test_parse_policies_and_options():
    assert augment.parse("none") == []
    assert augment.parse("jitter") == [("jitter", {"pixels": 2.0, "rotation": 0.0, "zoom": 0.0})]
    assert augment.parse("jitter:pixels=3,zoom=0.1")[0][1] == {
        "pixels": 3.0, "rotation": 0.0, "zoom": 0.1}
    assert len(augment.parse("jitter+jitter:pixels=1")) == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        ("randaug", "Valid policies: jitter, none"),
        ("jitter:px=2", "valid options: pixels, rotation, zoom"),
        ("jitter:pixels=-1", "non-negative"),
        ("jitter:pixels=abc", "non-negative"),
    ],
)
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        augment.parse(spec)


def test_jitter_too_large_for_the_image():
    with pytest.raises(ValueError, match="too large"):
        augment.build("jitter:pixels=5", (8, 8, 1))


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
    out = layer(images, training=True).numpy()
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
    assert not np.array_equal(layer(images, training=False).numpy(), images)


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


def test_teacher_targets_are_computed_on_the_students_augmented_batch():
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
    ds = augment.apply(ds, "jitter:pixels=3", info.input_shape, seed=4)
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
