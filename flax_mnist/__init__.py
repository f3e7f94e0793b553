"""flax-mnist: the TensorFlow MNIST tutorials as a JAX/Flax library.

The public surface is the names below (`__all__`); the README and
docs/from-tensorflow.md use only them, and each has a docstring example that
the test suite runs. Importing the package loads neither TensorFlow nor
tensorflow-datasets.

Images, wherever they go in, are uint8 in [0, 255] or floats in [0, 1], shaped
(N, 784), (N, 28, 28) or (N, 28, 28, 1); anything else is a `DataError`.

>>> import flax_mnist
>>> config = flax_mnist.get_preset('experts')
>>> config.model, config.dropout_rate
('deep_cnn', 0.5)
"""

from flax_mnist.checkpoint import Checkpointer
from flax_mnist.configs import PRESETS, Config, apply_overrides, get_preset
from flax_mnist.core import (TrainState, create_train_state, cross_entropy_loss,
                             learning_rate_schedule, make_optimizer, train_step)
from flax_mnist.errors import (ConfigError, DataError, FlaxMnistError,
                               TrainingDiverged, TrainingStopped)
from flax_mnist.evaluation import eval_step, evaluate, evaluate_workdir
from flax_mnist.graph import save as save_graph
from flax_mnist.idx import PACKAGED_DIR as MNIST_DIR
from flax_mnist.idx import load_split as load_idx_split
from flax_mnist.input_pipeline import (Mnist, Split, epoch_permutation,
                                       from_arrays, to_device, train_batch)
from flax_mnist.input_pipeline import load as load_mnist
from flax_mnist.inputs import model_input
from flax_mnist.malloc import keep_freed_memory
from flax_mnist.models import MODELS, count_params, create_model, init_params
from flax_mnist.resume import restore_workdir
from flax_mnist.summary import format_summary
from flax_mnist.train import train_and_evaluate

__all__ = [
    # Configs and presets.
    'Config', 'PRESETS', 'get_preset', 'apply_overrides',
    # Data.
    'MNIST_DIR', 'Mnist', 'Split', 'load_mnist', 'load_idx_split', 'from_arrays', 'to_device',
    'epoch_permutation', 'train_batch', 'model_input',
    # Models.
    'MODELS', 'create_model', 'init_params', 'count_params', 'format_summary',
    'save_graph',
    # Training and evaluation.
    'TrainState', 'create_train_state', 'make_optimizer', 'learning_rate_schedule',
    'cross_entropy_loss', 'train_step', 'eval_step', 'evaluate',
    'train_and_evaluate',
    # Workdirs: checkpoints, restoring, predicting.
    'Checkpointer', 'restore_workdir', 'evaluate_workdir', 'Predictor',
    'Prediction',
    # Memory: the allocator hook of the command line, for library runs.
    'keep_freed_memory',
    # Errors.
    'FlaxMnistError', 'ConfigError', 'DataError', 'TrainingStopped',
    'TrainingDiverged',
]

__version__ = '0.1.0'


def __getattr__(name: str):
  # `predict` loads scipy.ndimage, a quarter of a second that training and
  # evaluation do not need.
  if name in ('Prediction', 'Predictor'):
    from flax_mnist import predict
    return getattr(predict, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
