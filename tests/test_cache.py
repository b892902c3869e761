"""The teacher soft-target cache (offline distillation), at tiny size."""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, cache, data, job, models, views
from keras_kd.distiller import LABELS, TEACHER_LOGITS

SHAPE, CLASSES, N = (6, 6, 1), 5, 96


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N,) + SHAPE).astype(np.float32)
    y = rng.integers(0, CLASSES, size=N).astype(np.int32)
    return x, y


def _ds(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


def _mlp(seed, hidden=16, name="model"):
    return models.build(f"mlp:hidden={hidden}", SHAPE, CLASSES, name=name, seed=seed)


def _softmax_teacher(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    h = keras.layers.Dense(16, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(h))


def _targets(ds):
    rows = list(ds.as_numpy_iterator())
    x = np.stack([r[0] for r in rows])
    t = np.stack([r[1][TEACHER_LOGITS] for r in rows])
    y = np.stack([r[1][LABELS] for r in rows])
    return x, t, y


def _np_reconstruct(values, indices, rest, classes):
    full = np.repeat(rest[:, None], classes, axis=1)
    np.put_along_axis(full, indices, values, axis=1)
    return full


# ---------------------------------------------------------------------------
# What is stored, and what comes back.


def test_full_cache_is_bit_identical_to_teacher_predict(xy, tmp_path):
    x, y = xy
    teacher = _mlp(0, name="teacher")
    meta = cache.build(teacher, _ds(x, y), tmp_path / "c", dataset_id="tiny", log=None)
    expected = teacher.predict(x, batch_size=256, verbose=0)
    stored = np.load(tmp_path / "c" / "logits.npy", allow_pickle=False)
    assert stored.dtype == np.float32 and stored.shape == (N, CLASSES)
    np.testing.assert_array_equal(stored, expected)
    assert sorted(os.listdir(tmp_path / "c")) == ["logits.npy", "meta.json"]
    on_disk = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["format_version"] == cache.FORMAT_VERSION and meta["top_k"] is None
    assert (meta["num_examples"], meta["num_classes"]) == (N, CLASSES)
    assert meta["teacher_fingerprint"] == cache.teacher_fingerprint(teacher)
    assert meta["dataset_fingerprint"] == cache.dataset_fingerprint(_ds(x, y))
    assert meta["teacher_name"] == "teacher" and meta["dataset_id"] == "tiny"
    xs, t, ys = _targets(cache.attach(_ds(x, y), tmp_path / "c", teacher))
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(t, expected)


def test_top_k_is_the_numpy_reference_and_uses_the_logits_of_a_softmax_teacher(xy, tmp_path):
    x, y = xy
    teacher = _softmax_teacher()
    view, recovered = views.logits_model(teacher)
    assert recovered
    logits = view.predict(x, batch_size=256, verbose=0).astype(np.float64)
    # batch_size=7: the rows of many batches are appended to each file
    cache.build(teacher, _ds(x, y), tmp_path / "k", top_k=2, batch_size=7, log=None)
    assert sorted(os.listdir(tmp_path / "k")) == [
        "indices.npy", "logits.npy", "meta.json", "rest_mean.npy"]
    values = np.load(tmp_path / "k" / "logits.npy")
    indices = np.load(tmp_path / "k" / "indices.npy")
    rest = np.load(tmp_path / "k" / "rest_mean.npy")
    assert (values.dtype, indices.dtype, rest.dtype) == (np.float32, np.int32, np.float32)
    ref_idx = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(indices, ref_idx)
    np.testing.assert_allclose(values, np.take_along_axis(logits, ref_idx, 1), rtol=1e-6)
    mask = np.ones_like(logits, bool)
    np.put_along_axis(mask, ref_idx, False, axis=1)
    ref_rest = (logits * mask).sum(1) / (CLASSES - 2)
    np.testing.assert_allclose(rest, ref_rest, rtol=1e-5, atol=1e-6)
    # The pipeline's reconstruction equals NumPy's fill-with-the-rest-mean.
    _, t, _ = _targets(cache.attach(_ds(x, y), tmp_path / "k", teacher))
    np.testing.assert_array_equal(t, _np_reconstruct(values, indices, rest, CLASSES))
    np.testing.assert_array_equal(cache.reconstruct(values, indices, rest, CLASSES), t)
    # ... also streamed from a memory map (caches too big for the graph).
    cache_module = cache
    old = cache_module._IN_GRAPH_BYTES
    try:
        cache_module._IN_GRAPH_BYTES = 0
        _, streamed, _ = _targets(cache.attach(_ds(x, y), tmp_path / "k", teacher))
    finally:
        cache_module._IN_GRAPH_BYTES = old
    np.testing.assert_array_equal(streamed, t)


def test_top_k_soft_targets_are_close_on_a_peaked_distribution():
    """T = 4: exact for a flat tail; T²·KL(full ‖ top-k) falls with k and is
    7 % of T²·KL(full ‖ uniform) at k = 10 of 100 classes (BUILD_NOTES.md, the teacher cache)."""
    rng = np.random.default_rng(0)
    n, classes, t = 512, 100, 4.0
    z = rng.normal(0.0, 1.0, (n, classes)).astype(np.float32)
    z[np.arange(n), rng.integers(0, classes, n)] += 10.0
    z[np.arange(n)[:, None], rng.integers(0, classes, (n, 3))] += 5.0

    def t2kl(a, b):
        la, lb = tf.nn.log_softmax(a / t), tf.nn.log_softmax(b / t)
        return float(t * t * np.mean(np.sum(np.exp(la) * (la - lb), -1)))

    def rebuilt(logits, k):
        values, indices = tf.math.top_k(logits, k)
        rest = (np.sum(logits, 1) - np.sum(values, 1)) / (classes - k)
        return cache.reconstruct(values, indices, rest, classes).numpy()

    flat = np.zeros((4, classes), np.float32)
    flat[:, :3] = [[9.0, 4.0, 2.0]]
    assert t2kl(flat, rebuilt(flat, 3)) < 1e-6
    errors = [t2kl(z, rebuilt(z, k)) for k in (1, 3, 10, 20)]
    assert errors == sorted(errors, reverse=True)
    uniform = t2kl(z, np.zeros_like(z))
    assert errors[2] < 0.1 * uniform, (errors, uniform)
    assert errors[2] == pytest.approx(0.267, abs=0.01)


# ---------------------------------------------------------------------------
# Cached training is online training.


def _distil(teacher, train, student_weights):
    student = _mlp(1, hidden=8, name="student")
    student.set_weights(student_weights)
    distiller = Distiller(teacher, student, temperature=4.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    distiller.fit(train, epochs=2, verbose=0)
    return student.get_weights()


def test_training_from_a_full_cache_equals_online_distillation(xy, tmp_path):
    x, y = xy
    teacher, other = _mlp(0, name="teacher"), _mlp(5, name="other")
    w0 = _mlp(1, hidden=8, name="student").get_weights()

    def batches(ds):  # the order depends on the seed and TF's global seed
        keras.utils.set_random_seed(7)
        return data.finish(ds, batch_size=16, seed=3, shuffle_buffer=64)[0]

    online = _distil(teacher, batches(_ds(x, y)), w0)
    cache.build(teacher, _ds(x, y), tmp_path / "c", log=None)
    cached = _distil(teacher, batches(cache.attach(_ds(x, y), tmp_path / "c", teacher)), w0)
    for a, b in zip(online, cached):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Control: another teacher's cache trains another student.
    cache.build(other, _ds(x, y), tmp_path / "o", log=None)
    wrong = _distil(teacher, batches(cache.attach(_ds(x, y), tmp_path / "o", check=False)), w0)
    assert max(np.abs(a - b).max() for a, b in zip(online, wrong)) > 1e-3
    assert max(np.abs(a - b).max() for a, b in zip(online, w0)) > 1e-3  # it trained


# ---------------------------------------------------------------------------
# A cache is used only for what it was built for.


def test_changed_teacher_or_dataset_is_refused_naming_which(xy, tmp_path):
    x, y = xy
    teacher = _mlp(0, name="teacher")
    cache.build(teacher, _ds(x, y), tmp_path / "c", log=None)
    attached, report = cache.get_or_build(teacher, _ds(x, y), tmp_path / "c", log=None)
    assert report["status"] == "loaded" and report["top_k"] is None

    kernel = teacher.weights[0]
    kernel.assign(kernel.numpy() + np.eye(*kernel.shape, dtype=np.float32) * 1e-3)
    for call in (lambda: cache.attach(_ds(x, y), tmp_path / "c", teacher),
                 lambda: cache.get_or_build(teacher, _ds(x, y), tmp_path / "c", log=None)):
        with pytest.raises(cache.CacheMismatchError, match="another teacher") as err:
            call()
        assert "teacher 'teacher'" in str(err.value) and "--teacher_cache" in str(err.value)
    kernel.assign(kernel.numpy() - np.eye(*kernel.shape, dtype=np.float32) * 1e-3)
    cache.attach(_ds(x, y), tmp_path / "c", teacher)  # the same weights again: accepted

    x2 = x.copy()
    x2[17, 0, 0, 0] += 1.0
    with pytest.raises(cache.CacheMismatchError, match="another dataset") as err:
        cache.get_or_build(teacher, _ds(x2, y), tmp_path / "c", log=None)
    assert "Fix: delete the folder" in str(err.value)
    with pytest.raises(cache.CacheMismatchError, match="another dataset"):
        cache.attach(_ds(x, y[::-1].copy()), tmp_path / "c", teacher)  # labels
    with pytest.raises(cache.CacheMismatchError, match="holds 96 examples.*has 95"):
        cache.attach(_ds(x[:95], y[:95]), tmp_path / "c", teacher)
    with pytest.raises(cache.CacheMismatchError, match="has 95"):
        cache.attach(_ds(x[:95], y[:95]), tmp_path / "c", check=False)
    with pytest.raises(cache.CacheMismatchError, match="top_k changed"):
        cache.get_or_build(teacher, _ds(x, y), tmp_path / "c", top_k=2, log=None)
    six = models.build("mlp:hidden=16", SHAPE, 6, name="six", seed=0)
    with pytest.raises(cache.CacheMismatchError, match="5-class logits.*6 classes"):
        cache.attach(_ds(x, y), tmp_path / "c", six)


def test_fingerprints(xy, tmp_path):
    x, y = xy
    fp = cache.dataset_fingerprint(_ds(x, y))
    assert cache.dataset_fingerprint(_ds(x, y), batch_size=7) == fp
    assert cache.dataset_fingerprint(_ds(x[::-1].copy(), y[::-1].copy())) != fp
    assert cache.dataset_fingerprint(_ds(x, y.astype(np.int64))) != fp
    teacher = _mlp(0, name="teacher")
    teacher.save(tmp_path / "t.keras")
    keras.backend.clear_session()
    _mlp(9)  # other layers first: the reloaded model's auto-names may differ
    again = keras.saving.load_model(tmp_path / "t.keras")
    assert cache.teacher_fingerprint(again) == cache.teacher_fingerprint(teacher)
    assert cache.teacher_fingerprint(_mlp(1)) != cache.teacher_fingerprint(teacher)


# ---------------------------------------------------------------------------
# Atomic, and clear errors.


def test_an_interrupted_build_leaves_nothing_and_a_later_build_succeeds(
        xy, tmp_path, monkeypatch):
    x, y = xy
    teacher = _mlp(0, name="teacher")
    real_finish, calls = cache._finish_npy, []

    def dies_on_the_second_file(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the first file is complete, the rows of all written
            raise OSError("disk full (simulated)")
        return real_finish(path, *args, **kwargs)

    monkeypatch.setattr(cache, "_finish_npy", dies_on_the_second_file)
    with pytest.raises(OSError, match="simulated"):
        cache.build(teacher, _ds(x, y), tmp_path / "c", top_k=2, log=None)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []  # no cache, no temporary folder
    monkeypatch.setattr(cache, "_finish_npy", real_finish)
    _, report = cache.get_or_build(teacher, _ds(x, y), tmp_path / "c", top_k=2, log=None)
    assert report["status"] == "built" and os.listdir(tmp_path) == ["c"]
    with pytest.raises(cache.CacheError, match="already exists.*never overwrites"):
        cache.build(teacher, _ds(x, y), tmp_path / "c", log=None)


def test_clear_errors(xy, tmp_path):
    x, y = xy
    teacher = _mlp(0, name="teacher")
    ds = _ds(x, y)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(cache.CacheError, match="is a file, not a folder"):
        cache.build(teacher, ds, tmp_path / "file", log=None)
    with pytest.raises(OSError, match="cannot create"):
        cache.build(teacher, ds, tmp_path / "file" / "c", log=None)
    for k in (0, CLASSES, True, 2.0):
        with pytest.raises(ValueError, match=r"\[1, 4\] for this 5-class teacher"):
            cache.build(teacher, ds, tmp_path / "k", top_k=k, log=None)
    with pytest.raises(ValueError, match="looks batched.*unbatch"):
        cache.build(teacher, ds.batch(8), tmp_path / "b", log=None)
    with pytest.raises(ValueError, match=r"must yield \(x, y\) pairs"):
        cache.build(teacher, tf.data.Dataset.from_tensor_slices(x), tmp_path / "b", log=None)
    with pytest.raises(cache.CacheError, match="no teacher cache"):
        cache.attach(ds, tmp_path / "absent", teacher)
    with pytest.raises(ValueError, match="needs the teacher"):
        cache.build(teacher, ds, tmp_path / "c", top_k=2, log=None)
        cache.attach(ds, tmp_path / "c")
    (tmp_path / "c" / "rest_mean.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(cache.CacheError, match="corrupt: rest_mean.npy.*delete the folder"):
        cache.attach(ds, tmp_path / "c", check=False)
    os.remove(tmp_path / "c" / "indices.npy")
    with pytest.raises(cache.CacheError, match="incomplete: indices.npy is missing"):
        cache.attach(ds, tmp_path / "c", check=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(cache.CacheError, match="not a teacher cache: it has no meta.json"):
        cache.get_or_build(teacher, ds, tmp_path / "other", log=None)


def test_a_changed_cache_file_is_refused_naming_it(xy, tmp_path):
    """logits.npy replaced by noise of the same shape and dtype (a valid array, not the
    teacher's logits) is refused by the sha256 in meta.json, never distilled from."""
    x, y = xy
    teacher = _mlp(0, name="teacher")
    meta = cache.build(teacher, _ds(x, y), tmp_path / "c", log=None)
    for name, entry in meta["files"].items():  # hashlib on the whole file: the reference
        assert entry["sha256"] == hashlib.sha256((tmp_path / "c" / name).read_bytes()).hexdigest()
    noise = np.random.default_rng(1).normal(size=(N, CLASSES)).astype(np.float32)
    np.save(tmp_path / "c" / "logits.npy", noise)
    message = r"corrupt: logits.npy changed after the cache was built.*Fix: delete the folder"
    for load in (lambda: cache.get_or_build(teacher, _ds(x, y), tmp_path / "c", log=None),
                 lambda: cache.attach(_ds(x, y), tmp_path / "c", teacher),
                 lambda: cache.attach(_ds(x, y), tmp_path / "c", check=False)):
        with pytest.raises(cache.CacheError, match=message):
            load()
    del meta["files"]["logits.npy"]["sha256"]  # a cache without checksums cannot be checked
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(cache.CacheError, match="records no sha256 of logits.npy"):
        cache.attach(_ds(x, y), tmp_path / "c", check=False)
    os.remove(tmp_path / "c" / "logits.npy")
    os.mkdir(tmp_path / "c" / "logits.npy")  # unreadable as a file: a CacheError too
    meta["files"]["logits.npy"]["sha256"] = "0" * 64
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(cache.CacheError, match=r"corrupt: logits.npy cannot be read .*Fix: "):
        cache.attach(_ds(x, y), tmp_path / "c", check=False)


def test_augmentation_is_refused():
    for spec in (None, "none", ""):
        cache.check_no_augmentation(spec)
    for spec in ("jitter", "none+mixup", "flip_crop:flip=0"):
        with pytest.raises(ValueError, match="Beyer et al. 2022.*--augment=none.*drop "
                                             "--teacher_cache"):
            cache.check_no_augmentation(spec)


def test_check_usable_refuses_what_a_cache_cannot_serve_naming_the_flags():
    cache.check_usable()  # a cache, nothing else: fine
    cache.check_usable(directory="some/dir", top_k=3, augment=None, features="",
                       teacher_dtype="float32")
    # Without a cache folder nothing else is refused, but a top_k needs one.
    cache.check_usable(directory=False, augment="jitter", multi_worker=True,
                       features="hint:a=b", teacher_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"^--teacher_cache_top_k=3 needs --teacher_cache=DIR "
                                         r"\(the folder that stores the teacher's logits\)\. "
                                         "Fix: pass both, or neither.$"):
        cache.check_usable(directory=False, top_k=3)
    for k in (0, -2, True, 2.5, "3"):
        with pytest.raises(ValueError, match=r"^--teacher_cache_top_k must be an integer ≥ 1 "
                                             r"\(below the number of classes\); leave it unset"):
            cache.check_usable(top_k=k)
    with pytest.raises(ValueError, match="^--augment='jitter' cannot be used with a teacher "
                                         "cache.*Beyer et al. 2022"):
        cache.check_usable(augment="jitter")
    with pytest.raises(ValueError, match="^--teacher_cache cannot be used with "
                                         "--strategy=multi_worker: .*only one may write it"):
        cache.check_usable(multi_worker=True)
    for features in ("hint:t_conv=s_conv", ["attention:a=b"]):
        with pytest.raises(ValueError, match="^--features needs the teacher's feature maps, "
                                             "which the teacher cache does not store"):
            cache.check_usable(features=features)
    with pytest.raises(ValueError, match="^--teacher_dtype=bfloat16 has no effect with "
                                         "--teacher_cache: the cache stores the teacher's "
                                         "logits, computed once"):
        cache.check_usable(teacher_dtype="bfloat16")


def test_other_teacher_settings_are_refused(xy, tmp_path):
    """The fingerprint covers the weights; teacher_id the rest (preprocessing, an
    ensemble's weights and T): a cache built with other settings is not reused."""
    x, y = xy
    teacher, ds = _mlp(0), _ds(x, y)
    cache.get_or_build(teacher, ds, tmp_path / "c", teacher_id="preprocessing=unit", log=None)
    cache.get_or_build(teacher, ds, tmp_path / "c", teacher_id="preprocessing=unit", log=None)
    for other in (None, "preprocessing=tf"):
        with pytest.raises(cache.CacheMismatchError, match="built with other teacher settings"):
            cache.get_or_build(teacher, ds, tmp_path / "c", teacher_id=other, log=None)
    with pytest.raises(cache.CacheMismatchError, match="other teacher settings"):
        cache.attach(ds, tmp_path / "c", teacher)  # Python's attach checks it too


def test_precheck_fails_before_any_teacher_runs(xy, tmp_path):
    x, y = xy
    (tmp_path / "file").write_text("x")
    with pytest.raises(cache.CacheError, match="is a file, not a folder"):
        cache.precheck(tmp_path / "file")
    for k in (0, 10, 2.0):
        with pytest.raises(ValueError, match=r"^top_k must be an integer in \[1, 9\] for this "
                                             r"10-class teacher; leave it unset \(None\)"):
            cache.precheck(tmp_path / "new", k, num_classes=10)
    cache.precheck(tmp_path / "new", 9, num_classes=10)
    cache.build(_mlp(0, name="teacher"), _ds(x, y), tmp_path / "c", top_k=2, log=None)
    cache.precheck(tmp_path / "c", 2, num_classes=CLASSES)
    with pytest.raises(cache.CacheMismatchError, match="top_k changed"):
        cache.precheck(tmp_path / "c", None, num_classes=CLASSES)
    assert sorted(os.listdir(tmp_path)) == ["c", "file"]


# ---------------------------------------------------------------------------
# The job and the CLI.

TINY = dict(teacher_arch="mlp:hidden=16", student_arch="mlp:hidden=8", epochs=1,
            teacher_epochs=1, batch_size=256, augment="none", export=False, verbose=0)


def test_job_refuses_bad_cache_flags_before_training(tmp_path):
    from test_cli import TINY as CLI_TINY
    from test_cli import run_cli

    out = tmp_path / "out"
    bad = [
        (dict(augment="jitter"), "Beyer"),
        (dict(teacher_cache_top_k=3, teacher_cache=None), "needs --teacher_cache"),
        (dict(teacher_cache_top_k=0), "must be an integer ≥ 1"),
        (dict(strategy="multi_worker"), "--strategy=multi_worker"),
    ]
    for change, message in bad:
        config = job.JobConfig(**{**TINY, "teacher_cache": str(tmp_path / "c"),
                                  "output_dir": str(out), **change})
        with pytest.raises(ValueError, match=message):
            job.run(config, log=lambda *a: None)
    assert not out.exists() and not (tmp_path / "c").exists()
    assert run_cli(CLI_TINY + [f"--output_dir={out}", f"--teacher_cache={tmp_path / 'c'}",
                               "--augment=jitter"]) == 2
    assert not out.exists()
    # Known once the data is loaded, still before the teacher trains.
    (tmp_path / "file").write_text("x")
    for change, message in [(dict(teacher_cache_top_k=10), r"\[1, 9\] for this 10-class"),
                            (dict(teacher_cache=str(tmp_path / "file")), "is a file")]:
        config = job.JobConfig(**{**TINY, "teacher_cache": str(tmp_path / "c"),
                                  "output_dir": str(out), **change})
        with pytest.raises(ValueError, match=message):
            job.run(config, log=lambda *a: None)
        assert not out.exists()  # created by the failed run, still empty: removed


def test_job_builds_then_loads_the_cache(tmp_path):
    cache_dir = tmp_path / "cache"
    lines = []
    first = job.run(job.JobConfig(**TINY, teacher_cache=str(cache_dir),
                                  output_dir=str(tmp_path / "a")), log=lines.append)
    assert first["teacher_cache"]["status"] == "built"
    assert first["teacher_cache"]["dir"] == str(cache_dir)
    assert any(line.startswith("teacher cache: built") for line in lines)
    assert any("from the teacher cache" in line for line in lines)
    meta = cache.read_meta(cache_dir)
    assert meta["num_examples"] == 4000 and meta["dataset_id"] == "mnist5k train split"
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["teacher_cache"]["status"] == "built" and "teacher_cache_s" in saved["timings"]

    second = job.run(job.JobConfig(**TINY, teacher=str(tmp_path / "a" / "teacher.keras"),
                                   teacher_cache=str(cache_dir),
                                   output_dir=str(tmp_path / "b")), log=lambda *a: None)
    assert second["teacher_cache"]["status"] == "loaded"
    rows = [{r["model"]: r["errors"] for r in run["models"]} for run in (first, second)]
    for role in ("teacher", "distilled"):  # same teacher, cache and seed: same student
        assert rows[0][role] == rows[1][role]

    with pytest.raises(cache.CacheMismatchError, match="top_k changed"):
        job.run(job.JobConfig(**TINY, teacher=str(tmp_path / "a" / "teacher.keras"),
                              teacher_cache=str(cache_dir), teacher_cache_top_k=3,
                              output_dir=str(tmp_path / "c")), log=lambda *a: None)
