"""``python -m keras_kd`` == ``keras-kd``."""

from keras_kd.cli import run

if __name__ == "__main__":
    run()
