"""`flax-mnist`: a thin command line over the library; it parses and calls."""

import argparse
import json
import logging
import os
import sys
import traceback

from flax_mnist import configs
from flax_mnist import input_pipeline
from flax_mnist import malloc
from flax_mnist import progress
from flax_mnist.datasets import DATASETS
from flax_mnist.errors import FlaxMnistError, TrainingStopped
from flax_mnist.models import MODELS


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='flax-mnist',
      description='The TensorFlow MNIST tutorials in JAX/Flax: train, evaluate '
                  'and inspect their three models.')
  commands = parser.add_subparsers(dest='command', required=True,
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
  return parser


def _data_fields(args) -> dict:
  """The data options given on the command line, folders made absolute."""
  fields = {'data_dir': args.data_dir, 'tfds_data_dir': args.tfds_data_dir}
  fields = {k: os.path.abspath(v) for k, v in fields.items() if v is not None}
  if args.data_source is not None:
    fields['data_source'] = args.data_source
  elif args.tfds_data_dir is not None:
    fields['data_source'] = 'tfds'
  if args.verify_data is not None:
    fields['verify_data'] = args.verify_data
  return fields


def _train(args) -> int:
  import dataclasses
  from flax_mnist import parallel, train
  config = configs.apply_overrides(configs.get_preset(args.preset), args.overrides)
  config = dataclasses.replace(config, **_data_fields(args))
  settings = (args.coordinator_address, args.num_processes, args.process_id,
              args.heartbeat_timeout)
  if (args.distributed or any(v is not None for v in settings) or
      any(os.environ.get(name) for name in parallel.ENVIRONMENT)):
    parallel.initialize(*settings)
  _use_compilation_cache()
  _, results = train.train_and_evaluate(config, args.workdir,
                                        progress_bar=_progress_bar(args))
  if args.quiet:
    _print_results(results)
  return 0


def _use_compilation_cache() -> None:
  """Keeps compiled steps on disk, so a rerun or resume skips compilation.

  FLAX_MNIST_COMPILATION_CACHE names the folder; set it empty to turn it off.
  """
  import jax
  folder = os.environ.get('FLAX_MNIST_COMPILATION_CACHE', os.path.join(
      os.path.expanduser('~'), '.cache', 'flax_mnist', 'jax'))
  if folder:
    jax.config.update('jax_compilation_cache_dir', folder)


def _eval(args) -> int:
  from flax_mnist import evaluation
  results = evaluation.evaluate_workdir(args.workdir, progress_bar=_progress_bar(args),
                                   **_data_fields(args))
  if args.json:
    print(json.dumps(results))
  else:
    _print_results(results)
  return 0


def _print_results(results: dict) -> None:
  print(f'step {results["step"]}: test accuracy {results["test_accuracy"]:.4f}, '
        f'test loss {results["test_loss"]:.4f} '
        f'({results["num_examples"]} test images)')


def _summary(args) -> int:
  from flax_mnist import summary
  print(summary.format_summary(args.model))
  if args.graph:
    from flax_mnist import graph
    graph.save(args.model, args.graph)
  return 0


def _report(args) -> int:
  from flax_mnist import report
  path = report.write_report(args.workdir, args.out, progress_bar=_progress_bar(args),
                             **_data_fields(args))
  print(f'wrote {path}')
  return 0


def _predict(args) -> int:
  from flax_mnist import predict
  predictions = predict.Predictor(args.workdir).predict_files(args.images)
  for p in predictions:
    if args.json:
      print(json.dumps(p.to_json()))
    elif p.error is not None:
      print(f'flax-mnist: error: {p.file}: {p.error}', file=sys.stderr)
    else:
      top3 = ', '.join(f'{p.class_names[d]} {q:.3f}' for d, q in p.top3)
      print(f'{p.file}: {p.label} (probability {p.probability:.3f}; top 3: {top3})')
  if args.show_input:
    predict.save_inputs(predictions, args.show_input)
  return 1 if any(p.error is not None for p in predictions) else 0


def _export(args) -> int:
  from flax_mnist import export
  print(f'wrote {export.export_workdir(args.workdir, args.format, args.out)}')
  return 0


def _serve(args) -> int:
  try:
    from flax_mnist import serve
  except ImportError as e:
    raise FlaxMnistError(f'serve needs the serve extra ({e.name} is missing): '
                         "pip install 'flax-mnist[serve]'") from None
  serve.serve(args.workdirs, args.host, args.port, watch_workdirs=args.watch,
              max_batch=args.max_batch)
  return 0


def _data(args) -> int:
  dataset = DATASETS[args.dataset]
  if args.data_command == 'verify':
    from flax_mnist import idx
    problems = idx.verify_dir(args.dir, dataset.files)
    for problem in problems:
      print(problem)
    if not problems:
      print(f'{args.dir}: all four {dataset.title} files present, well-formed '
            'and matching the official checksums')
    return 1 if problems else 0
  from flax_mnist import tfds_source
  path = tfds_source.prepare(args.dir, args.tfds_data_dir,
                             progress_bar=_progress_bar(args),
                             dataset=dataset.name)
  print(f"prepared tensorflow-datasets' {dataset.tfds_name} in {path}")
  return 0


def _progress_bar(args) -> bool:
  """Bars only on a terminal: piped output gets the plain log lines."""
  return not getattr(args, 'quiet', False) and sys.stdout.isatty()


def _show_progress(args) -> None:
  """The library's log lines, bare, on stdout (above the bars on a terminal;
  only warnings with --quiet); other libraries' only on warnings."""
  handler = (progress.BarHandler if _progress_bar(args)
             else logging.StreamHandler)(sys.stdout)
  handler.setFormatter(logging.Formatter('%(message)s'))
  ours = logging.getLogger('flax_mnist')
  ours.handlers[:] = [handler]
  ours.setLevel(logging.WARNING if getattr(args, 'quiet', False) else logging.INFO)
  ours.propagate = False
  logging.getLogger().setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  # XLA:CPU's buffers otherwise go back to the OS at every step (malloc.py).
  malloc.keep_freed_memory()
  _show_progress(args)
  command = {'train': _train, 'eval': _eval, 'summary': _summary,
             'report': _report, 'predict': _predict, 'export': _export,
             'serve': _serve,
             'data': _data}[args.command]
  try:
    return command(args)
  except TrainingStopped as e:
    print(f'flax-mnist: {e}', file=sys.stderr)
    # The shell's code for death by that signal, which schedulers expect.
    return 128 + e.signal_number
  except FlaxMnistError as e:
    print(f'flax-mnist: error: {e}', file=sys.stderr)
    return _end_process(2)
  except KeyboardInterrupt:
    print('flax-mnist: interrupted', file=sys.stderr)
    return _end_process(130)
  except Exception as e:
    if not _distributed():
      raise
    from flax_mnist import parallel
    message = parallel.lost_process_message(e)
    print(f'flax-mnist: error: {message}' if message else traceback.format_exc(),
          file=sys.stderr)
    return _end_process(2 if message else 1)


def _distributed() -> bool:
  """Whether this process joined a multi-process run (JAX loaded lazily)."""
  return 'jax' in sys.modules and sys.modules['jax'].distributed.is_initialized()


def _end_process(code: int) -> int:
  """`code`; a failed process of a multi-process run exits at once.

  A normal exit would wait at JAX's shutdown barrier for the other processes,
  which this failure stops, until a timeout, then abort.
  """
  if _distributed():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code
