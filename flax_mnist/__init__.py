"""flax-mnist: the TensorFlow MNIST tutorials as a JAX/Flax library.

Importing it loads neither TensorFlow nor tensorflow-datasets.
"""

from flax_mnist.configs import Config, PRESETS, apply_overrides, get_preset
from flax_mnist.errors import ConfigError, DataError, FlaxMnistError
from flax_mnist.input_pipeline import Mnist
from flax_mnist.malloc import keep_freed_memory
from flax_mnist.models import MODELS, create_model
from flax_mnist.predict import Prediction, Predictor, predict_probabilities
from flax_mnist.train import (TrainState, create_train_state, eval_step,
                              evaluate, evaluate_workdir, train_and_evaluate,
                              train_step)

__version__ = '0.1.0'
