"""The `flax-mnist` command's arguments: each subcommand, its flags and help.

`cli` parses with `parser()` and calls the library; what a subcommand does is
there, what it takes is here.
"""

import argparse

from flax_mnist import configs
from flax_mnist import input_pipeline
from flax_mnist.datasets import DATASETS
from flax_mnist.models import MODELS


def parser() -> argparse.ArgumentParser:
  """`flax-mnist`'s parser, with a subparser for each command."""
  root = argparse.ArgumentParser(
      prog='flax-mnist',
      description='The TensorFlow MNIST tutorials in JAX/Flax: train, evaluate '
                  'and inspect their three models.')
  commands = root.add_subparsers(dest='command', required=True,
                                 metavar='COMMAND')

  data_source = argparse.ArgumentParser(add_help=False)
  data_source.add_argument(
      '--source', choices=input_pipeline.SOURCES, dest='data_source',
      help='where MNIST comes from: package (the default: the official files '
           'shipped in flax-mnist, no network or TensorFlow needed) or tfds '
           "(tensorflow-datasets; pip install 'flax-mnist[tfds]')")
  data_source.add_argument(
      '--data-dir', metavar='DIR',
      help='a folder with the four IDX files (.gz or not) of the dataset '
           '(MNIST, or Fashion-MNIST with --set dataset=fashion_mnist) instead')
  data_source.add_argument(
      '--tfds-data-dir', metavar='DIR',
      help="tensorflow-datasets' data dir (default: tfds's own); implies "
           '--source tfds')
  data_source.add_argument(
      '--no-verify', dest='verify_data', action='store_const', const=False,
      help="accept IDX files in --data-dir whose content is not the official "
           "dataset's (your own data in the same format)")

  output = argparse.ArgumentParser(add_help=False)
  output.add_argument(
      '-q', '--quiet', action='store_true',
      help='print only errors and the final result: no progress bar or log '
           'lines (a terminal gets bars, other output plain log lines)')

  train = commands.add_parser(
      'train', parents=[data_source, output], help='train a preset (resumes a workdir)',
      description='Train one of the tutorial presets. Running it again on the '
                  'same workdir resumes from the latest checkpoint.')
  train.add_argument('--preset', required=True, choices=list(configs.PRESETS))
  train.add_argument('--workdir', required=True, metavar='DIR',
                     help='checkpoints, config.json and metrics.jsonl go here')
  train.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                     dest='overrides',
                     help='override a config field, e.g. --set steps=2000 '
                          f'(fields: {", ".join(configs.Config.__dataclass_fields__)})')
  hosts = train.add_argument_group(
      'several processes (hosts)',
      'Run the same command in every process, with the workdir on a shared '
      'file system; each process feeds its own devices. Unset options come '
      'from FLAX_MNIST_COORDINATOR_ADDRESS, FLAX_MNIST_NUM_PROCESSES, '
      'FLAX_MNIST_PROCESS_ID and FLAX_MNIST_HEARTBEAT_TIMEOUT, then from the '
      'cluster (Cloud TPU, Slurm, Open MPI).')
  hosts.add_argument('--distributed', action='store_true',
                     help='join a multi-process run even with no option below '
                          '(a TPU slice, Slurm, Open MPI)')
  hosts.add_argument('--coordinator-address', metavar='HOST:PORT',
                     help="process 0's address and a free port")
  hosts.add_argument('--num-processes', type=int, metavar='N')
  hosts.add_argument('--process-id', type=int, metavar='I',
                     help='this process: 0 to N-1')
  hosts.add_argument('--heartbeat-timeout', type=int, metavar='SECONDS',
                     help='a process silent this long fails the run (default 100)')

  evaluate = commands.add_parser(
      'eval', parents=[data_source, output],
      help="evaluate a workdir's latest checkpoint",
      description='Restore the latest checkpoint and report test accuracy on '
                  'all 10,000 test images.')
  evaluate.add_argument('--workdir', required=True, metavar='DIR')
  evaluate.add_argument('--json', action='store_true',
                        help='print one JSON object')

  summary = commands.add_parser(
      'summary', help="a Keras-style table of a model's layers",
      description="Print a model's layers, output shapes and parameter counts.")
  summary.add_argument('--model', required=True, choices=list(MODELS))
  summary.add_argument('--graph', metavar='FILE',
                       help='also draw the layers, top to bottom, with their '
                            'output shapes and parameter counts (.svg or .png)')

  report = commands.add_parser(
      'report', parents=[data_source, output],
      help="pictures of a workdir's run and one HTML page of them",
      description="Restore the latest checkpoint, classify the test set once "
                  "and write PNG pictures (learning curves, confusion matrix, "
                  "the most confident mistakes, per-class accuracy), the "
                  "network's drawing (SVG) and report.html, which shows them "
                  "with the run's config and final figures. Needs matplotlib.")
  report.add_argument('--workdir', required=True, metavar='DIR')
  report.add_argument('--out', metavar='DIR',
                      help='where the report goes (default: WORKDIR/report)')

  predict = commands.add_parser(
      'predict', help='classify your own pictures of digits',
      description="Restore a workdir's latest checkpoint and classify "
                  'pictures of single digits (photos, scans, drawings; PNG, '
                  'JPEG, BMP, GIF, TIFF, WebP). Each is made into an MNIST-'
                  'style 28x28 input first. Exit code 1 if any picture '
                  'failed.')
  predict.add_argument('images', nargs='+', metavar='IMAGE_OR_FOLDER',
                       help='picture files, or folders of them')
  predict.add_argument('--workdir', required=True, metavar='DIR')
  predict.add_argument('--json', action='store_true',
                       help='print one JSON object per picture')
  predict.add_argument('--show-input', metavar='FILE.png',
                       help='save a sheet of each original beside the 28x28 '
                            'input the model saw')

  export = commands.add_parser(
      'export', help="write a workdir's model as StableHLO or ONNX",
      description="Write the latest checkpoint's model, parameters included, "
                  'as a file other programs run: serialized StableHLO '
                  '(jax.export; any JAX program loads it) or ONNX (onnxruntime '
                  "and other ONNX clients; needs pip install 'flax-mnist[export]'). "
                  'Input: uint8 images (N, 28, 28), pixel values 0-255, white '
                  'on black; output: float32 probabilities (N, 10).')
  export.add_argument('--workdir', required=True, metavar='DIR')
  export.add_argument('--format', required=True, metavar='FORMAT',
                      help='stablehlo or onnx')
  export.add_argument('--out', metavar='FILE',
                      help='default: WORKDIR/model.stablehlo or WORKDIR/model.onnx')

  serve = commands.add_parser(
      'serve', help='a page to draw digits on, and a JSON API',
      description="Restore each workdir's latest checkpoint and serve a page "
                  'to draw digits on (or drop photos of them) with every '
                  "model's live prediction, and a JSON API: POST /api/predict, "
                  'GET /api/models, GET /healthz. Needs the serve extra: '
                  "pip install 'flax-mnist[serve]'. Stops on SIGTERM or Ctrl-C.")
  serve.add_argument('--workdir', required=True, action='append', metavar='DIR',
                     dest='workdirs',
                     help='a trained run; repeat for one panel per model')
  serve.add_argument('--host', default='127.0.0.1',
                     help='address to listen on (default: 127.0.0.1, this '
                          'machine only)')
  serve.add_argument('--port', type=int, default=8000)
  serve.add_argument('--watch', action='store_true',
                     help='switch to each newer checkpoint a workdir gets '
                          '(draw while a model trains)')
  serve.add_argument('--max-batch', type=int, default=64, metavar='N',
                     help='most pictures in one forward pass: 1, 2, 4, ..., 64 '
                          '(default 64; 1 turns batching off)')

  data = commands.add_parser('data', help='check IDX files, or build tfds\'s '
                                          'mnist from them offline')
  data_commands = data.add_subparsers(dest='data_command', required=True,
                                      metavar='ACTION')
  prepare = data_commands.add_parser(
      'prepare', parents=[output], help="build tfds's mnist from a folder of IDX files",
      description="Build tensorflow-datasets' own `mnist` from a folder of "
                  "the four IDX files, with no network, so that "
                  "tfds.load('mnist') works offline. Needs the tfds extra: "
                  "pip install 'flax-mnist[tfds]'.")
  prepare.add_argument('dir', metavar='DIR')
  prepare.add_argument('--tfds-data-dir', metavar='DIR',
                       help="tensorflow-datasets' data dir (default: tfds's own)")
  prepare.add_argument('--dataset', default='mnist', choices=list(DATASETS),
                       help='which dataset the files are (default: mnist)')
  verify = data_commands.add_parser(
      'verify', help='check a folder of IDX files and say what is wrong',
      description='Check the four IDX files: present, readable, well-formed, '
                  'matching counts and the official checksums.')
  verify.add_argument('dir', metavar='DIR')
  verify.add_argument('--dataset', default='mnist', choices=list(DATASETS),
                      help='which dataset the files should be (default: mnist)')
  return root
