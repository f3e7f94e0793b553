"""A trained workdir's model as a file other programs run: StableHLO or ONNX.

Both files compute the same function, the model's test-time forward pass with
its trained parameters baked in:

  images: uint8, shape (N, 28, 28), any N >= 1, pixel values 0-255 as in the
          IDX files (white on black); the file itself divides by 255
  -> probabilities: float32, shape (N, 10), the softmax over the classes

`stablehlo` is `jax.export` with a symbolic batch dimension, serialized: any
JAX program deserializes and calls it without this library. `onnx` is an ONNX
graph written with `onnx.helper` from the parameters, layer by layer
(jax2onnx needs an orbax-checkpoint older than this library's), for
onnxruntime and other ONNX clients. ONNX files carry the contract in their
metadata; StableHLO's serialization has room only for shapes and dtypes, so
the rest goes in a JSON file beside it (`FILE.json`).
"""

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_mnist import configs
from flax_mnist import datasets
from flax_mnist import evaluation
from flax_mnist import models
from flax_mnist import ops
from flax_mnist import resume
from flax_mnist.errors import FlaxMnistError

FORMATS = ('stablehlo', 'onnx')
_SUFFIXES = {'stablehlo': '.stablehlo', 'onnx': '.onnx'}
# The platforms a StableHLO file is lowered for: it runs on any of them.
PLATFORMS = ('cpu', 'cuda', 'tpu')
# ONNX opset 17 (IR version 8): every onnxruntime since 1.12 runs it.
_OPSET, _IR_VERSION = 17, 8


def contract(config: configs.Config, step: int) -> dict[str, Any]:
  """What an exported file takes and gives, and what it was made from."""
  return {
      'input': 'images: uint8, shape (N, 28, 28), any N >= 1; pixel values '
               '0-255 as in the IDX files, white on black (the file divides '
               'by 255 itself)',
      'output': 'probabilities: float32, shape (N, 10), softmax over the classes',
      'class_names': list(datasets.get(config.dataset).class_names),
      'dataset': config.dataset,
      'model': config.model,
      'step': step,
  }


def export_workdir(workdir: str, format: str, out: str | None = None) -> str:
  """Writes `workdir`'s latest checkpoint as `format` and returns the path.

  `out` defaults to `WORKDIR/model.stablehlo` or `WORKDIR/model.onnx`.
  """
  if format not in FORMATS:
    raise FlaxMnistError(f'unknown export format {format!r}; choose one of: '
                         f'{", ".join(FORMATS)}')
  config, state = resume.restore_workdir(workdir)
  out = out or os.path.join(workdir, 'model' + _SUFFIXES[format])
  about = contract(config, int(state.step))
  if format == 'onnx':
    _write(out, to_onnx(config, state.params, about).SerializeToString())
  else:
    _write(out, to_stablehlo(config, state.params).serialize())
    _write(out + '.json', (json.dumps(about, indent=2) + '\n').encode())
  return out


def _write(path: str, content: bytes) -> None:
  try:
    with open(path, 'wb') as f:
      f.write(content)
  except OSError as e:
    raise FlaxMnistError(f'{path}: cannot write the exported model '
                         f'({e.strerror})') from None


def _model(config: configs.Config) -> nn.Module:
  return models.create_model(config.model, dropout_rate=config.dropout_rate,
                             dtype=config.dtype)


def probabilities_fn(config: configs.Config, params: Any):
  """The exported function: (N, 28, 28) uint8 images to (N, 10) probabilities."""
  apply_fn = _model(config).apply
  return lambda images_NHW: jax.nn.softmax(evaluation.forward(apply_fn, params,
                                                             images_NHW))


def to_stablehlo(config: configs.Config, params: Any) -> jax.export.Exported:
  """The model as `jax.export.Exported`, for any batch size and `PLATFORMS`."""
  batch, = jax.export.symbolic_shape('N')
  return jax.export.export(jax.jit(probabilities_fn(config, params)),
                           platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, 28, 28), jnp.uint8))


def _layers(config: configs.Config, params: Any
            ) -> list[tuple[nn.Module, tuple[int, ...], bool]]:
  """(top-level layer, its input shape, relu before it), in call order.

  The layers are read off one forward pass of probe images; a layer's input
  is either the previous layer's output or its relu (which the Linen models
  apply as a function, so it is not a layer). Anything else is not exported.
  """
  model = _model(config)
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and len(context.module.path) == 1:
      calls.append((context.module, np.asarray(args[0]), np.asarray(out)))
    return out

  probe = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  with nn.intercept_methods(record):
    logits = np.asarray(model.apply({'params': params}, probe, train=False))
  layers, previous = [], np.asarray(probe)
  for module, inputs, out in calls:
    if np.array_equal(inputs, previous):
      relu = False
    elif np.array_equal(inputs, np.maximum(previous, 0)):
      relu = True
    else:
      raise FlaxMnistError(f'cannot export {config.model} to ONNX: something '
                           f'other than relu comes before layer {module.name}')
    layers.append((module, inputs.shape[1:], relu))
    previous = out
  if not np.array_equal(previous, logits):
    raise FlaxMnistError(f'cannot export {config.model} to ONNX: its last '
                         'layer is not its output')
  return layers


def to_onnx(config: configs.Config, params: Any, about: dict[str, Any]):
  """The model as an `onnx.ModelProto`, checked, with `about` as metadata."""
  try:
    import onnx
    from onnx import helper, numpy_helper
  except ImportError:
    raise FlaxMnistError("ONNX export needs the onnx package: pip install "
                         "'flax-mnist[export]'") from None
  if config.dtype != 'float32':
    raise FlaxMnistError(
        f'this run computes in {config.dtype}; ONNX export writes float32 '
        'graphs, which would not compute what it does (use --format stablehlo)')
  params = jax.device_get(params)
  nodes, initializers = [], []

  def constant(name: str, value: np.ndarray) -> str:
    initializers.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def node(op: str, inputs: list[str], name: str, **attributes) -> str:
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
    return name

  x = node('Cast', ['images'], 'pixels', to=onnx.TensorProto.FLOAT)
  x = node('Div', [x, constant('255', np.float32(255))], 'scaled')
  # Convolutions and pooling run NCHW, as ONNX defines them.
  x = node('Reshape', [x, constant('nchw_shape', np.array([-1, 1, 28, 28]))],
           'images_NCHW')
  layout = 'NCHW'
  for module, input_shape, relu in _layers(config, params):
    name = module.name
    if relu:
      x = node('Relu', [x], f'{name}/input')
    if isinstance(module, models.Conv):
      kernel = params[name]['kernel']
      (top, bottom), (left, right) = ops._padding(kernel.shape, module.padding)
      x = node('Conv', [x, constant(f'{name}/kernel', kernel.transpose(3, 2, 0, 1)),
                        constant(f'{name}/bias', params[name]['bias'])],
               name, kernel_shape=list(kernel.shape[:2]),
               pads=[top, left, bottom, right])
    elif isinstance(module, models.MaxPool):
      w, (height, width, _) = module.window, input_shape
      pads = ([0, 0, -height % w, -width % w] if module.padding == 'SAME'
              else [0, 0, 0, 0])
      x = node('MaxPool', [x], name, kernel_shape=[w, w], strides=[w, w],
               pads=pads)
    elif isinstance(module, models.Flatten):
      # The Linen models flatten NHWC: the dense kernels' rows are in that order.
      x = node('Transpose', [x], f'{name}/NHWC', perm=[0, 2, 3, 1])
      x = node('Flatten', [x], name, axis=1)
      layout = 'NC'
    elif isinstance(module, nn.Dense) and layout == 'NC':
      x = node('Gemm', [x, constant(f'{name}/kernel', params[name]['kernel']),
                        constant(f'{name}/bias', params[name]['bias'])], name)
    elif not isinstance(module, nn.Dropout):  # Dropout is off at test time.
      raise FlaxMnistError(f'cannot export {config.model} to ONNX: no '
                           f'translation for layer {name} ({type(module).__name__})')
  node('Softmax', [x], 'probabilities', axis=1)
  graph = helper.make_graph(
      nodes, f'flax_mnist_{config.model}',
      [helper.make_tensor_value_info('images', onnx.TensorProto.UINT8,
                                     ['N', 28, 28], about['input'])],
      [helper.make_tensor_value_info('probabilities', onnx.TensorProto.FLOAT,
                                     ['N', models.NUM_CLASSES], about['output'])],
      initializers)
  model = helper.make_model(
      graph, producer_name='flax-mnist', ir_version=_IR_VERSION,
      opset_imports=[helper.make_opsetid('', _OPSET)],
      doc_string=f'{about["model"]} trained on {about["dataset"]} '
                 f'(step {about["step"]}). Input {about["input"]}. '
                 f'Output {about["output"]}.')
  helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v)
                                 for k, v in about.items()})
  onnx.checker.check_model(model, full_check=True)
  return model
