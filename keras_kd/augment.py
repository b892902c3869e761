"""Augmentation applied once per batch, seen by the teacher and the student alike.

Distillation transfers only what the teacher's outputs carry. On the images a
teacher was trained on, its outputs are nearly one-hot; on augmented views
they are soft and informative. Hinton et al. (2015, §3) jittered MNIST by up
to two pixels; Beyer et al. (2022, "Knowledge distillation: a good teacher is
patient and consistent") showed the teacher and the student must see *the
same* augmented view ("consistent teaching"), best with aggressive MixUp
("function matching") and long schedules.

keras_kd therefore augments in the ``tf.data`` pipeline, once per batch,
before the :class:`~keras_kd.Distiller` sees the batch: the teacher's targets
are computed on exactly the images the student trains on. Evaluation data is
never augmented. (keras-cv layers do not compile under XLA either, so they do
not belong inside a jit-compiled train step.)

Policies are named by a spec string; ``+`` chains them, applied left to
right::

    none                        no augmentation
    jitter                      translation by up to 1/14 of the image's side
                                (2 pixels at 28×28; digits, documents)
    jitter:fraction=0.1         by up to 10 % of the side
    jitter:pixels=2,rotation=10,zoom=0.1   by up to 2 pixels at any size, plus ±10°
                                rotation, ±10 % zoom
    flip_crop                   horizontal flip + random crop (≥ 25 % of the
                                area, aspect 3/4–4/3) resized back (natural images)
    flip_crop:flip=0,area=0.08  no flip; Inception-style crops down to 8 %
    randaugment                 keras-cv RandAugment, per image
    randaugment:ops=3,magnitude=0.7
    mixup                       MixUp, mixing ratio ~ Beta(0.2, 0.2); mixes labels
    cutmix                      CutMix, box area ~ Beta(1, 1); mixes labels
    function_matching           flip_crop + mixup:alpha=1 (Beyer et al.)
    randaugment+mixup           any chain

Label-mixing policies (``mixup``, ``cutmix``, ``function_matching``) turn
sparse labels into one-hot vectors and mix them like the images; the result
is a soft label the Distiller's (and Keras's categorical) cross-entropy
takes. They need labels and the number of classes. MixUp and CutMix are
implemented here (:class:`_MixUp`, :class:`_CutMix`), not taken from
keras-cv, whose versions repeated the same mixing every epoch under a global
seed and mislabel CutMix boxes clipped at the border.

Value range: every policy takes images in ``value_range`` and returns them
in it. keras_kd's data are raw pixels, ``(0, 255)`` (the default); only
RandAugment's colour operations depend on the range, and :func:`apply`
checks every batch against it.

keras-cv 0.9 is its last release; its layers now live in Keras core with
other arguments (see BUILD_NOTES.md). Every keras-cv reference is in this
module, so the move is a one-file change. keras-cv's vectorized layers ignore
``training=False`` and always augment, so keras_kd only maps them over
training data, never places them inside a model. README.md shows
:func:`apply` in use.
"""

import contextlib

import keras
import tensorflow as tf

__all__ = ["POLICIES", "LABEL_MIXING", "JITTER_FRACTION", "Augmentation", "build", "apply", "parse",
           "mixes_labels", "without_label_mixing"]

#: ``jitter``'s default largest shift, as a fraction of the image's height and width:
#: Hinton et al.'s 2 pixels on 28×28 digits. A shift in pixels would not transfer: 2
#: pixels are a quarter of an 8×8 image (the teacher and the students then learn from
#: images shifted half off their frame) and nothing on a 224×224 one.
JITTER_FRACTION = 2 / 28

# name -> {option: (default, minimum, maximum, integer)}; a default of None is "unset"
POLICIES = {
    "none": {},
    "jitter": {
        "fraction": (JITTER_FRACTION, 0.0, 0.49, False),
        "pixels": (None, 0.0, None, False),  # unset: fraction × the side; set: overrides it
        "rotation": (0.0, 0.0, 180.0, False),
        "zoom": (0.0, 0.0, 0.9, False),
    },
    "flip_crop": {
        "flip": (1, 0, 1, True),
        "area": (0.25, 0.01, 1.0, False),
    },
    "randaugment": {
        "ops": (2, 1, 10, True),
        "magnitude": (0.5, 0.0, 1.0, False),
        "rate": (10 / 11, 0.0, 1.0, False),
    },
    "mixup": {"alpha": (0.2, 1e-3, None, False)},
    "cutmix": {"alpha": (1.0, 1e-3, None, False)},
    "function_matching": {
        "flip": (1, 0, 1, True),
        "area": (0.25, 0.01, 1.0, False),
        "alpha": (1.0, 1e-3, None, False),
    },
}
LABEL_MIXING = ("mixup", "cutmix", "function_matching")


def _options_help(name):
    opts = POLICIES[name]
    return ", ".join(f"{k} (default {'unset' if d is None else format(d, 'g')})"
                     for k, (d, *_rest) in opts.items()) or "none"


def parse(spec):
    """``"jitter:pixels=3+mixup"`` → ``[("jitter", {...}), ("mixup", {...})]``.

    Every option of a policy is present in its dict (defaults filled in);
    integer options are ints, the others floats. Raises ValueError for an
    unknown policy or option (listing the valid ones) or a value outside the
    option's range.
    """
    if spec is None:
        return []
    if not isinstance(spec, str):
        raise ValueError(f"an augmentation policy is a string, got {spec!r}.")
    parsed = []
    for part in filter(None, (p.strip() for p in spec.split("+"))):
        name, _, opts = part.partition(":")
        name = name.strip().lower()
        if name not in POLICIES:
            raise ValueError(
                f"unknown augmentation policy {name!r}. Valid policies: "
                f"{', '.join(sorted(POLICIES))} (chain them with '+', e.g. "
                "'randaugment+mixup'; options after ':', e.g. 'jitter:pixels=2').")
        schema = POLICIES[name]
        options = {k: d for k, (d, *_rest) in schema.items()}
        for item in filter(None, (o.strip() for o in opts.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in schema:
                raise ValueError(
                    f"unknown option {item!r} for augmentation policy {name!r}; "
                    f"valid options: {_options_help(name)}.")
            options[key] = _number(name, key, value.strip(), schema[key])
        if name != "none":
            parsed.append((name, options))
    return parsed


def _number(name, key, text, rule):
    _, low, high, integer = rule
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    bad = not (number >= low and (high is None or number <= high))
    if integer and not bad and number != int(number):
        bad = True
    if bad:
        bounds = f"≥ {low:g}" if high is None else f"in [{low:g}, {high:g}]"
        kind = "an integer" if integer else "a number"
        raise ValueError(
            f"augmentation option {name}:{key}={text!r} must be {kind} {bounds}.")
    return int(number) if integer else number


def without_label_mixing(spec):
    """``spec`` without its ``mixup`` and ``cutmix`` parts (``"none"`` if nothing is left),
    e.g. ``"jitter:pixels=3+mixup"`` → ``"jitter:pixels=3"``: the job's default policy for
    training a teacher. ``function_matching`` (crops *and* MixUp in one) is kept whole.
    """
    parse(spec)  # a bad spec is named here, not later
    kept = [part.strip() for part in spec.split("+")
            if part.strip() and part.partition(":")[0].strip().lower() not in ("mixup", "cutmix")]
    return "+".join(kept) or "none"


def mixes_labels(spec):
    """True if ``spec`` mixes labels (MixUp/CutMix): it needs labels."""
    return any(name in LABEL_MIXING for name, _ in parse(spec))


def _needs_labels(spec, but):
    return ValueError(
        f"augmentation policy {spec!r} mixes labels (MixUp/CutMix), but {but}. Fix: use "
        "an image-only policy (jitter, flip_crop, randaugment) or a dataset of (images, labels).")


def _seed(seed, offset):
    """A layer's seed: never 0, which keras-cv 0.9 takes for "no seed" (``if seed:``) and
    replaces with TensorFlow's global generator, whose draws are not the seed's."""
    if seed is None:
        return None
    return (seed + offset) or 2 ** 31 - 1


def _jitter(options, input_shape, seed):
    import keras_cv  # imported here: keras-cv is only needed to augment

    height, width = input_shape[0], input_shape[1]
    layers = []
    pixels = options["pixels"]
    if pixels is not None and pixels >= min(height, width) / 2:
        raise ValueError(
            f"jitter pixels={pixels:g} is too large for {height}x{width} images; use less "
            "than half the image size, or jitter:fraction=F (a share of the side).")
    factors = ((options["fraction"],) * 2 if pixels is None else
               (pixels / height, pixels / width))
    if factors[0] > 0:
        layers.append(keras_cv.layers.RandomTranslation(
            height_factor=factors[0], width_factor=factors[1], fill_mode="constant",
            seed=seed,
        ))
    if options["rotation"] > 0:
        layers.append(keras_cv.layers.RandomRotation(
            factor=options["rotation"] / 360.0, fill_mode="constant",
            seed=_seed(seed, 1),
        ))
    if options["zoom"] > 0:
        layers.append(keras_cv.layers.RandomZoom(
            height_factor=options["zoom"], fill_mode="constant", seed=_seed(seed, 2),
        ))
    return layers


def _flip_crop(options, input_shape, seed):
    import keras_cv

    layers = []
    if options["flip"]:
        layers.append(keras_cv.layers.RandomFlip("horizontal", seed=seed))
    if options["area"] < 1.0:
        layers.append(keras_cv.layers.RandomCropAndResize(
            target_size=tuple(input_shape[:2]),
            crop_area_factor=(options["area"], 1.0),
            aspect_ratio_factor=(3 / 4, 4 / 3),
            seed=_seed(seed, 1),
        ))
    return layers


class _GrayAsRGB:
    """Runs an RGB-only layer on 1-channel images (tiled to 3, averaged back)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, images, training=True):
        rgb = tf.repeat(images, 3, axis=-1)
        return tf.reduce_mean(self.inner(rgb, training=training), axis=-1, keepdims=True)


def _randaugment(options, input_shape, seed, value_range):
    import keras_cv

    layer = keras_cv.layers.RandAugment(
        value_range=tuple(value_range),
        augmentations_per_image=options["ops"],
        magnitude=options["magnitude"],
        rate=options["rate"],
        seed=seed,
    )
    channels = input_shape[-1]
    if channels == 1:  # its colour operations need RGB
        return [_GrayAsRGB(layer)]
    if channels != 3:
        raise ValueError(
            f"randaugment needs 1- or 3-channel images, got {channels} channels.")
    return [layer]


@contextlib.contextmanager
def _float32_layers():
    """Layers built inside compute in float32 whatever the global dtype policy: under
    ``mixed_float16`` keras-cv's layers would return float16 images (which MixUp's float32
    ratios cannot multiply) and RandAugment would fail outright; 0-255 pixels need float32."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)


class Augmentation:
    """A parsed policy, applied to one batch: ``(images, labels) → (images, labels)``.

    ``input_shape`` is the images' ``(H, W, C)``; ``num_classes`` is needed by
    label-mixing policies for sparse labels; ``value_range`` is the images'
    ``(low, high)``. ``mixes_labels`` tells whether the labels come out as
    mixed one-hot vectors. Calling it with ``labels=None`` augments images
    only (an error for a label-mixing policy).
    """

    def __init__(self, spec, input_shape, num_classes=None, seed=None,
                 value_range=(0, 255)):
        self.spec = spec
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.value_range = tuple(float(v) for v in value_range)
        if not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}.")
        # Stages: ("images", keras-cv layer) or ("mix", _MixUp / _CutMix).
        self.stages = []
        with _float32_layers():
            self._build_stages(spec, seed)
        self.mixes_labels = any(kind != "images" for kind, _ in self.stages)

    def _build_stages(self, spec, seed):
        for i, (name, options) in enumerate(parse(spec)):
            s = _seed(seed, 10 * i)
            if name == "jitter":
                self.stages += [("images", lay) for lay in _jitter(options, self.input_shape, s)]
            elif name in ("flip_crop", "function_matching"):
                self.stages += [("images", lay) for lay in _flip_crop(options, self.input_shape, s)]
            elif name == "randaugment":
                self.stages += [("images", lay) for lay in _randaugment(
                    options, self.input_shape, s, self.value_range)]
            if name in ("mixup", "function_matching"):
                self.stages.append(("mix", _MixUp(options["alpha"], seed=_seed(s, 5))))
            elif name == "cutmix":
                self.stages.append(("mix", _CutMix(options["alpha"], seed=_seed(s, 5))))

    def __bool__(self):
        return bool(self.stages)

    def soft_labels(self, labels):
        """Sparse ids → float32 one-hot; soft/one-hot labels pass through."""
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 2 and labels.shape[-1] not in (None, 1):
            return tf.cast(labels, tf.float32)
        if self.num_classes is None:
            raise ValueError(
                f"augmentation policy {self.spec!r} mixes labels, which needs the "
                "number of classes for sparse labels. Fix: pass num_classes= "
                "(keras_kd.data's info.num_classes).")
        ids = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        return tf.one_hot(ids, self.num_classes, dtype=tf.float32)

    def __call__(self, images, labels=None):
        if self.mixes_labels and labels is None:
            raise _needs_labels(self.spec, "there are none")
        images = tf.cast(images, tf.float32)
        if self.mixes_labels:
            labels = self.soft_labels(labels)
        for kind, layer in self.stages:
            if kind == "images":
                images = layer(images, training=True)
            else:
                images, labels = layer(images, labels)
        return images if labels is None else (images, labels)


class _Mixer:
    """Shared randomness of MixUp and CutMix: ``λ ~ Beta(α, α)`` and a partner.

    Not keras-cv's ``MixUp``/``CutMix``: their op-seeded random ops (e.g.
    ``tf.random.shuffle(seed=...)``) restart with every new iterator, so under
    a global seed they drew the *same* pairs and ratios every epoch
    (``tests/test_augment.py::test_every_epoch_gets_fresh_views`` failed for
    both). Here a ``tf.random.Generator`` supplies the randomness; its state
    advances from batch to batch and epoch to epoch.
    """

    def __init__(self, alpha, seed=None):
        self.alpha = float(alpha)
        self.generator = (tf.random.Generator.from_seed(seed) if seed is not None
                          else tf.random.Generator.from_non_deterministic_state())

    def draw(self, n):
        """``(λ [n], partner [n])``: mixing ratios and a random permutation."""
        seeds = self.generator.make_seeds(2)
        a = tf.random.stateless_gamma([n], seed=seeds[:, 0], alpha=self.alpha)
        b = tf.random.stateless_gamma([n], seed=seeds[:, 1], alpha=self.alpha)
        partner = tf.argsort(self.generator.uniform([n]))
        return a / (a + b), partner


class _MixUp(_Mixer):
    """MixUp (Zhang et al. 2018): ``x = λ·x_i + (1-λ)·x_j``, same for ``y``.

    ``λ ~ Beta(α, α)`` per example, ``j`` a random partner in the batch.
    """

    def __call__(self, images, labels):
        lam, partner = self.draw(tf.shape(images)[0])
        weight = lam[:, None, None, None]
        images = weight * images + (1.0 - weight) * tf.gather(images, partner)
        labels = lam[:, None] * labels + (1.0 - lam[:, None]) * tf.gather(labels, partner)
        return images, labels


class _CutMix(_Mixer):
    """CutMix (Yun et al. 2019), with labels mixed by the area actually pasted.

    Each image ``i`` gets a box of its partner ``j`` pasted in: the box has
    sides ``√(1-λ)·H`` and ``√(1-λ)·W``, ``λ ~ Beta(α, α)``, a uniform random
    centre, and is clipped at the border. The label is
    ``y = s·y_i + (1 - s)·y_j``, with ``s`` the share of pixels still from
    image ``i`` after clipping. (keras-cv 0.9's ``CutMix`` weighs the labels
    by the *unclipped* box area: for a box at the edge, labels 0.88 vs
    pixels 0.76.)
    """

    def __call__(self, images, labels):
        shape = tf.shape(images)
        n, height, width = shape[0], shape[1], shape[2]
        lam, partner = self.draw(n)
        side = tf.sqrt(1.0 - lam)
        cut_h = tf.cast(side * tf.cast(height, tf.float32), tf.int32)
        cut_w = tf.cast(side * tf.cast(width, tf.float32), tf.int32)
        centre_y = self.generator.uniform([n], 0, height, dtype=tf.int32)
        centre_x = self.generator.uniform([n], 0, width, dtype=tf.int32)
        top, left = centre_y - cut_h // 2, centre_x - cut_w // 2
        rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < (top + cut_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + cut_w)[:, None])
        box = in_rows[:, :, None] & in_cols[:, None, :]  # [n, H, W], clipped
        mixed = tf.where(box[..., None], tf.gather(images, partner), images)
        own = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32), axis=[1, 2])
        labels = own[:, None] * labels + (1.0 - own[:, None]) * tf.gather(labels, partner)
        return mixed, labels


def build(spec, input_shape, seed=None, num_classes=None, value_range=(0, 255)):
    """The :class:`Augmentation` for ``spec``, or None for ``"none"``."""
    augmentation = Augmentation(spec, input_shape, num_classes=num_classes, seed=seed,
                                value_range=value_range)
    return augmentation if augmentation else None


def apply(dataset, spec, input_shape=None, seed=None, num_classes=None,
          value_range=(0, 255), prefetch=True):
    """Maps ``dataset`` of ``(images, labels[, weights])`` batches through ``spec``.

    Runs once per batch in the input pipeline, so both models of a Distiller
    see the same augmented images. The batches are augmented in order (one
    at a time, then prefetched unless ``prefetch=False``): the random draws
    come from generators seeded with ``seed``, so the same seed gives the same
    views (a parallel map would hand the draws to batches in thread order).
    Returns ``dataset`` unchanged for ``"none"``. With a
    label-mixing policy the labels come out as mixed one-hot vectors
    (``num_classes`` is needed for sparse labels). Raises ValueError for an
    invalid spec or a label-mixing policy on a dataset without labels; when
    iterated, tf.errors.InvalidArgumentError for a batch holding NaN or Inf
    (counted, named first), outside ``value_range``, or of 0-1 data given to a
    0-255 policy.
    """
    spec_elements = dataset.element_spec
    has_labels = isinstance(spec_elements, tuple) and len(spec_elements) >= 2
    image_spec = spec_elements[0] if isinstance(spec_elements, tuple) else spec_elements
    if input_shape is None:
        input_shape = tuple(image_spec.shape[1:])
    augmentation = build(spec, input_shape, seed=seed, num_classes=num_classes,
                         value_range=value_range)
    if augmentation is None:
        return dataset
    if augmentation.mixes_labels and not has_labels:
        raise _needs_labels(spec, "the dataset yields images only")
    low, high = augmentation.value_range
    tolerance = 1e-3 * (high - low)

    def augment(*batch):  # autograph on: keras-cv's Equalization needs it
        # Checked per batch inside the pipeline (a few reductions): reading a
        # batch ahead would advance a seeded shuffle and change the run. NaN and
        # Inf are named first: the min and max of such a batch say nothing useful.
        images = tf.cast(batch[0], tf.float32)
        lo, hi = tf.reduce_min(images), tf.reduce_max(images)
        nans = tf.reduce_sum(tf.cast(tf.math.is_nan(images), tf.int64))
        infs = tf.reduce_sum(tf.cast(tf.math.is_inf(images), tf.int64))
        finite = tf.equal(nans + infs, 0)
        checks = [
            tf.debugging.Assert(finite, [
                "augmentation: this batch holds pixel values that are NaN or infinite, "
                "so they would reach both models and the loss; NaN count and Inf count:",
                nans, infs,
                "Fix: find where they come from (a division by zero or a log in your "
                "preprocessing, an overflowing cast, a corrupt source) and feed finite "
                "pixels; keras_kd.data yields raw 0-255 pixels, never NaN."]),
            tf.debugging.Assert(
                ~finite | ((lo >= low - tolerance) & (hi <= high + tolerance)),
                [f"augmentation: images outside value_range ({low:g}, {high:g}); "
                 "min and max of this batch:", lo, hi,
                 "Fix: pass value_range= bounds that match the data, or feed raw "
                 "0-255 pixels as keras_kd.data does."], summarize=3)]
        if high >= 255:
            checks.append(tf.debugging.Assert(
                ~finite | (hi > 1.0) | (hi <= lo),
                [f"augmentation: images look scaled to [0, 1], but the policy "
                 f"expects value_range ({low:g}, {high:g}). Fix: pass "
                 "value_range=(0, 1), or feed raw 0-255 pixels (keras_kd models "
                 "rescale inside). Batch max:", hi]))
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        if not has_labels:
            return augmentation(images)
        images, labels = augmentation(images, batch[1])
        return (images, labels, *batch[2:])

    dataset = dataset.map(augment)
    return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset
