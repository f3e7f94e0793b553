"""`flax-mnist report`: pictures of a trained workdir, and one page of them.

The latest checkpoint classifies the test set once; from its logits and the
run's `metrics.jsonl` come `learning_curves.png`, `confusion_matrix.png`,
`mistakes.png` (the most confident mistakes), `per_class_accuracy.png` and
`network.svg`, and `report.html` shows them with the config and the final
figures. The plots use matplotlib's `Figure` directly (Agg, no pyplot
state), imported only here.
"""

import html
import os
from typing import Any, Sequence

import numpy as np

from flax_mnist import datasets
from flax_mnist import evaluation
from flax_mnist import graph
from flax_mnist import mistakes
from flax_mnist import monitor
from flax_mnist import resume
from flax_mnist.errors import FlaxMnistError

REPORT_DIR = 'report'
_DPI = 100
# Pixel sizes (width, height) of the plots.
CURVES_SIZE = (1200, 400)
CONFUSION_SIZE = (640, 560)
PER_CLASS_SIZE = (800, 400)
MISTAKE_ROWS, MISTAKE_COLUMNS, MISTAKE_SCALE = 5, 10, 3
# TensorBoard's default smoothing of the noisy per-batch training curves.
_SMOOTHING = 0.6
# Each picture and its caption, in the order the page shows them.
PICTURES = {
    'learning_curves.png': 'Learning curves: training batches (light: as '
                           'logged, dark: smoothed) and test evaluations',
    'confusion_matrix.png': 'Confusion matrix on the test set (rows: true '
                            'class, columns: predicted; colour: share of the row)',
    'mistakes.png': 'The most confident mistakes: true > predicted, with the '
                    "model's probability for its prediction",
    'per_class_accuracy.png': 'Test accuracy of each class (dashed: overall)',
    'network.svg': 'The network: layers, output shapes and parameters',
}


def _figure(size: tuple[int, int]):
  try:
    from matplotlib.figure import Figure
  except ImportError:
    raise FlaxMnistError('the report draws with matplotlib, which is not '
                         'installed: pip install matplotlib') from None
  return Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI,
                layout='constrained')


def write_report(workdir: str, out: str | None = None, *,
                 progress_bar: bool = False, **data_fields) -> str:
  """Writes the report of `workdir` into `out` (default `WORKDIR/report`) and
  returns the path of its `report.html`.

  `data_fields` pick the test data as for `evaluation.evaluate_workdir`.
  """
  _figure((1, 1))  # Fails before the slow part when matplotlib is missing.
  config, state, data = resume.restore_with_data(workdir, **data_fields)
  metrics = read_metrics(workdir)
  test, batch_size = evaluation.padded_test_split(data, config)
  result = evaluation.evaluate_split(state, test, batch_size,
                                     progress_bar=progress_bar, keep_logits=True)
  logits, labels = result.logits_NC, result.labels_N
  out = out or os.path.join(workdir, REPORT_DIR)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise FlaxMnistError(
        f'{out}: cannot create the report folder ({e.strerror})') from None
  class_names = datasets.get(config.dataset).class_names
  confusion = confusion_matrix(labels, logits.argmax(-1))
  plots = {'learning_curves.png': learning_curves(metrics),
           'confusion_matrix.png': confusion_figure(confusion, class_names),
           'per_class_accuracy.png': per_class_figure(confusion, class_names)}
  for name, figure in plots.items():
    figure.savefig(os.path.join(out, name))
  mistakes.sheet(data.test_images, labels, logits, rows=MISTAKE_ROWS,
                 columns=MISTAKE_COLUMNS, scale=MISTAKE_SCALE,
                 class_names=class_names).save(os.path.join(out, 'mistakes.png'))
  graph.save(config.model, os.path.join(out, 'network.svg'))
  path = os.path.join(out, 'report.html')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(_html(workdir, config.to_dict(),
                  final_figures(int(state.step), result.metrics, confusion,
                                metrics)))
  return path


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The entries of `WORKDIR/metrics.jsonl`, in order."""
  return monitor.MetricsLog(os.path.join(workdir, monitor.METRICS_FILE)).entries()


def confusion_matrix(labels_N: np.ndarray, predicted_N: np.ndarray) -> np.ndarray:
  """(10, 10) counts: row = true class, column = predicted class."""
  counts = np.zeros((10, 10), np.int64)
  np.add.at(counts, (labels_N, predicted_N), 1)
  return counts


def final_figures(step: int, test: dict[str, float], confusion: np.ndarray,
                  metrics: list[dict[str, Any]]) -> dict[str, str]:
  """The headline numbers, formatted: this test pass (`test`: its accuracy,
  loss, num_examples; `confusion`: its matrix) and the run's timings."""
  figures = {
      'step': f'{step:,}',
      'test accuracy': f'{test["accuracy"]:.4f}',
      'test loss': f'{test["loss"]:.4f}',
      'test images': f'{test["num_examples"]:,}',
      'mistakes': f'{int(confusion.sum() - np.trace(confusion)):,}',
  }
  final = [m for m in metrics if 'train_seconds' in m]
  if final:
    figures['training time'] = f'{final[-1]["train_seconds"]:.1f} s'
  rates = [m['images_per_second'] for m in metrics if m.get('images_per_second')]
  if rates:
    figures['throughput (median of log lines)'] = f'{np.median(rates):,.0f} images/s'
  return figures


def _smoothed(values: list[float]) -> np.ndarray:
  """TensorBoard's exponential moving average, debiased."""
  out, average = [], 0.0
  for i, value in enumerate(values):
    average = _SMOOTHING * average + (1 - _SMOOTHING) * value
    out.append(average / (1 - _SMOOTHING ** (i + 1)))
  return np.asarray(out)


def learning_curves(metrics: list[dict[str, Any]]):
  """Loss, accuracy and learning rate against the step."""
  figure = _figure(CURVES_SIZE)
  trained = [m for m in metrics if 'train_loss' in m]
  tested = [m for m in metrics if 'test_accuracy' in m]
  steps = [m['step'] for m in trained]
  for axes, key, title in zip(figure.subplots(1, 3), ('loss', 'accuracy', None),
                              ('loss', 'accuracy', 'learning rate')):
    axes.set_title(title)
    axes.set_xlabel('step')
    axes.grid(alpha=0.3)
    if key is None:
      axes.plot(steps, [m['learning_rate'] for m in trained], color='C2')
      axes.set_ylim(bottom=0)
      continue
    values = [m[f'train_{key}'] for m in trained]
    axes.plot(steps, values, color='C0', alpha=0.25)
    axes.plot(steps, _smoothed(values), color='C0', label='training batches')
    axes.plot([m['step'] for m in tested], [m[f'test_{key}'] for m in tested],
              'o-', color='C3', label='test set')
    axes.legend()
  return figure


def _ticks(axes, class_names: Sequence[str], *axis_names: str) -> str:
  """Labels `axis_names`' ticks with the class names; 'digit' or 'class'."""
  for axis in axis_names:
    getattr(axes, f'set_{axis}ticks')(range(len(class_names)), class_names,
                                      rotation=45 if axis == 'x' and
                                      class_names != mistakes.DIGITS else 0)
  return 'digit' if class_names == mistakes.DIGITS else 'class'


def confusion_figure(confusion: np.ndarray,
                     class_names: Sequence[str] = mistakes.DIGITS):
  """The confusion matrix, each cell its count, coloured by its row share."""
  figure = _figure(CONFUSION_SIZE)
  axes = figure.subplots()
  shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  image = axes.imshow(shares, cmap='Blues', norm=_log_norm())
  noun = _ticks(axes, class_names, 'x', 'y')
  figure.colorbar(image, ax=axes, label=f'share of the true {noun} (log scale)')
  for (row, column), count in np.ndenumerate(confusion):
    if count:
      axes.text(column, row, str(count), ha='center', va='center', fontsize=8,
                color='white' if shares[row, column] > 0.5 else 'black')
  axes.set(xlabel=f'predicted {noun}', ylabel=f'true {noun}',
           title='confusion matrix (test set)')
  return figure


def _log_norm():
  from matplotlib.colors import LogNorm
  # A log scale shows the rare confusions beside the dominant diagonal.
  return LogNorm(vmin=1e-4, vmax=1, clip=True)


def per_class_figure(confusion: np.ndarray,
                     class_names: Sequence[str] = mistakes.DIGITS):
  """Each class's test accuracy as a bar, labelled, beside the overall one."""
  figure = _figure(PER_CLASS_SIZE)
  axes = figure.subplots()
  totals = confusion.sum(1)
  accuracy = np.diag(confusion) / np.maximum(totals, 1)
  bars = axes.bar(range(10), accuracy, color='C0')
  axes.bar_label(bars, [f'{a:.1%}' for a in accuracy], fontsize=8)
  overall = np.trace(confusion) / max(confusion.sum(), 1)
  axes.axhline(overall, color='C3', linestyle='--', label=f'overall {overall:.2%}')
  # Bars from a floor near the worst class: from 0 they would all look full.
  low = max(0.0, np.floor(accuracy.min() * 20 - 1) / 20)
  noun = _ticks(axes, class_names, 'x')
  axes.set(ylim=(low, 1.005), xlabel=f'true {noun}', ylabel='accuracy',
           title=f'test accuracy per {noun}')
  axes.legend(loc='lower right')
  return figure


def _html(workdir: str, config: dict[str, Any], figures: dict[str, str]) -> str:
  def table(rows: dict[str, Any]) -> str:
    return '<table>\n' + '\n'.join(
        f'<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>'
        for k, v in rows.items()) + '\n</table>'

  images = '\n'.join(
      f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
      f'<figcaption>{html.escape(caption)}</figcaption></figure>'
      for name, caption in PICTURES.items())
  title = f'flax-mnist report: {html.escape(os.path.abspath(workdir))}'
  return f'''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.75em; text-align: left; }}
th {{ background: #f4f4f4; font-weight: normal; }}
figure {{ margin: 0 0 2em 0; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head>
<body><h1>{title}</h1>
<h2>Final figures</h2>{table(figures)}
<h2>Pictures</h2>{images}
<h2>Config</h2>{table(config)}
</body></html>
'''
