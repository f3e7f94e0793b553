"""`flax-mnist`: a thin command line over the library; it parses (`arguments`)
and calls."""

import json
import logging
import os
import signal
import sys
import traceback

from flax_mnist import arguments
from flax_mnist import configs
from flax_mnist import malloc
from flax_mnist import progress
from flax_mnist.datasets import DATASETS
from flax_mnist.errors import FlaxMnistError, TrainingStopped


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
    # JAX keeps only programs that took a second to compile; on CPU each of
    # ours takes less, so none would be kept.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


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
  # uvicorn stops on SIGINT even where it is ignored (as in a process started
  # in the background), then raises it again under the handling it found:
  # ignored, the command would exit 0 instead of Ctrl-C's 130.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
  args = arguments.parser().parse_args(argv)
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
