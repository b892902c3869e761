"""Loss math against independent NumPy references and the papers' identities."""

import numpy as np
import pytest
import tensorflow as tf

from keras_kd import losses

TEMPS = [0.5, 1.0, 2.0, 4.0, 10.0]


# -- independent NumPy references (float64, written from the definitions) --


def np_softmax(z, T):
    z = np.asarray(z, np.float64) / T
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(t, s, T):
    p, q = np_softmax(t, T), np_softmax(s, T)
    return T**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def np_soft_ce(t, s, T):
    p, q = np_softmax(t, T), np_softmax(s, T)
    return -(T**2) * np.sum(p * np.log(q), axis=-1)


def np_mse_logits(t, s):
    return 0.5 * np.mean((np.asarray(s, np.float64) - t) ** 2, axis=-1)


def np_mse_probs(t, s, T):
    return T**2 * np.sum((np_softmax(s, T) - np_softmax(t, T)) ** 2, axis=-1)


@pytest.fixture
def logits(rng):
    t = rng.normal(0, 3, size=(16, 10)).astype(np.float32)
    s = rng.normal(0, 3, size=(16, 10)).astype(np.float32)
    return t, s


@pytest.mark.parametrize("T", TEMPS)
def test_soft_targets_matches_numpy(logits, T):
    t, _ = logits
    got = losses.soft_targets(t, T).numpy()
    np.testing.assert_allclose(got, np_softmax(t, T), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("T", TEMPS)
def test_kl_matches_numpy(logits, T):
    t, s = logits
    got = losses.kl_divergence(t, s, T).numpy()
    assert got.shape == (16,)
    np.testing.assert_allclose(got, np_kl(t, s, T), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", TEMPS)
def test_soft_ce_matches_numpy_and_differs_from_kl_by_teacher_entropy(logits, T):
    t, s = logits
    got = losses.soft_cross_entropy(t, s, T).numpy()
    np.testing.assert_allclose(got, np_soft_ce(t, s, T), rtol=1e-4, atol=1e-5)
    p = np_softmax(t, T)
    entropy = -np.sum(p * np.log(p), axis=-1)
    np.testing.assert_allclose(
        got - losses.kl_divergence(t, s, T).numpy(), T**2 * entropy, rtol=1e-3, atol=1e-4
    )


@pytest.mark.parametrize("T", TEMPS)
def test_mse_losses_match_numpy(logits, T):
    t, s = logits
    np.testing.assert_allclose(
        losses.mse_logits(t, s, T).numpy(), np_mse_logits(t, s), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.mse_probs(t, s, T).numpy(), np_mse_probs(t, s, T), rtol=1e-4, atol=1e-7
    )


def test_mse_logits_ignores_temperature(logits):
    t, s = logits
    np.testing.assert_array_equal(
        losses.mse_logits(t, s, 1.0).numpy(), losses.mse_logits(t, s, 7.0).numpy()
    )


def test_kl_is_zero_iff_soft_targets_agree(logits):
    t, s = logits
    np.testing.assert_allclose(losses.kl_divergence(t, t, 3.0).numpy(), 0.0, atol=1e-5)
    # A constant shift of the logits does not change softmax: still zero.
    np.testing.assert_allclose(
        losses.kl_divergence(t, t + 5.0, 3.0).numpy(), 0.0, atol=1e-4
    )
    assert np.all(losses.kl_divergence(t, s, 3.0).numpy() > 1e-3)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_kl_gradient_is_T_times_q_minus_p(logits, T):
    """Hinton et al. 2015 §2: dC/ds = (q - p)/T; times T² gives T·(q - p)."""
    t, s = logits
    s_var = tf.Variable(s)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.kl_divergence(t, s_var, T))
    grad = tape.gradient(loss, s_var).numpy()
    expected = T * (np_softmax(s, T) - np_softmax(t, T))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_soft_ce_has_the_same_gradient_as_kl(logits):
    t, s = logits
    s_var = tf.Variable(s)
    with tf.GradientTape(persistent=True) as tape:
        kl = tf.reduce_sum(losses.kl_divergence(t, s_var, 4.0))
        ce = tf.reduce_sum(losses.soft_cross_entropy(t, s_var, 4.0))
    np.testing.assert_allclose(
        tape.gradient(kl, s_var).numpy(), tape.gradient(ce, s_var).numpy(), atol=1e-5
    )


def test_kl_tends_to_mse_logits_at_high_temperature(rng):
    """Hinton et al. 2015 §2.1: for zero-mean logits, T²·KL → (1/2N)Σ(s−t)²."""
    t = rng.normal(0, 1, size=(8, 10))
    s = rng.normal(0, 1, size=(8, 10))
    t -= t.mean(-1, keepdims=True)
    s -= s.mean(-1, keepdims=True)
    kl = losses.kl_divergence(t.astype(np.float32), s.astype(np.float32), 100.0).numpy()
    mse = losses.mse_logits(t.astype(np.float32), s.astype(np.float32)).numpy()
    np.testing.assert_allclose(kl, mse, rtol=3e-2)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    """float16 log(softmax(z)) underflows to -inf; log_softmax in float32 does not."""
    t = np.array([[30.0, -30.0, 0.0]], np.float32)
    s = np.array([[-30.0, 30.0, 0.0]], np.float32)
    naive = tf.math.log(tf.nn.softmax(tf.cast(s, tf.float16)))
    assert not np.all(np.isfinite(naive.numpy()))  # the trap is real
    for fn in (losses.kl_divergence, losses.soft_cross_entropy, losses.mse_probs):
        got = fn(tf.cast(t, dtype), tf.cast(s, dtype), 1.0)
        assert got.dtype == tf.float32
        assert np.all(np.isfinite(got.numpy()))
    ref = np_kl(tf.cast(t, dtype).numpy().astype(np.float64),
                tf.cast(s, dtype).numpy().astype(np.float64), 1.0)
    np.testing.assert_allclose(
        losses.kl_divergence(tf.cast(t, dtype), tf.cast(s, dtype), 1.0).numpy(),
        ref, rtol=1e-3,
    )


def test_keras_distillation_default_differs_and_ours_is_right():
    """keras.distillation.LogitsDistillation() skips softmax and T²; we do not."""
    keras = pytest.importorskip("keras")
    if not hasattr(keras, "distillation"):
        pytest.skip("this Keras has no keras.distillation")
    rng = np.random.default_rng(3)
    t = rng.normal(0, 4, size=(32, 10)).astype(np.float32)
    s = rng.normal(0, 4, size=(32, 10)).astype(np.float32)
    T = 4.0
    ours = float(np.mean(losses.kl_divergence(t, s, T).numpy()))
    np.testing.assert_allclose(ours, np.mean(np_kl(t, s, T)), rtol=1e-4)
    theirs = float(keras.distillation.LogitsDistillation(temperature=T).compute_loss(t, s))
    assert abs(theirs - ours) > 0.1 * ours
    # Configured with a KLDivergence *object*, Keras applies softmax and T²:
    fixed = float(
        keras.distillation.LogitsDistillation(
            temperature=T, loss=keras.losses.KLDivergence()
        ).compute_loss(t, s)
    )
    np.testing.assert_allclose(fixed, ours, rtol=1e-3)


def test_get_names_callables_and_errors():
    assert losses.get("kl") is losses.kl_divergence
    assert losses.get("soft_ce") is losses.soft_cross_entropy
    assert losses.get("mse_logits") is losses.mse_logits
    assert losses.get("mse_probs") is losses.mse_probs
    assert losses.get("KL") is losses.kl_divergence

    def custom(teacher_logits, student_logits, temperature):
        return losses.kl_divergence(teacher_logits, student_logits, temperature)

    assert losses.get(custom) is custom
    with pytest.raises(ValueError) as err:
        losses.get("kld")
    for name in ("kl", "soft_ce", "mse_logits", "mse_probs"):
        assert name in str(err.value)
    with pytest.raises(TypeError):
        losses.get(3)
    with pytest.raises(TypeError, match="temperature"):
        losses.get(lambda t, s: t)


def test_accepts_labels():
    assert not losses.accepts_labels(losses.kl_divergence)
    assert losses.accepts_labels(lambda t, s, T, labels=None: t)


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_nonpositive_temperature_rejected(logits, T):
    t, s = logits
    with pytest.raises(ValueError, match="temperature"):
        losses.kl_divergence(t, s, T)


def test_integer_logits_rejected():
    with pytest.raises(TypeError, match="floating"):
        losses.kl_divergence(np.ones((2, 3), np.int32), np.ones((2, 3), np.float32), 1.0)


def test_class_mismatch_rejected():
    with pytest.raises(ValueError, match="number of classes"):
        losses.kl_divergence(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32), 1.0)


def test_masked_teacher_classes_give_finite_losses():
    """A class the teacher rules out (logit -inf, p = 0) contributes 0, not NaN."""
    t = np.array([[0.0, -np.inf, 1.0]], np.float32)
    s = np.array([[0.5, 0.2, 0.1]], np.float32)
    kl = losses.kl_divergence(t, s, 2.0).numpy()
    ce = losses.soft_cross_entropy(t, s, 2.0).numpy()
    assert np.all(np.isfinite(kl)) and np.all(np.isfinite(ce))
    t_ok, s_ok = t[:, [0, 2]], s
    p = np_softmax(t_ok, 2.0)
    q = np_softmax(s_ok, 2.0)[:, [0, 2]]
    np.testing.assert_allclose(kl, 4.0 * np.sum(p * (np.log(p) - np.log(q)), -1), rtol=1e-5)


def test_keras_loss_objects_are_refused():
    keras = pytest.importorskip("keras")
    with pytest.raises(TypeError, match="Keras Loss object"):
        losses.get(keras.losses.KLDivergence())


def _np_dkd(t, s, y, T, alpha, beta):
    """DKD from Zhao et al. (2022), eqs. 1-4, written directly in NumPy."""
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    out = []
    for ti, si, yi in zip(t, s, y):
        p, q = softmax(ti / T), softmax(si / T)
        b_p = np.array([p[yi], 1 - p[yi]])
        b_q = np.array([q[yi], 1 - q[yi]])
        tckd = np.sum(b_p * np.log(b_p / b_q))
        mask = np.arange(len(p)) != yi
        p_hat, q_hat = p[mask] / p[mask].sum(), q[mask] / q[mask].sum()
        nckd = np.sum(p_hat * np.log(p_hat / q_hat))
        out.append(T * T * (alpha * tckd + beta * nckd))
    return np.array(out)


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("alpha, beta", [(1.0, 8.0), (0.5, 2.0)])
def test_dkd_matches_the_papers_equations(rng, T, alpha, beta):
    t = rng.normal(size=(6, 5)) * 3
    s = rng.normal(size=(6, 5)) * 3
    y = rng.integers(0, 5, size=6)
    got = losses.dkd(t, s, T, labels=y, alpha=alpha, beta=beta).numpy()
    np.testing.assert_allclose(got, _np_dkd(t, s, y, T, alpha, beta), rtol=1e-4, atol=1e-6)
    # One-hot labels give the same; soft labels their dominant class.
    onehot = np.eye(5)[y]
    np.testing.assert_allclose(losses.dkd(t, s, T, labels=onehot, alpha=alpha, beta=beta),
                               got, rtol=1e-6)
    soft = 0.7 * onehot + 0.3 * np.eye(5)[(y + 1) % 5]
    np.testing.assert_allclose(losses.dkd(t, s, T, labels=soft, alpha=alpha, beta=beta),
                               got, rtol=1e-6)


def test_dkd_decouples_classical_kd(rng):
    """Zhao et al. eq. 5: KD = TCKD + (1 - p_y) NCKD, per example."""
    t, s = rng.normal(size=(4, 6)) * 2, rng.normal(size=(4, 6)) * 2
    y = rng.integers(0, 6, size=4)
    T = 2.0
    tckd = losses.dkd(t, s, T, labels=y, alpha=1.0, beta=0.0).numpy()
    nckd = losses.dkd(t, s, T, labels=y, alpha=0.0, beta=1.0).numpy()
    p = np.asarray(losses.soft_targets(t, T))[np.arange(4), y]
    kd = losses.kl_divergence(t, s, T).numpy()
    np.testing.assert_allclose(tckd + (1 - p) * nckd, kd, rtol=1e-4)
    assert (losses.dkd(t, t, T, labels=y).numpy() == pytest.approx(0.0, abs=1e-5))


def test_dkd_needs_labels_and_is_registered():
    assert losses.get("dkd") is losses.dkd and losses.accepts_labels(losses.dkd)
    with pytest.raises(ValueError, match="needs the true labels"):
        losses.dkd(np.zeros((2, 3)), np.zeros((2, 3)), 2.0)


def _np_dist(t, s, T, beta, gamma, eps=1e-8):
    """DIST from Huang et al. (2022), written from the paper in NumPy:
    L = T² (β · mean_i d(q_i, p_i) + γ · mean_j d(Q_:j, P_:j)), d = 1 − Pearson."""
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def d(u, v):
        u, v = u - u.mean(), v - v.mean()
        return 1.0 - (u @ v) / (np.linalg.norm(u) * np.linalg.norm(v) + eps)

    p, q = softmax(t / T), softmax(s / T)
    inter = np.array([d(q[i], p[i]) for i in range(len(p))])
    intra = np.mean([d(q[:, j], p[:, j]) for j in range(p.shape[1])])
    return T * T * (beta * inter + gamma * intra)


@pytest.mark.parametrize("T, beta, gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_the_papers_equations(rng, T, beta, gamma):
    t = rng.normal(size=(8, 5)) * 3
    s = rng.normal(size=(8, 5)) * 3
    got = losses.dist(t, s, T, beta=beta, gamma=gamma).numpy()
    expected = _np_dist(t, s, T, beta, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # The batch mean is the paper's scalar: inter + intra, each a mean.
    assert got.mean() == pytest.approx(expected.mean(), rel=1e-5)
    assert got.shape == (8,) and np.ptp(got) > 0  # the inter term is per example


def test_dist_is_zero_for_a_perfect_student_and_blind_to_scale(rng):
    t = rng.normal(size=(6, 4)) * 2
    assert losses.dist(t, t, 4.0).numpy() == pytest.approx(np.zeros(6), abs=1e-4)
    # Pearson: an affine change of the soft targets' scale costs nothing,
    # where KL sees a mismatch. Build q = a·p + b per row (still a distribution).
    p = np.asarray(losses.soft_targets(t, 1.0))
    q = 0.5 * p + 0.5 / 4
    s = np.log(q)  # softmax(log q) = q
    inter_only = losses.dist(t, s, 1.0, beta=1.0, gamma=0.0).numpy()
    assert inter_only == pytest.approx(np.zeros(6), abs=1e-4)
    assert np.all(losses.kl_divergence(t, s, 1.0).numpy() > 1e-3)


def test_dist_is_registered():
    assert losses.get("dist") is losses.dist and not losses.accepts_labels(losses.dist)


# -- the one rule for temperature and alpha --------------------------------------------


def test_check_temperature_texts():
    assert losses.check_temperature(2) == 2.0 and isinstance(losses.check_temperature(2), float)
    assert losses.check_temperature(np.float32(0.5)) == 0.5
    for bad in (0.0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError) as err:
            losses.check_temperature(bad)
        assert str(err.value) == (
            f"temperature must be a finite number > 0, got {float(bad)}; keras_kd accepts T in "
            "[0.01, 100] (1 is the plain softmax; 2-8 gives the soft targets of Hinton et al. "
            "2015).")
    for bad in (True, "4", None):
        with pytest.raises(ValueError, match=r"^--temperature must be a number, got "):
            losses.check_temperature(bad, "--temperature")
    # The losses use the same rule for Python numbers (a tensor passes as it is).
    t = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        losses.kl_divergence(t, t, float("inf"))
    with pytest.raises(ValueError, match="must be a number"):
        losses.kl_divergence(t, t, True)
    assert losses.kl_divergence(t, t, tf.constant(2.0)).shape == (2,)


def test_check_alpha_texts():
    assert losses.check_alpha(0) == 0.0 and losses.check_alpha(1) == 1.0
    with pytest.raises(ValueError) as err:
        losses.check_alpha(1.5, "--alpha")
    assert str(err.value) == ("--alpha must be in [0, 1], got 1.5: it weighs the distillation "
                              "loss, and 1 - alpha the label loss.")
    with pytest.raises(ValueError) as err:
        losses.check_alpha(float("nan"))
    assert str(err.value) == "alpha must be a finite number in [0, 1], got nan."
    with pytest.raises(ValueError, match=r"^alpha must be a number, got 'x'\.$"):
        losses.check_alpha("x")
    with pytest.raises(ValueError, match=r"^alpha must be a number, got False\.$"):
        losses.check_alpha(False)


# -- the label loss ---------------------------------------------------------------------


def np_cross_entropy(labels, logits):
    logp = np.log(np_softmax(logits, 1.0))
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[-1] == logits.shape[-1]:
        return -np.sum(labels * logp, axis=-1)
    ids = labels.reshape(-1).astype(int)
    return -logp[np.arange(len(ids)), ids]


def test_cross_entropy_matches_numpy(rng):
    logits = (rng.normal(size=(6, 4)) * 3).astype(np.float32)
    ids = rng.integers(0, 4, size=6)
    soft = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    for labels in (ids.astype(np.int32), ids.astype(np.int64)[:, None],
                   ids.astype(np.float32), np.eye(4, dtype=np.float32)[ids], soft):
        got = losses.cross_entropy(labels, logits)
        assert got.dtype == tf.float32 and got.shape == (6,)
        np.testing.assert_allclose(got.numpy(), np_cross_entropy(labels, logits),
                                   rtol=1e-5, atol=1e-6)
    # float16 logits: the math runs in float32.
    got = losses.cross_entropy(ids, tf.constant(logits, tf.float16))
    assert got.dtype == tf.float32


def test_cross_entropy_label_checks():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        losses.cross_entropy(np.zeros((3, 5), np.float32), logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, 4\)"):
        losses.cross_entropy(np.array([0, 4, 1]), logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, 4\)"):
        losses.cross_entropy(np.array([0, -1, 1]), logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole numbers"):
        losses.cross_entropy(np.array([0.0, 1.5, 1.0], np.float32), logits)


def test_per_example_checks_the_shape_of_a_loss():
    fn = losses.kl_divergence
    logits = tf.zeros((4, 3))
    np.testing.assert_array_equal(losses.per_example(tf.ones((4, 1)), fn, logits), np.ones(4))
    with pytest.raises(ValueError, match=r"'kl_divergence' returned shape \(\).*one value per"):
        losses.per_example(tf.constant(1.0), fn, logits)
