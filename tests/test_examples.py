"""The examples run as documented (at smoke-test size)."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_and_its_export_agrees(tmp_path):
    result = _load("quickstart").main(epochs=1, output_dir=str(tmp_path))
    assert os.path.exists(result["path"])
    assert result["tflite"]["agreement"] >= 0.99
    assert result["tflite"]["accuracy"] == pytest.approx(result["keras"]["accuracy"], abs=0.005)
