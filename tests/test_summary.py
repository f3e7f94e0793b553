from flax_mnist import summary

KERAS_TABLE = '''\
Model: "keras_cnn"
_________________________________________________________________
Layer (type)                 Output Shape              Param #
=================================================================
conv2d (Conv)                (None, 26, 26, 32)        320
_________________________________________________________________
max_pooling2d (MaxPool)      (None, 13, 13, 32)        0
_________________________________________________________________
conv2d_1 (Conv)              (None, 11, 11, 64)        18496
_________________________________________________________________
max_pooling2d_1 (MaxPool)    (None, 5, 5, 64)          0
_________________________________________________________________
conv2d_2 (Conv)              (None, 3, 3, 64)          36928
_________________________________________________________________
flatten (Flatten)            (None, 576)               0
_________________________________________________________________
dense (Dense)                (None, 64)                36928
_________________________________________________________________
dense_1 (Dense)              (None, 10)                650
=================================================================
Total params: 93,322
Trainable params: 93,322
Non-trainable params: 0
_________________________________________________________________'''


def test_keras_cnn_summary_matches_the_tutorial():
  assert summary.format_summary('keras_cnn') == KERAS_TABLE


def test_deep_cnn_rows():
  rows = summary.layer_rows('deep_cnn')
  assert [(r[0], r[2], r[3]) for r in rows] == [
      ('conv1', (28, 28, 32), 832), ('pool1', (14, 14, 32), 0),
      ('conv2', (14, 14, 64), 51_264), ('pool2', (7, 7, 64), 0),
      ('flatten', (3136,), 0), ('fc1', (1024,), 3_212_288),
      ('dropout', (1024,), 0), ('fc2', (10,), 10_250)]
  assert 'Total params: 3,274,634' in summary.format_summary('deep_cnn')


def test_multiply_adds_give_the_issue_flop_count():
  # 6 flops per multiply-add per image, 60,000 images: 5.0 TFLOP per epoch.
  assert summary.multiply_adds('deep_cnn') == 13_883_904
  assert summary.multiply_adds('softmax_regression') == 7_840
  assert summary.multiply_adds('keras_cnn') == 2_794_240
