"""The TF2 Keras CNN tutorial's own code, run with TensorFlow: end_to_end.py's reference.

    python benchmarks/tf_keras.py --data-dir ../shared/mnist [--batch-size 32]

The tutorial's Sequential CNN, `model.compile(optimizer='adam',
loss='sparse_categorical_crossentropy', metrics=['accuracy'])`,
`model.fit(train_images, train_labels, epochs=1, batch_size=B)` and
`model.evaluate(test_images, test_labels)`, on the same IDX files (read
with numpy; neither flax-mnist nor JAX is imported). Prints one JSON line:
test accuracy, training and evaluation seconds. Needs TensorFlow
(`pip install tensorflow-cpu`); without it, it says so and exits with
status 3.
"""

import json
import sys
import time

import plain_mnist

MISSING = 3


def main():
  args = plain_mnist.arguments(__doc__).parse_args()
  try:
    import tensorflow as tf
  except ImportError:
    print('tf_keras.py: TensorFlow is not installed (pip install tensorflow-cpu)',
          file=sys.stderr)
    sys.exit(MISSING)
  from tensorflow.keras import layers, models

  train_images, train_labels = plain_mnist.load(args.data_dir, 'train')
  test_images, test_labels = plain_mnist.load(args.data_dir, 't10k')
  train_images = train_images.reshape((60000, 28, 28, 1)) / 255.0
  test_images = test_images.reshape((10000, 28, 28, 1)) / 255.0

  model = models.Sequential()
  model.add(layers.Input(shape=(28, 28, 1)))
  model.add(layers.Conv2D(32, (3, 3), activation='relu'))
  model.add(layers.MaxPooling2D((2, 2)))
  model.add(layers.Conv2D(64, (3, 3), activation='relu'))
  model.add(layers.MaxPooling2D((2, 2)))
  model.add(layers.Conv2D(64, (3, 3), activation='relu'))
  model.add(layers.Flatten())
  model.add(layers.Dense(64, activation='relu'))
  model.add(layers.Dense(10, activation='softmax'))
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy',
                metrics=['accuracy'])
  tf.random.set_seed(0)
  start = time.perf_counter()
  if args.max_steps:
    train_images = train_images[:args.max_steps * args.batch_size]
    train_labels = train_labels[:args.max_steps * args.batch_size]
  model.fit(train_images, train_labels, epochs=args.epochs,
            batch_size=args.batch_size, verbose=0)
  train_seconds = time.perf_counter() - start
  _, accuracy = model.evaluate(test_images, test_labels, verbose=0)
  print(json.dumps({'test_accuracy': float(accuracy), 'train_seconds': train_seconds,
                    'eval_seconds': time.perf_counter() - start - train_seconds}))


if __name__ == '__main__':
  main()
