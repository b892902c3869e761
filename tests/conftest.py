"""Shared test set-up: TensorFlow backend, quiet logs, a fixed seed and a clean graph per test.

The suite runs under pytest-xdist (``pytest -n auto tests``, README): every test
writes under its own ``tmp_path`` and multi-process tests pick free ports, so
tests share nothing across workers."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import keras_kd  # noqa: F401  (checks the backend once)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global seed and a clean Keras graph."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
