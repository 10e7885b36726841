"""A Keras 2 MNIST MLP in the style of Keras's own examples/mnist_mlp.py, on nnkit.

Two hidden layers of 512 ReLU units with dropout 0.2, RMSprop at Keras's defaults, batches of
128, 20 epochs. The only nnkit-specific line is the first import (Keras: `import keras`).
Keras documents 98.40% test accuracy for its version of this net after 20 epochs;
benchmarks/keras_examples.py measures ours.

    python examples/keras_mnist_mlp.py        # data: $NNKIT_DATA (or ~/.nnkit/datasets)
"""
from __future__ import print_function

import nnkit.keras as keras
from nnkit.keras.datasets import mnist
from nnkit.keras.layers import Dense, Dropout
from nnkit.keras.models import Sequential
from nnkit.keras.optimizers import RMSprop

batch_size = 128
num_classes = 10
epochs = 20

# 28x28 uint8 digits, flattened to 784 floats in [0, 1]
(x_train, y_train), (x_test, y_test) = mnist.load_data()
x_train = x_train.reshape(-1, 784).astype('float32') / 255
x_test = x_test.reshape(-1, 784).astype('float32') / 255
print(x_train.shape[0], 'train samples')
print(x_test.shape[0], 'test samples')

# one-hot targets for the categorical cross-entropy
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = Sequential()
model.add(Dense(512, activation='relu', input_shape=(784,)))
model.add(Dropout(0.2))
model.add(Dense(512, activation='relu'))
model.add(Dropout(0.2))
model.add(Dense(num_classes, activation='softmax'))
model.summary()

model.compile(loss='categorical_crossentropy', optimizer=RMSprop(), metrics=['accuracy'])
history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=1,
                    validation_data=(x_test, y_test))
score = model.evaluate(x_test, y_test, verbose=0)
print('Test loss:', score[0])
print('Test accuracy:', score[1])
