"""A Keras 2 MNIST convnet in the style of Keras's own examples/mnist_cnn.py, on nnkit.

Two 3x3 convolutions (32 and 64 filters, ReLU), 2x2 max pooling, dropout 0.25, a 128-unit
ReLU layer with dropout 0.5 and a softmax; Adadelta at Keras's defaults, batches of 128,
12 epochs. Channels-last arrays, as Keras's default image data format. The only nnkit-specific
lines are the imports. Keras documents 99.25% test accuracy for its version after 12 epochs;
benchmarks/keras_examples.py measures ours.

    python examples/keras_mnist_cnn.py        # data: $NNKIT_DATA (or ~/.nnkit/datasets)
"""
from __future__ import print_function

import nnkit.keras as keras
from nnkit.keras import backend as K
from nnkit.keras.datasets import mnist
from nnkit.keras.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from nnkit.keras.models import Sequential

batch_size = 128
num_classes = 10
epochs = 12
img_rows, img_cols = 28, 28

(x_train, y_train), (x_test, y_test) = mnist.load_data()
if K.image_data_format() == 'channels_first':
    x_train = x_train.reshape(x_train.shape[0], 1, img_rows, img_cols)
    x_test = x_test.reshape(x_test.shape[0], 1, img_rows, img_cols)
    input_shape = (1, img_rows, img_cols)
else:
    x_train = x_train.reshape(x_train.shape[0], img_rows, img_cols, 1)
    x_test = x_test.reshape(x_test.shape[0], img_rows, img_cols, 1)
    input_shape = (img_rows, img_cols, 1)
x_train = x_train.astype('float32') / 255
x_test = x_test.astype('float32') / 255
print('x_train shape:', x_train.shape)

y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = Sequential()
model.add(Conv2D(32, kernel_size=(3, 3), activation='relu', input_shape=input_shape))
model.add(Conv2D(64, (3, 3), activation='relu'))
model.add(MaxPooling2D(pool_size=(2, 2)))
model.add(Dropout(0.25))
model.add(Flatten())
model.add(Dense(128, activation='relu'))
model.add(Dropout(0.5))
model.add(Dense(num_classes, activation='softmax'))

model.compile(loss=keras.losses.categorical_crossentropy, optimizer=keras.optimizers.Adadelta(),
              metrics=['accuracy'])
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=1,
          validation_data=(x_test, y_test))
score = model.evaluate(x_test, y_test, verbose=0)
print('Test loss:', score[0])
print('Test accuracy:', score[1])
