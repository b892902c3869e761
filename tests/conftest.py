"""Shared test set-up: TensorFlow backend, quiet logs, small thread pools."""

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
