"""LDM's KL autoencoder (the SyncDreamer first stage), channels-last.

Mirrors `ldm/modules/diffusionmodules/model.py` (Encoder, Decoder, ResnetBlock, AttnBlock, Down/Upsample,
Normalize = GroupNorm(32, eps=1e-6), nonlinearity = swish), `ldm/models/autoencoder.py` (AutoencoderKL:
quant_conv / post_quant_conv), `ldm/modules/distributions/distributions.py` (DiagonalGaussianDistribution)
and `SyncMultiviewDiffusion.encode_first_stage / decode_first_stage` (scale factor 0.18215).
SyncDreamer's ddconfig has attn_resolutions=[] (only `mid.attn_1` attends), double_z=True, dropout 0, and
the encoder/decoder have no timestep embedding (temb_ch = 0, so no `temb_proj`).

Submodule names follow the PyTorch keys below `first_stage_model.` with list indices merged into the
name (`decoder.up.2.block.0.conv1` -> `decoder/up_2/block_0/conv1`). The decoder's `up` list is indexed
by level (up_0 = finest resolution) although it runs from the coarsest level, as in the original.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hv_jax.models.config import TUNED, Lowering, VAEConfig
from hv_jax.models.layers import GroupNorm, Upsample, conv

Dtype = Any


def _norm(name):
  return GroupNorm(32, epsilon=1e-6, name=name)  # model.py Normalize


class ResnetBlock(nn.Module):
  """model.ResnetBlock without temb: GN-swish-conv3, GN-swish-conv3, 1x1 nin_shortcut if channels change."""
  out_channels: int
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    lw = self.lowering
    h = conv(self.out_channels, 3, name='conv1', dtype=self.dtype, lowering=lw)(nn.swish(_norm('norm1')(x)))
    h = conv(self.out_channels, 3, name='conv2', dtype=self.dtype, lowering=lw)(nn.swish(_norm('norm2')(h)))
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, name='nin_shortcut', dtype=self.dtype, lowering=lw)(x)
    return x + h


class AttnBlock(nn.Module):
  """model.AttnBlock: single-head self-attention over the h*w positions with 1x1-conv q/k/v/proj_out."""
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    lw = self.lowering
    h = _norm('norm')(x)
    q, k, v = (conv(c, 1, name=n, dtype=self.dtype, lowering=lw)(h).reshape(b, hh * ww, c) for n in 'qkv')
    w = jnp.einsum('bic,bjc->bij', q, k) * (c ** -0.5)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    h = jnp.einsum('bij,bjc->bic', w, v).reshape(b, hh, ww, c)
    return x + conv(c, 1, name='proj_out', dtype=self.dtype, lowering=lw)(h)


class Downsample(nn.Module):
  """model.Downsample(with_conv=True): zero-pad right/bottom by 1, then 3x3 conv, stride 2, no padding."""
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(x.shape[-1], 3, stride=2, padding=0, name='conv', dtype=self.dtype, lowering=self.lowering)(x)




class _Mid(nn.Module):
  """`mid`: block_1, attn_1, block_2 at constant width."""
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, h):
    c = h.shape[-1]
    lw = self.lowering
    h = ResnetBlock(c, name='block_1', dtype=self.dtype, lowering=lw)(h)
    h = AttnBlock(name='attn_1', dtype=self.dtype, lowering=lw)(h)
    return ResnetBlock(c, name='block_2', dtype=self.dtype, lowering=lw)(h)


class _Level(nn.Module):
  """One `down.i` / `up.i` entry: `num_blocks` ResnetBlocks, then an optional Downsample/Upsample."""
  out_channels: int
  num_blocks: int
  resample: str | None = None  # 'downsample' | 'upsample' | None
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, h):
    lw = self.lowering
    for i in range(self.num_blocks):
      h = ResnetBlock(self.out_channels, name=f'block_{i}', dtype=self.dtype, lowering=lw)(h)
    if self.resample == 'downsample':
      h = Downsample(name='downsample', dtype=self.dtype, lowering=lw)(h)
    elif self.resample == 'upsample':
      h = Upsample(name='upsample', dtype=self.dtype, lowering=lw)(h)
    return h


class Encoder(nn.Module):
  """model.Encoder (double_z=True): [B, H, W, in_channels] -> [B, H/2^(L-1), W/2^(L-1), 2*z_channels]."""
  config: VAEConfig
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    c = self.config
    n = len(c.ch_mult)
    lw = self.lowering
    h = conv(c.ch, 3, name='conv_in', dtype=self.dtype, lowering=lw)(x)
    for i, mult in enumerate(c.ch_mult):
      h = _Level(c.ch * mult, c.num_res_blocks, 'downsample' if i != n - 1 else None,
                 name=f'down_{i}', dtype=self.dtype, lowering=lw)(h)
    h = _Mid(name='mid', dtype=self.dtype, lowering=lw)(h)
    h = nn.swish(_norm('norm_out')(h))
    return conv(2 * c.z_channels, 3, name='conv_out', dtype=self.dtype, lowering=lw)(h)


class Decoder(nn.Module):
  """model.Decoder (no tanh, no give_pre_end): [B, h, w, z_channels] -> [B, h*2^(L-1), w*2^(L-1), out_ch]."""
  config: VAEConfig
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, z):
    c = self.config
    lw = self.lowering
    h = conv(c.ch * c.ch_mult[-1], 3, name='conv_in', dtype=self.dtype, lowering=lw)(z)
    h = _Mid(name='mid', dtype=self.dtype, lowering=lw)(h)
    for i in reversed(range(len(c.ch_mult))):  # coarsest first; names keep the level index
      h = _Level(c.ch * c.ch_mult[i], c.num_res_blocks + 1, 'upsample' if i != 0 else None,
                 name=f'up_{i}', dtype=self.dtype, lowering=lw)(h)
    h = nn.swish(_norm('norm_out')(h))
    return conv(c.out_ch, 3, name='conv_out', dtype=self.dtype, lowering=lw)(h)


class AutoencoderKL(nn.Module):
  """autoencoder.AutoencoderKL: `encode` -> moments (quant_conv(encoder(x))), `decode` -> decoder(post_quant_conv(z)).

  Images are [B, H, W, in_channels] in [-1, 1]; moments [B, h, w, 2*embed_dim]; z [B, h, w, embed_dim]
  (unscaled, i.e. already divided by the scale factor). Outputs are float32 whatever `dtype` computes in.
  `lowering`: how the convs become XLA ops (hv_jax.models.config.Lowering; same params either way).
  """
  config: VAEConfig
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  def setup(self):
    c = self.config
    lw = self.lowering
    self.encoder = Encoder(c, dtype=self.dtype, lowering=lw)
    self.decoder = Decoder(c, dtype=self.dtype, lowering=lw)
    self.quant_conv = conv(2 * c.embed_dim, 1, dtype=self.dtype, lowering=lw)
    self.post_quant_conv = conv(c.z_channels, 1, dtype=self.dtype, lowering=lw)

  def encode(self, x):
    return self.quant_conv(self.encoder(x.astype(self.dtype))).astype(jnp.float32)

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

  def __call__(self, x):
    """Reconstruction through the posterior mode (touches every parameter, for `init`)."""
    return self.decode(posterior(self.encode(x))[0])


def posterior(moments):
  """DiagonalGaussianDistribution: (mean, logvar, std); logvar clamped to [-30, 20], std = exp(logvar/2)."""
  mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
  logvar = jnp.clip(logvar, -30.0, 20.0)
  return mean, logvar, jnp.exp(0.5 * logvar)


@functools.partial(jax.jit, static_argnames=('config', 'sample', 'dtype', 'lowering'))
def encode_first_stage(vae_params, x, config: VAEConfig, *, key=None, noise=None, sample: bool = True,
                       dtype: Dtype = jnp.float32, lowering: Lowering = TUNED):
  """SyncMultiviewDiffusion.encode_first_stage: scaled latent [B, h, w, embed_dim] of images x [B, H, W, 3].

  `vae_params` is the AutoencoderKL "params" collection. sample=True: (mean + std*noise) * scale_factor,
  with `noise` given explicitly (parity) or drawn as `jax.random.normal(key, mean.shape)`;
  sample=False: the posterior mode, mean * scale_factor. `lowering`: see AutoencoderKL.
  """
  moments = AutoencoderKL(config, dtype=dtype, lowering=lowering).apply({'params': vae_params}, x,
                                                                       method=AutoencoderKL.encode)
  mean, _, std = posterior(moments)
  if not sample:
    return mean * config.scale_factor
  if noise is None:
    if key is None:
      raise ValueError('encode_first_stage(sample=True) needs `key` or `noise`')
    noise = jax.random.normal(key, mean.shape, mean.dtype)
  return (mean + std * noise) * config.scale_factor


@functools.partial(jax.jit, static_argnames=('config', 'dtype', 'lowering'))
def decode_first_stage(vae_params, z, config: VAEConfig, *, dtype: Dtype = jnp.float32,
                       lowering: Lowering = TUNED):
  """SyncMultiviewDiffusion.decode_first_stage: decoder(post_quant_conv(z / scale_factor)) -> [B, H, W, out_ch]."""
  return AutoencoderKL(config, dtype=dtype, lowering=lowering).apply(
      {'params': vae_params}, z / config.scale_factor, method=AutoencoderKL.decode)
