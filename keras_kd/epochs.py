"""Training batches as a function of ``(seed, epoch)``: one stream, the same for every model.

    stream = keras_kd.epochs.Epochs(examples, num_examples=4000, batch_size=64, seed=0,
                                    augment="jitter", input_shape=(28, 28, 1),
                                    num_classes=10)
    model.fit(stream.batches(0, 12), epochs=12, steps_per_epoch=stream.steps)

Epoch ``e`` is the unbatched ``examples`` shuffled with the seed
:func:`epoch_seed` ``(seed, e)`` (a fresh, non-reshuffling shuffle), batched,
then augmented by a policy of :mod:`keras_kd.augment` built with that same
seed and mapped in order (its random draws come from generators seeded per
epoch, so they do not depend on thread timing). So:

- the baseline and the distilled student, built from two ``Epochs`` with the
  same arguments, see the same batches in the same order with the same
  augmented views: the only difference between them is the teacher;
- a run resumed at epoch ``k`` (``batches(k, n)``) reads exactly what the
  unbroken run read from epoch ``k`` on;
- zipping extra data into ``examples`` (the teacher cache's logits) keeps the
  order: the permutation depends on the seed, the buffer and the number of
  examples, not on what they hold.
"""

import functools
import math

import tensorflow as tf

from keras_kd import augment as augment_lib
from keras_kd import data

__all__ = ["Epochs", "epoch_seed"]

def epoch_seed(seed, epoch):
    """The seed of epoch ``epoch`` of a run seeded ``seed``: a positive int of both only."""
    return 1 + (int(seed) * 1_000_003 + int(epoch)) % (2 ** 31 - 2)


class Epochs:
    """The training stream of a run: epoch ``e`` is a function of ``(seed, e)`` only.

    Args:
      examples: unbatched ``(image, label[, ...])`` elements in a fixed order
        (``keras_kd.data.load_unbatched``'s training split).
      num_examples: how many (None: counted once).
      batch_size: examples per batch (the last batch of an epoch may be short).
      seed: the run's seed.
      augment: an augmentation policy (:mod:`keras_kd.augment`), applied per
        batch; ``"none"`` for none.
      input_shape, num_classes: the images' ``(H, W, C)`` and the number of
        classes (label-mixing policies need it).
      shuffle_buffer: at most this many examples in the shuffle buffer (also
        capped at ~512 MiB of float32 images and at ``num_examples``).
    """

    def __init__(self, examples, *, num_examples=None, batch_size, seed, augment="none",
                 input_shape=None, num_classes=None, shuffle_buffer=10_000):
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        augment_lib.parse(augment)  # a bad policy fails here, not at the first epoch
        self.examples = examples
        self.batch_size = batch_size
        self.seed = int(seed)
        self.augment = augment
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.num_examples = int(num_examples if num_examples is not None
                                else examples.reduce(0, lambda n, _: n + 1))
        if self.num_examples < 1:
            raise ValueError("the training split is empty: nothing to train on. Fix: check "
                             "--dataset (and --validation_split) leave training examples.")
        if input_shape is None:
            input_shape = tuple(tf.nest.flatten(examples.element_spec)[0].shape)
        self.shuffle_buffer = data.shuffle_size(
            shuffle_buffer, self.num_examples, [int(d or 1) for d in input_shape])

    @property
    def steps(self):
        """Batches per epoch (``steps_per_epoch`` of ``fit``)."""
        return math.ceil(self.num_examples / self.batch_size)

    def replace(self, **changes):
        """A copy with other settings (e.g. ``augment="none"``, another ``examples``)."""
        settings = {"examples": self.examples, "num_examples": self.num_examples,
                    "batch_size": self.batch_size, "seed": self.seed, "augment": self.augment,
                    "input_shape": self.input_shape, "num_classes": self.num_classes,
                    "shuffle_buffer": self.shuffle_buffer}
        return Epochs(**{**settings, **changes})

    def epoch(self, epoch):
        """The batches of one epoch (0-based), shuffled and augmented with its own seed."""
        seed = epoch_seed(self.seed, epoch)
        batches = self.examples.shuffle(self.shuffle_buffer, seed=seed,
                                        reshuffle_each_iteration=False)
        batches = batches.batch(self.batch_size, drop_remainder=False)
        return augment_lib.apply(batches, self.augment, self.input_shape, seed=seed,
                                 num_classes=self.num_classes, prefetch=False)

    def batches(self, start, stop):
        """Epochs ``start`` … ``stop - 1`` one after the other, prefetched: for ``fit(...,
        epochs=stop, steps_per_epoch=self.steps)`` from epoch ``start`` (a resumed run)."""
        if not 0 <= start < stop:
            raise ValueError(f"need 0 <= start < stop, got start={start}, stop={stop}.")
        epochs = (self.epoch(e) for e in range(start, stop))
        stream = functools.reduce(lambda a, b: a.concatenate(b), epochs)
        # tf.data's default static optimizations, and the auto-shard rewrite that a
        # tf.distribute strategy's experimental_distribute_dataset applies even to one
        # worker, rebuild the pipeline from a serialized graph in which every epoch's
        # branch holds its own copy of in-memory examples: the training split once per
        # epoch (animals10k, 160 epochs: 5.3 GB resident instead of 1.2 GB;
        # benchmarks/stream_memory.py). Both off; the batches are the same. (Multi-worker
        # training shards by DATA: fit_loop's own options override this one there.)
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return stream.prefetch(tf.data.AUTOTUNE).with_options(options)
