import xml.etree.ElementTree as ElementTree

import pytest
from PIL import Image

from flax_mnist import cli, graph, summary
from flax_mnist.errors import FlaxMnistError

SVG = '{http://www.w3.org/2000/svg}'


def test_svg_has_a_box_per_layer_with_shape_and_parameters(tmp_path):
  path = tmp_path / 'keras.svg'
  graph.save('keras_cnn', str(path))
  root = ElementTree.parse(path).getroot()
  texts = [t.text for t in root.iter(f'{SVG}text')]
  assert texts[0] == 'keras_cnn: 93,322 parameters'
  assert texts[1:3] == ['input', 'output 28x28x1']
  rows = summary.layer_rows('keras_cnn')
  # The background, then the input's box and one per layer.
  assert len(list(root.iter(f'{SVG}rect'))) == 2 + len(rows)
  assert len(list(root.iter(f'{SVG}polygon'))) == len(rows)  # arrows
  assert texts[3:5] == ['conv2d (Conv)', 'output 26x26x32 · 320 parameters']
  assert texts[-2:] == ['dense_1 (Dense)', 'output 10 · 650 parameters']


def test_png_size_follows_the_layers(tmp_path):
  path = tmp_path / 'deep.png'
  graph.save('deep_cnn', str(path))
  height = graph._layout('deep_cnn')[2]
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.size == (2 * graph.WIDTH, 2 * height)
  assert height > 9 * 46  # the input and 8 layers


def test_unknown_extension_is_a_clear_error(tmp_path):
  with pytest.raises(FlaxMnistError, match=r'name it \.svg or \.png'):
    graph.save('keras_cnn', str(tmp_path / 'net.pdf'))


def test_summary_graph_on_the_command_line(tmp_path, capsys):
  path = tmp_path / 'net.svg'
  assert cli.main(['summary', '--model', 'softmax_regression', '--graph', str(path)]) == 0
  assert 'Total params: 7,850' in capsys.readouterr().out
  assert ElementTree.parse(path).getroot().tag == f'{SVG}svg'
  assert cli.main(['summary', '--model', 'keras_cnn', '--graph',
                   str(tmp_path / 'missing' / 'net.png')]) == 2
  assert 'cannot write the graph' in capsys.readouterr().err
