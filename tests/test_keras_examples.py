"""Keras 2 scripts in the style of Keras's MNIST examples run on nnkit.keras and learn.

The scripts (examples/keras_mnist_mlp.py, examples/keras_mnist_cnn.py) are run as they are;
only the harness shrinks them: a slice of the real data and one epoch (the full runs are
benchmarks/keras_examples.py).
"""
import re
import runpy

import numpy as np
import pytest

from helpers import DATA, ROOT

pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist")


def run_small(name, monkeypatch, train, test, epochs=1):
    """Runs examples/<name>.py on the first ``train``/``test`` examples for ``epochs``."""
    from nnkit.keras import models
    from nnkit.keras.datasets import mnist

    monkeypatch.setenv("NNKIT_DATA", str(DATA))
    full = mnist.load_data

    def small(path=None):
        (x, y), (xt, yt) = full(path)
        return (x[:train], y[:train]), (xt[:test], yt[:test])

    fit = models.Sequential.fit
    monkeypatch.setattr(mnist, "load_data", small)
    monkeypatch.setattr(models.Sequential, "fit",
                        lambda self, *args, **kwargs: fit(self, *args, **{**kwargs, "epochs": epochs}))
    np.random.seed(0)  # the model's seed is drawn from it, as Keras scripts expect
    return runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="__main__")


@pytest.mark.parametrize("name", ["keras_mnist_mlp", "keras_mnist_cnn"])
def test_the_scripts_import_only_nnkit_keras(name):
    source = (ROOT / "examples" / f"{name}.py").read_text()
    imports = re.findall(r"^(?:from|import) (\S+)", source, re.M)
    assert imports and all(m == "__future__" or m.startswith("nnkit.keras") for m in imports)


def test_mlp_script_learns(monkeypatch, capsys):
    done = run_small("keras_mnist_mlp", monkeypatch, train=20000, test=2000, epochs=2)
    score, history = done["score"], done["history"]
    assert set(history.history) >= {"loss", "acc", "val_loss", "val_acc"}
    assert len(history.history["acc"]) == 2 and history.history["acc"] == history.history["accuracy"]
    out = capsys.readouterr().out
    assert "Test accuracy:" in out and "Total params: 669,706" in out  # Keras's count
    print(f"MLP, 20000 examples, 2 epochs: test accuracy {score[1]:.4f}")
    assert score[1] > 0.9  # chance is 0.1


@pytest.mark.slow
def test_cnn_script_learns(monkeypatch, capsys):
    done = run_small("keras_mnist_cnn", monkeypatch, train=4000, test=1000)
    score = done["score"]
    print(f"convnet, 4000 examples, 1 epoch: test accuracy {score[1]:.4f}")
    assert score[1] > 0.8
