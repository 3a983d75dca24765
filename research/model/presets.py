"""Block presets applied inside experiment files (`experiments/quickstart.py:llama`)."""

PRESETS = {
    # GPT-2 (Radford et al. 2019): learned positions, GELU, pre-LayerNorm, biases, tied embeddings.
    'gpt2': dict(norm='layernorm', norm_position='pre', activation='gelu', positional='learned',
                 use_bias=True, tie_embeddings=True),
    # Llama (Touvron et al. 2023): RMSNorm, SwiGLU, no biases, untied output, rotary positions
    # with the GPT-NeoX / Hugging Face 'half' layout (Meta's own checkpoints interleave).
    'llama': dict(norm='rmsnorm', norm_position='pre', activation='swiglu', positional='rope',
                  rope_layout='half', use_bias=False, tie_embeddings=False),
}


def apply_preset(config, name: str):
  from research.errors import ConfigError
  if name not in PRESETS:
    raise ConfigError(f'unknown model preset {name!r}; one of {", ".join(PRESETS)}')
  for key, value in PRESETS[name].items():
    config.model[key] = value
  return config
