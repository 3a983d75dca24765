"""Per-run results: metrics.jsonl (one JSON object per logged step) and TensorBoard events."""

import json
import os
import sys


class MetricsWriter:
  """Appends rows to <workdir>/metrics.jsonl and TensorBoard; only the writing process opens it."""

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not enabled:
      return
    # Rows past the checkpoint we resume from were logged by a run that died before saving
    # again; the resumed run logs those steps anew, so drop them to keep one row per step.
    if os.path.exists(self.path):
      rows = read_metrics(self.path)
      kept = [r for r in rows if r['step'] <= resume_step]
      if len(kept) != len(rows):
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
          f.writelines(json.dumps(r) + '\n' for r in kept)
        os.replace(tmp, self.path)
    self._file = open(self.path, 'a')
    try:
      SummaryWriter = _summary_writer_class()
      self._tb = SummaryWriter(workdir, purge_step=resume_step + 1)  # drops events after it
    except ImportError:  # TensorBoard events are a convenience; metrics.jsonl is the record
      self._tb = None

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'split': split, **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k not in ('step', 'split') and isinstance(v, (int, float)):
          self._tb.add_scalar(f'{split}/{k}', v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without importing PyTorch.

  tensorboardX imports torch at import time when it is installed (requirements-bench.txt puts it
  there), only to accept torch tensors, which nothing here passes; that import cost 2.6-3.1 s of
  every launch on this project's 2-core machine. While tensorboardX loads, torch reads as absent
  unless something has imported it already (launch.bench --reference=torch)."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError while this stands
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules['torch']
  return SummaryWriter


def _plain(v):
  return v.item() if hasattr(v, 'item') else v


def read_metrics(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
