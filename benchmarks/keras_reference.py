"""The MNIST convnet of examples/keras_mnist_cnn.py on real Keras, as the reference for its accuracy.

Keras 2.2.4 itself no longer installs on Python 3.11 (its backends are TensorFlow 1 and Theano),
so this runs Keras 3 on its PyTorch backend with Keras 2.2.4's settings written out where Keras 3
changed its defaults (Adadelta's learning rate 1.0, rho 0.95 and epsilon 1e-7). The model, data
(MNIST through nnkit.keras.datasets, the same arrays), batch size and epochs are those of the
example. One process per seed (``keras.utils.set_random_seed``); prints each test accuracy and
the median, for benchmarks/KERAS.md, beside nnkit.keras's.

    pip install --target /tmp/kpkgs keras absl-py rich namex optree ml-dtypes   # not an nnkit extra
    KERAS_BACKEND=torch PYTHONPATH=/tmp/kpkgs:. NNKIT_DATA=../shared/data \
        python benchmarks/keras_reference.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = """
import json, sys, time
import keras
from keras import layers
from nnkit.keras.datasets import mnist
keras.utils.set_random_seed(int(sys.argv[1]))
(x_train, y_train), (x_test, y_test) = mnist.load_data()
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
y_train, y_test = keras.utils.to_categorical(y_train, 10), keras.utils.to_categorical(y_test, 10)
model = keras.Sequential([
    keras.Input((28, 28, 1)),
    layers.Conv2D(32, (3, 3), activation="relu"), layers.Conv2D(64, (3, 3), activation="relu"),
    layers.MaxPooling2D((2, 2)), layers.Dropout(0.25), layers.Flatten(),
    layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(10, activation="softmax")])
model.compile(loss="categorical_crossentropy", metrics=["accuracy"],
              optimizer=keras.optimizers.Adadelta(learning_rate=1.0, rho=0.95, epsilon=1e-7))
start = time.perf_counter()
model.fit(x_train, y_train, batch_size=128, epochs=12, verbose=2, validation_data=(x_test, y_test))
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print("RESULT " + json.dumps({"loss": loss, "accuracy": accuracy, "seconds": time.perf_counter() - start}))
"""


def main() -> None:
    """Runs the seeds one after another and prints each result and the median accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    accuracies = []
    for seed in args.seeds:
        done = subprocess.run([sys.executable, "-c", CHILD, str(seed)], capture_output=True, text=True,
                              env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})
        if done.returncode != 0:
            raise SystemExit(f"seed {seed} failed:\n{done.stderr[-4000:]}")
        result = json.loads([l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
        accuracies.append(result["accuracy"])
        print(f"seed {seed}: test accuracy {result['accuracy']:.2%}, {result['seconds'] / 60:.1f} min",
              flush=True)
    print(f"median {statistics.median(accuracies):.2%} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
