"""The architectures behind `model.arch`, all from transformer.Block and the positional hooks.

Each is a flax module whose call takes one Batch (research/data/batch.py) and returns float32
logits over the main sequence, [B, length, vocab]. `BATCH_KEYS` names the keys it reads, and
`features(...)` the converter (research/data/features.py) that turns an objective's examples
into them; `build(cfg)` is the one factory the trainer, the evaluation and the tests use.

  decoder          causal self-attention over inputs ++ targets
  prefix_lm        the same, bidirectional over the inputs (Batch key prefix_mask), causal after
  encoder_decoder  T5: a bidirectional encoder over encoder_inputs, a causal decoder with
                   cross-attention over the encoder's output
  encoder          bidirectional self-attention, a prediction at every position (BERT-style MLM)
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from research.data import features as features_lib
from research.model import attention as attention_lib
from research.model import layers
from research.model import positional as positional_lib
from research.model.transformer import Context, ModelConfig, block_stack

_MAIN = ('inputs', 'targets', 'loss_mask', 'segment_ids', 'positions')


@dataclasses.dataclass(frozen=True)
class AttentionLayout:
  """One attention of each layer of a stack, for FLOP counts (research/train/flops.py): queries
  of one sequence over keys of one (by their research/data/batch.py length names)."""
  queries: str
  keys: str
  causal: bool  # only the pairs at or before the query count
  mlp: bool = True  # the layer's MLP is counted with this attention
  encoder: bool = False  # the encoder's stack (model.num_encoder_layers deep)


def _token_embedding(cfg: ModelConfig, name: str) -> nn.Embed:
  return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype), name=name,
                  embedding_init=nn.with_logical_partitioning(
                      nn.initializers.normal(cfg.init_std), ('vocab', 'embed')))


def _final_norm(cfg: ModelConfig, name: str):
  """The last norm of a pre-norm stack (a post-norm stack's blocks end normalized)."""
  if cfg.norm_position == 'pre':
    return layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, jnp.dtype(cfg.dtype), name)
  return lambda x: x


def _logits(cfg: ModelConfig, embed: nn.Embed, x_BTD):
  if cfg.tie_embeddings:
    logits_BTV = embed.attend(x_BTD)
  else:
    logits_BTV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                          name='unembed', kernel_init=nn.with_logical_partitioning(
                              nn.initializers.normal(cfg.init_std), ('embed', 'vocab')))(x_BTD)
  return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ('batch', 'length', 'vocab'))


def _embed_and_stack(cfg, embed, positional, tokens_BT, positions_BT, mask, deterministic, *,
                     stack, memory_BSD=None, memory_mask=None):
  """Token embedding + positions, dropout, the blocks (`stack`, from block_stack): one stack's
  forward."""
  x_BTD = positional.embed(embed(tokens_BT), positions_BT)
  x_BTD = nn.Dropout(cfg.dropout)(x_BTD, deterministic=deterministic)
  ctx = Context(mask=mask, positions_BT=positions_BT,
                bias=positional.attention_bias(positions_BT, positions_BT),
                memory_BSD=memory_BSD, memory_mask=memory_mask)
  return stack(x_BTD, ctx)


def _cached_stack(cfg, embed, positional, batch, cache, pattern, *, stack, memory_BSD=None):
  """_embed_and_stack for cached decoding: batch's T new tokens (inputs, positions, segment_ids,
  prefix_mask for pattern 'prefix') written into `cache` (research/model/kv_cache.py) at its
  index and attending over all its slots. Returns (x, the updated cache)."""
  tokens_BT, positions_BT, seg_BT = batch['inputs'], batch['positions'], batch['segment_ids']
  prefix_BT = batch.get('prefix_mask', jnp.zeros_like(seg_BT))
  cache = cache.write(seg_BT, positions_BT, prefix_BT)
  x_BTD = positional.embed(embed(tokens_BT), positions_BT)
  ctx = Context(mask=cache.self_mask(seg_BT, prefix_BT, pattern), positions_BT=positions_BT,
                bias=positional.attention_bias(positions_BT, cache.positions_BS),
                memory_BSD=memory_BSD, memory_mask=cache.memory_mask(seg_BT),
                cache_index=cache.index)
  x_BTD, layers_cache = stack(x_BTD, ctx, cache.layers)
  return x_BTD, cache.replace(layers=layers_cache, index=cache.index + tokens_BT.shape[1])


class Decoder(nn.Module):
  """Causal decoder (model.arch=decoder)."""
  cfg: ModelConfig
  BATCH_KEYS = _MAIN
  PATTERN = 'causal'
  ATTENTIONS = (AttentionLayout('length', 'length', causal=True),)

  @classmethod
  def features(cls, *, loss_on_inputs: bool, bos_id: int):
    del bos_id  # the sequence's own first token starts it
    return features_lib.DecoderOnly(prefix=cls.PATTERN == 'prefix',
                                    loss_on_inputs=loss_on_inputs)

  def mask(self, batch):
    seg_BT = batch['segment_ids']
    return attention_lib.Mask(seg_BT, seg_BT, pattern='causal')

  @nn.compact
  def __call__(self, batch, *, deterministic=True, cache=None):
    """Logits [B, T, V]; with a kv_cache.Cache, batch holds new tokens only (research/model/
    decode.py) and the call returns (their logits, the updated cache)."""
    cfg = self.cfg
    embed = _token_embedding(cfg, 'embed')
    positional = positional_lib.Positional(cfg, bidirectional=self.PATTERN != 'causal',
                                           name='positional')
    stack = block_stack(cfg, deterministic, num_layers=cfg.num_layers)
    final_norm = _final_norm(cfg, 'norm_final')
    if cache is not None:
      x_BTD, cache = _cached_stack(cfg, embed, positional, batch, cache, self.PATTERN,
                                   stack=stack)
      return _logits(cfg, embed, final_norm(x_BTD)), cache
    x_BTD = _embed_and_stack(cfg, embed, positional, batch['inputs'], batch['positions'],
                             self.mask(batch), deterministic, stack=stack)
    return _logits(cfg, embed, final_norm(x_BTD))


class PrefixLM(Decoder):
  """Non-causal decoder (model.arch=prefix_lm): bidirectional over the positions the Batch's
  prefix_mask marks (an objective's inputs), causal after them (Raffel et al. 2020, Fig. 3)."""
  BATCH_KEYS = _MAIN + ('prefix_mask',)
  PATTERN = 'prefix'
  ATTENTIONS = (AttentionLayout('length', 'length', causal=False),)

  def mask(self, batch):
    seg_BT, prefix_BT = batch['segment_ids'], batch['prefix_mask']
    return attention_lib.Mask(seg_BT, seg_BT, prefix_q_BT=prefix_BT, prefix_k_BS=prefix_BT,
                              pattern='prefix')


class Encoder(Decoder):
  """Encoder-only (model.arch=encoder): bidirectional self-attention, a prediction at every
  position (the BERT-style masked-language-model head is the tied output projection)."""
  PATTERN = 'full'
  ATTENTIONS = (AttentionLayout('length', 'length', causal=False),)

  @classmethod
  def features(cls, *, loss_on_inputs: bool, bos_id: int):
    del loss_on_inputs, bos_id  # every position is predicted in place, by the targets' weights
    return features_lib.EncoderOnly()

  def mask(self, batch):
    seg_BT = batch['segment_ids']
    return attention_lib.Mask(seg_BT, seg_BT, pattern='full')


class EncoderDecoder(nn.Module):
  """T5-style encoder-decoder (model.arch=encoder_decoder): a bidirectional encoder of
  model.num_encoder_layers blocks over encoder_inputs; a causal decoder of model.num_layers
  blocks, each with cross-attention over the encoder's output (no positional terms there, as T5).
  Each stack has its own positional parameters (T5: a bias table per stack); the token
  embedding is shared by both stacks when model.share_embeddings (T5), and tied to the output
  with model.tie_embeddings. model.share_layers: the encoder runs the decoder's blocks (their
  self-attention and MLP weights; the cross-attention only in the decoder), T5 Table 2's
  "encoder-decoder, shared": about half the parameters at the same FLOPs per token."""
  cfg: ModelConfig
  BATCH_KEYS = _MAIN + ('encoder_inputs', 'encoder_segment_ids', 'encoder_positions')
  ATTENTIONS = (
      AttentionLayout('encoder_length', 'encoder_length', causal=False, encoder=True),
      AttentionLayout('length', 'length', causal=True),
      AttentionLayout('length', 'encoder_length', causal=False, mlp=False),
  )

  @classmethod
  def features(cls, *, loss_on_inputs: bool, bos_id: int):
    del loss_on_inputs  # the decoder reads only the targets
    return features_lib.EncoderDecoder(bos_id=bos_id)

  @nn.compact
  def __call__(self, batch, *, deterministic=True, cache=None):
    """Logits [B, T, V]; with a kv_cache.Cache, the cached decoding call of Decoder.__call__:
    the encoder runs when batch holds the encoder's keys (the first call), and later calls
    reuse the cached cross-attention keys and values."""
    cfg = self.cfg
    embed = _token_embedding(cfg, 'embed')
    encoder_embed = embed if cfg.share_embeddings else _token_embedding(cfg, 'encoder_embed')
    decoder_stack = block_stack(cfg, deterministic, num_layers=cfg.num_layers, cross=True)
    encoder_stack = decoder_stack if cfg.share_layers else block_stack(
        cfg, deterministic, num_layers=cfg.num_encoder_layers, prefix='encoder_')
    positional = positional_lib.Positional(cfg, name='positional')
    final_norm = _final_norm(cfg, 'norm_final')
    enc_BSD = None
    if 'encoder_inputs' in batch:  # always but on cached decoding's later steps
      enc_seg_BS = batch['encoder_segment_ids']
      enc_BSD = _embed_and_stack(
          cfg, encoder_embed,
          positional_lib.Positional(cfg, bidirectional=True, name='encoder_positional'),
          batch['encoder_inputs'], batch['encoder_positions'],
          attention_lib.Mask(enc_seg_BS, enc_seg_BS, pattern='full'), deterministic,
          stack=encoder_stack)
      enc_BSD = _final_norm(cfg, 'encoder_norm')(enc_BSD)
    if cache is not None:
      if enc_BSD is not None:
        cache = cache.replace(memory_valid_BS=(enc_seg_BS > 0).astype(jnp.int32))
      x_BTD, cache = _cached_stack(cfg, embed, positional, batch, cache, 'causal',
                                   stack=decoder_stack, memory_BSD=enc_BSD)
      return _logits(cfg, embed, final_norm(x_BTD)), cache
    dec_seg_BT = batch['segment_ids']
    # One example per row: every real decoder token sees every real encoder token.
    memory_mask = attention_lib.Mask((dec_seg_BT > 0).astype(jnp.int32),
                                     (enc_seg_BS > 0).astype(jnp.int32), pattern='cross')
    x_BTD = _embed_and_stack(
        cfg, embed, positional, batch['inputs'], batch['positions'],
        attention_lib.Mask(dec_seg_BT, dec_seg_BT, pattern='causal'), deterministic,
        stack=decoder_stack, memory_BSD=enc_BSD, memory_mask=memory_mask)
    return _logits(cfg, embed, final_norm(x_BTD))


ARCHS = {
    'decoder': Decoder,
    'prefix_lm': PrefixLM,
    'encoder_decoder': EncoderDecoder,
    'encoder': Encoder,
}


def arch_class(name: str):
  return ARCHS[name]


def build(cfg: ModelConfig) -> nn.Module:
  """The model of `cfg.arch`."""
  return ARCHS[cfg.arch](cfg)

