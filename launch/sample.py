"""Complete prompts with a run's latest checkpoint (cached decoding, research/model/decode.py):

  python -m launch.sample --workdir=runs/quickstart --prompt="And God said"
  python -m launch.sample --workdir=runs/quickstart --prompt_file=prompts.txt --top_p=0.9
  python -m launch.sample --workdir=runs/quickstart --prompt="And God said" --beam_size=4

Each prompt (--prompt, or every non-empty line of --prompt_file) gets --num_samples completions,
printed as the prompt and its continuation. Sampling: --temperature (0 greedy), --top_k (0 off),
--top_p (1 off), --seed; --beam_size > 1 runs beam search instead, ranked with --length_penalty,
and prints the --num_samples best beams. Flags left unset take the run's own `sample.*` values and
its seed, so that with no prompt flag this prints the run's end-of-run samples (samples.txt) again.
Special tokens (sentinels, [MASK], UL2's paradigm tokens) are never drawn unless --special_tokens.
"""

import os

from absl import flags

from launch import cli
from research.errors import ConfigError

_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory holding config.json and checkpoints')
_PROMPT = flags.DEFINE_string('prompt', None, "the prompt (unset: the run's sample.prompt)")
_PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'a file of prompts, one per line')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', None, "completions per prompt (unset: the "
                                    "run's sample.num_samples, at least 1)", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', None, "tokens per completion (unset: the run's "
                                'sample.max_new_tokens)', lower_bound=1)
_TEMPERATURE = flags.DEFINE_float('temperature', None, "0 is greedy (unset: the run's "
                                  'sample.temperature)', lower_bound=0)
_TOP_K = flags.DEFINE_integer('top_k', 0, 'sample among the k most likely tokens (0: all)',
                              lower_bound=0)
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'nucleus sampling: the most likely tokens holding this '
                            'much probability, in (0, 1] (1: all)')
_BEAM_SIZE = flags.DEFINE_integer('beam_size', 1, 'beams; 1 samples without beam search',
                                  lower_bound=1)
_LENGTH_PENALTY = flags.DEFINE_float('length_penalty', 0.6, 'beam search: scores are '
                                     'log-probability / ((5 + length) / 6)^this')
_SEED = flags.DEFINE_integer('seed', None, "sampling seed (unset: the run's seed)")
_SPECIAL = flags.DEFINE_boolean('special_tokens', False, 'let special tokens (sentinels, [MASK], '
                                'paradigm tokens) be drawn')
# Checked while the flags are parsed, before anything slow: one line and exit status 2.
flags.register_validator('top_p', lambda p: 0 < p <= 1, message='--top_p must be in (0, 1]')


def prompts_of(prompt, prompt_file):
  """The prompts of --prompt or --prompt_file (a list), None when neither is given."""
  if prompt is not None and prompt_file:
    raise ConfigError('--prompt and --prompt_file: give one of them')
  if not prompt_file:
    return None if prompt is None else [prompt]
  try:
    with open(prompt_file, encoding='utf-8') as f:
      lines = [line.rstrip('\n') for line in f]
  except OSError as e:
    raise ConfigError(f'--prompt_file={prompt_file}: {e.strerror or e}') from None
  prompts = [line for line in lines if line.strip()]
  if not prompts:
    raise ConfigError(f'--prompt_file={prompt_file} holds no prompt (no non-empty line)')
  return prompts


def run_tokenizer(workdir: str, resolved):
  """The tokenizer the run in workdir trained with, special tokens included."""
  from research.data import pipeline, sources, tokenizers
  d = resolved.data
  if pipeline.task_class(resolved) is not pipeline.TextTask:  # a synthetic task's own
    return pipeline.task_class(resolved)(resolved).tokenizer
  ranks = os.path.join(workdir, 'tokenizer.tiktoken')
  if os.path.exists(ranks):
    base = tokenizers.load_tiktoken(ranks)
  else:  # bytes or a .tiktoken path; a BPE run that kept no ranks is trained again (cached)
    corpus = None if d.tokenizer != 'bpe' else sources.load_corpus(
        d.source, text_field=d.text_field, eval_fraction=d.eval_fraction)
    base = tokenizers.build_tokenizer(d.tokenizer, vocab_size=d.vocab_size, corpus=corpus,
                                      cache_dir=d.cache_dir)
  return tokenizers.with_special_tokens(base, d.extra_ids)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  workdir = _WORKDIR.value
  if not workdir:
    raise ConfigError('--workdir is required, e.g. --workdir=runs/quickstart')
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    raise ConfigError(f'--workdir={workdir} holds no run (no config.json)')
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
    raise ConfigError(f'--workdir={workdir} holds no checkpoint yet')
  prompts = prompts_of(_PROMPT.value, _PROMPT_FILE.value)
  from research import config as config_lib
  s = config_lib.load_json(os.path.join(workdir, 'config.json')).sample
  prompts = prompts or [s.prompt]
  num_samples = _NUM_SAMPLES.value if _NUM_SAMPLES.value is not None else max(1, s.num_samples)
  max_new = _MAX_NEW.value if _MAX_NEW.value is not None else max(1, s.max_new_tokens)
  temperature = _TEMPERATURE.value if _TEMPERATURE.value is not None else s.temperature
  settings = dict(num_samples=num_samples, max_new_tokens=max_new, temperature=temperature,
                  top_k=_TOP_K.value, top_p=_TOP_P.value, beam_size=_BEAM_SIZE.value)
  from research.model import decode
  decode.check_sampling(**settings)  # what the flags alone cannot tell (beam search's settings)

  from research.data import pipeline
  from research.train.checkpoint import restore_run
  resolved, tr, params, _ = restore_run(workdir)
  tokenizer = run_tokenizer(workdir, resolved)
  texts = decode.sample_texts(
      tr.model, params, prompts, tokenizer=tokenizer,
      converter=pipeline.converter(resolved, bos_id=tokenizer.eot_id),
      length_penalty=_LENGTH_PENALTY.value,
      seed=resolved.seed if _SEED.value is None else _SEED.value,
      special_tokens=_SPECIAL.value, **settings)
  for p, per_prompt in enumerate(texts):
    for i, text in enumerate(per_prompt):
      name = f'sample {i + 1}' if len(texts) == 1 else f'prompt {p + 1}, sample {i + 1}'
      print(f'\n--- {name} ---\n{text.strip()}')


if __name__ == '__main__':
  cli.run(main)
