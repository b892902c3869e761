"""The training stream: epoch e a function of (seed, e); the same batches for every model."""

import hashlib
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_kd import augment, config, data, embedded, epochs, fitting, job


def _examples(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(n, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 4, size=n).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y))


def _stream(spec="jitter:pixels=2+mixup", seed=0, examples=None, **kw):
    return epochs.Epochs(_examples() if examples is None else examples, num_examples=200,
                         batch_size=32, seed=seed, augment=spec, input_shape=(12, 12, 1),
                         num_classes=4, **kw)


def _arrays(dataset):
    return [tuple(np.asarray(t) for t in batch) for batch in dataset]


def _same(a, b):
    return len(a) == len(b) and all(
        all(np.array_equal(p, q) for p, q in zip(x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("seed", [0, 3])
def test_two_apply_calls_with_one_seed_draw_the_same_views(seed):
    # keras-cv 0.9 takes seed=0 for "no seed" (the global generator), and a parallel map
    # hands the draws out in thread order: both made two pipelines differ.
    batches = _examples().batch(32)
    first = _arrays(augment.apply(batches, "jitter:pixels=2,rotation=10", seed=seed))
    second = _arrays(augment.apply(batches, "jitter:pixels=2,rotation=10", seed=seed))
    assert _same(first, second)
    other = _arrays(augment.apply(batches, "jitter:pixels=2,rotation=10", seed=seed + 1))
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.mark.parametrize("spec", ["none", "jitter:pixels=2+mixup", "flip_crop", "cutmix"])
def test_a_resumed_stream_reads_what_the_unbroken_one_read(spec):
    stream = _stream(spec)
    unbroken = _arrays(stream.batches(0, 3))
    assert len(unbroken) == 3 * stream.steps == 3 * math.ceil(200 / 32)
    resumed = _arrays(_stream(spec).batches(1, 3))  # a new object, as in a new process
    assert _same(resumed, unbroken[stream.steps:])


def test_each_epoch_its_own_order_and_views_and_each_seed_its_own():
    stream = _stream()
    e0, e1 = _arrays(stream.epoch(0)), _arrays(stream.epoch(1))
    assert not np.array_equal(e0[0][0], e1[0][0])
    assert not np.array_equal(e0[0][0], _arrays(_stream(seed=1).epoch(0))[0][0])
    # every example once per epoch (no augmentation: the labels are a permutation)
    plain = _arrays(_stream("none").epoch(1))
    assert sorted(np.concatenate([b[1] for b in plain]).tolist()) == sorted(
        np.concatenate([y for _, y in _arrays(_examples().batch(200))]).tolist())


def test_data_zipped_into_the_examples_keeps_the_order():
    x = _examples()
    tagged = tf.data.Dataset.zip(x, tf.data.Dataset.range(200)).map(lambda e, i: (*e, i))
    plain = _arrays(_stream("none", examples=x).batches(0, 2))
    with_ids = _arrays(_stream("none", examples=tagged).batches(0, 2))
    assert _same(plain, [b[:2] for b in with_ids])
    ids = np.concatenate([b[2] for b in with_ids[:7]])
    assert sorted(ids.tolist()) == list(range(200))


def test_bad_stream_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        epochs.Epochs(_examples(), batch_size=0, seed=0)
    with pytest.raises(ValueError, match="empty"):
        epochs.Epochs(_examples().take(0), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="policy"):
        epochs.Epochs(_examples(), batch_size=4, seed=0, augment="nonsense")


def _digests(dataset):
    return [hashlib.sha256(np.asarray(b[0]).tobytes() + np.asarray(b[1]).tobytes()).hexdigest()
            for b in dataset]


def test_baseline_and_distilled_student_see_the_same_batches(tmp_path, monkeypatch):
    """The issue's fair comparison: the teacher is the only difference between the rows."""
    seen, real_fit = [], fitting.fit

    def recording_fit(model, dataset, **kwargs):
        first = next(iter(dataset))
        seen.append((model.name, _digests(dataset), kwargs["steps_per_epoch"],
                     tuple(first[1].shape)))
        return real_fit(model, dataset, **kwargs)

    monkeypatch.setattr(fitting, "fit", recording_fit)
    job.run(job.JobConfig(teacher_arch="mlp:hidden=16", student_arch="mlp:hidden=8",
                          epochs=2, teacher_epochs=2, batch_size=500, augment="jitter+mixup",
                          export=False, verbose=0, output_dir=str(tmp_path / "out")),
            log=lambda *_: None)
    by_model = {name: (digests, steps) for name, digests, steps, _ in seen}
    labels = {name: shape for name, *_, shape in seen}
    assert set(by_model) == {"teacher", "baseline", "distiller"}
    baseline, distilled = by_model["baseline"], by_model["distiller"]
    assert baseline == distilled and len(baseline[0]) == 2 * baseline[1] == 16
    assert len(set(baseline[0])) == 16  # and every batch differs from the others
    # The teacher learns the labels on the students' policy without its mixup (the
    # default --teacher_augment): class ids, where the students get mixed label rows.
    assert labels["baseline"] == labels["distiller"] == (500, 10) and labels["teacher"] == (500,)
    assert by_model["teacher"][1] == baseline[1] and not set(by_model["teacher"][0]) & set(
        baseline[0])


def test_cosine_schedule_matches_its_formula():
    steps, peak = 200, 1e-3
    optimizer = config.make_optimizer("adam", peak, "cosine", steps)
    warmup = max(1, round(config.WARMUP_FRACTION * steps))
    for t in (0, 5, warmup, 60, 150, steps):
        want = (peak * t / warmup if t < warmup
                else peak * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup))))
        optimizer.iterations.assign(t)
        assert float(optimizer.learning_rate) == pytest.approx(want, abs=1e-9), t
    assert float(config.make_optimizer("adam", peak).learning_rate) == pytest.approx(peak)
    with pytest.raises(ValueError, match="steps"):
        config.make_optimizer("adam", peak, "cosine")
    with pytest.raises(ValueError, match="schedule"):
        config.make_optimizer("adam", peak, "linear", 10)


def test_animals10k_is_embedded_and_split_by_class():
    (x, y), (xv, yv), info = data.load_arrays("animals10k")
    assert info.input_shape == (28, 28, 1) and info.num_classes == 10
    assert info.class_names[0] == "bear" and info.class_names[-1] == "zebra"
    assert len(x) + len(xv) == 9716 and x.shape[1:] == xv.shape[1:] == (28, 28, 1)
    per_class = np.bincount(np.concatenate([y, yv]))
    np.testing.assert_array_equal(np.bincount(yv), np.round(0.2 * per_class))
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 1
    # the wheel repeats 284 images: none is in both splits (nor twice in one)
    seen = [bytes(i) for i in np.concatenate([x, xv]).astype(np.uint8)]
    assert len(set(seen)) == len(seen)


def test_embedded_pickles_rebuild_arrays_and_nothing_else(tmp_path):
    import gzip
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(Evil(), f)
    with gzip.open(path, "rb") as f, pytest.raises(pickle.UnpicklingError, match="posix.system"):
        embedded.ArraysOnly(f).load()
    with gzip.open(path, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), f)
    with gzip.open(path, "rb") as f:
        np.testing.assert_array_equal(embedded.ArraysOnly(f).load(), [[0, 1, 2], [3, 4, 5]])


def test_the_stream_is_never_rewritten_through_a_serialized_graph():
    """tf.data's static optimizations and a strategy's auto-shard rewrite copied the
    in-memory examples once per epoch (5.3 GB for 160 epochs of animals10k:
    benchmarks/stream_memory.py); the stream turns both off, and a later setting
    (fit_loop's DATA sharding under multi-worker) still wins."""
    examples = tf.data.Dataset.from_tensor_slices(
        (np.zeros((10, 4, 4, 1), np.float32), np.arange(10) % 2))
    stream = epochs.Epochs(examples, batch_size=4, seed=0, augment="none",
                           input_shape=(4, 4, 1), num_classes=2).batches(0, 3)
    options = stream.options()
    assert options.experimental_optimization.apply_default_optimizations is False
    off = tf.data.experimental.AutoShardPolicy.OFF
    assert options.experimental_distribute.auto_shard_policy == off
    data_policy = tf.data.Options()
    data_policy.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    later = stream.with_options(data_policy).options()
    assert later.experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.DATA)
