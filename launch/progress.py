"""The progress bar the launch commands draw from research.train.loop's Reporter calls."""

import sys


class ProgressReporter:
  """A tqdm bar (ETA, loss, tokens/s) plus one line per evaluation."""

  def __init__(self, enabled: bool):
    self.enabled = enabled
    self.bar = None
    self.postfix = {}

  def message(self, text):
    (self.bar.write if self.bar else print)(text, file=sys.stderr)

  def start(self, *, first_step, total_steps):
    if self.enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=first_step, unit='step', dynamic_ncols=True,
                      file=sys.stderr)

  def train(self, step, metrics):
    self.postfix.update(loss=f'{metrics["loss"]:.3f}', tok_s=f'{metrics["tokens_per_sec"]:,.0f}',
                        mfu=f'{metrics["mfu"]:.0%}')
    if self.bar:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(self.postfix, refresh=True)
    else:
      print(f'step {step}: ' + ' '.join(f'{k} {v}' for k, v in self.postfix.items()),
            file=sys.stderr)

  def eval(self, step, metrics):
    self.message(f'eval at step {step}: loss {metrics["loss"]:.4f}, perplexity '
                 f'{metrics["perplexity"]:.2f}, bits/byte {metrics["bits_per_byte"]:.3f}')

  def close(self):
    if self.bar:
      self.bar.close()
      self.bar = None
