"""SyncDreamer's multi-view UNet: LDM's UNetModel with depth-wise attention into the frustum volume.

Mirrors `ldm/modules/diffusionmodules/openaimodel.py` (UNetModel, ResBlock, Down/Upsample),
`ldm/modules/attention.py` (SpatialTransformer, BasicTransformerBlock, CrossAttention, GEGLU) and
`ldm/models/diffusion/sync_dreamer_attention.py` (DepthWiseAttention, DepthTransformer, DepthAttention).
Channels-last: x [B, h, w, C]; frustum volumes [B, D, r, r, C].

Submodule names follow the PyTorch keys with list indices merged into the name
(`input_blocks.1.0.in_layers.2` -> `input_blocks_1_0/in_layers_2`), so `convert/names.py` maps keys
mechanically.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hv_jax.models.config import TUNED, Lowering, UNetConfig
from hv_jax.models.layers import GroupNorm, LayerNorm, Upsample, conv, dense, timestep_embedding

Dtype = Any


# Lowering of the attention layers (`Lowering.attn`, a static module field):
#   'reference' - the literal formulation: QK^T over the whole batch, then * scale, softmax, @ V;
#                 depth attention projects the whole frustum volume to k and v.
#   'fast'      - the same maths in an order XLA:CPU runs faster: the scale folded into q, softmax
#                 attention one batch row at a time (lax.map: the [heads, Lq, Lk] scores of one row stay
#                 in cache instead of streaming [B, heads, Lq, Lk] through memory); depth attention
#                 with to_k folded into q and to_v applied after the sum over depth (to_k/to_v are
#                 bias-free 1x1 convs, so q.(W_k c) = (W_k^T q).c and sum_z a_z W_v c_z = W_v sum_z a_z c_z),
#                 which skips two [B, D, h, w, heads*dim_head] projections of the volume.
# Both give the same results to float32 rounding; params are the same.


def _attention(q, k, v, scale, impl: str = 'fast'):
  """Softmax attention, q [B, Lq, H, d], k/v [B, Lk, H, d] -> [B, Lq, H, d]; softmax in float32.
  impl: 'fast' | 'reference' (Lowering.attn)."""
  if impl not in ('fast', 'reference'):
    raise ValueError(f'unknown attention lowering {impl!r}: use "fast" or "reference"')
  if impl == 'reference':
    sim = jnp.einsum('bihd,bjhd->bhij', q, k) * scale
    attn = jax.nn.softmax(sim.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum('bhij,bjhd->bihd', attn, v)

  def one_row(args):
    qr, kr, vr = args
    sim = jnp.einsum('ihd,jhd->hij', qr, kr)
    attn = jax.nn.softmax(sim.astype(jnp.float32), axis=-1).astype(vr.dtype)
    return jnp.einsum('hij,jhd->ihd', attn, vr)

  q = q * jnp.asarray(scale, q.dtype)
  if q.shape[0] == 1 or q.shape[1] * k.shape[1] < 4096:  # tiny score matrices (cross-attention): batched
    return jax.vmap(one_row)((q, k, v))
  return jax.lax.map(one_row, (q, k, v))


class ResBlock(nn.Module):
  """openaimodel.ResBlock (no scale-shift norm, no up/down): GN-SiLU-conv, + emb, GN-SiLU-conv, skip."""
  out_channels: int
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, emb):
    lw = self.lowering
    h = nn.silu(GroupNorm(32, name='in_layers_0')(x))
    h = conv(self.out_channels, 3, name='in_layers_2', dtype=self.dtype, lowering=lw)(h)
    e = dense(self.out_channels, name='emb_layers_1', dtype=self.dtype)(nn.silu(emb))
    h = h + e[:, None, None, :].astype(h.dtype)
    h = nn.silu(GroupNorm(32, name='out_layers_0')(h))
    h = conv(self.out_channels, 3, name='out_layers_3', dtype=self.dtype, lowering=lw)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, name='skip_connection', dtype=self.dtype, lowering=lw)(x)
    return x + h


class CrossAttention(nn.Module):
  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, context=None):
    context = x if context is None else context
    inner = self.heads * self.dim_head
    split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.dim_head))
    q = split(dense(inner, use_bias=False, name='to_q', dtype=self.dtype)(x))
    k = split(dense(inner, use_bias=False, name='to_k', dtype=self.dtype)(context))
    v = split(dense(inner, use_bias=False, name='to_v', dtype=self.dtype)(context))
    out = _attention(q, k, v, self.dim_head ** -0.5, self.lowering.attn).reshape(x.shape[:2] + (inner,))
    return dense(x.shape[-1], name='to_out_0', dtype=self.dtype)(out)


class GEGLU(nn.Module):
  """GEGLU: proj -> (x, gate) halves, x * gelu(gate) with torch's exact (erf) GELU."""
  inner: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, gate = jnp.split(dense(self.inner * 2, name='proj', dtype=self.dtype)(x), 2, axis=-1)
    return h * nn.gelu(gate, approximate=False)


class BasicTransformerBlock(nn.Module):
  """Self-attention, cross-attention to the CLIP context, GEGLU feed-forward; pre-LayerNorm."""
  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, context):
    attn = lambda name: CrossAttention(self.heads, self.dim_head, self.dtype, self.lowering, name=name)
    x = attn('attn1')(LayerNorm(name='norm1')(x)) + x
    x = attn('attn2')(LayerNorm(name='norm2')(x), context) + x
    return FeedForward(self.dtype, name='ff')(LayerNorm(name='norm3')(x)) + x


class FeedForward(nn.Module):
  """torch: ff.net.0 (GEGLU), ff.net.2 (Linear)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    h = GEGLU(dim * 4, self.dtype, name='net_0')(x)
    return dense(dim, name='net_2', dtype=self.dtype)(h)


class SpatialTransformer(nn.Module):
  """GN(32, eps 1e-6) -> 1x1 conv -> transformer blocks on h*w tokens -> 1x1 conv, residual."""
  heads: int
  dim_head: int
  depth: int = 1
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, context):
    b, hh, ww, c = x.shape
    inner = self.heads * self.dim_head
    lw = self.lowering
    h = GroupNorm(32, epsilon=1e-6, name='norm')(x)
    h = conv(inner, 1, name='proj_in', dtype=self.dtype, lowering=lw)(h).reshape(b, hh * ww, inner)
    for i in range(self.depth):
      h = BasicTransformerBlock(self.heads, self.dim_head, self.dtype, lw, name=f'transformer_blocks_{i}')(h, context)
    h = conv(c, 1, name='proj_out', dtype=self.dtype, lowering=lw)(h.reshape(b, hh, ww, inner))
    return h + x


class DepthAttention(nn.Module):
  """Per-pixel attention over the D depth samples of the frustum volume (sync_dreamer_attention.py).

  q [B, h, w, H*d] from the image, k/v [B, D, h, w, H*d] from the volume; softmax over D.
  """
  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, context):
    inner = self.heads * self.dim_head
    nh, dh = self.heads, self.dim_head
    scale = self.dim_head ** -0.5
    lw = self.lowering
    q = conv(inner, 1, use_bias=False, name='to_q', dtype=self.dtype, lowering=lw)(x)
    q = q.reshape(q.shape[:3] + (nh, dh))                              # b h w H d
    if lw.attn == 'reference':
      k = conv(inner, 1, use_bias=False, ndim=3, name='to_k', dtype=self.dtype, lowering=lw)(context)
      v = conv(inner, 1, use_bias=False, ndim=3, name='to_v', dtype=self.dtype, lowering=lw)(context)
      k = k.reshape(k.shape[:4] + (nh, dh))                            # b D h w H d
      v = v.reshape(v.shape[:4] + (nh, dh))
      sim = jnp.einsum('bxyhc,bzxyhc->bzxyh', q, k) * scale
      attn = jax.nn.softmax(sim.astype(jnp.float32), axis=1).astype(v.dtype)
      out = jnp.einsum('bzxyh,bzxyhc->bxyhc', attn, v)
    else:
      cdim = context.shape[-1]
      dtype = self.dtype
      wk = _Kernel((1, 1, 1, cdim, inner), name='to_k')().astype(dtype).reshape(cdim, nh, dh)
      wv = _Kernel((1, 1, 1, cdim, inner), name='to_v')().astype(dtype).reshape(cdim, nh, dh)
      ctx = context.astype(dtype)
      qk = jnp.einsum('bxyhd,chd->bxyhc', q * jnp.asarray(scale, dtype), wk)   # W_k^T q
      sim = jnp.einsum('bxyhc,bzxyc->bzxyh', qk, ctx)
      attn = jax.nn.softmax(sim.astype(jnp.float32), axis=1).astype(dtype)
      pooled = jnp.einsum('bzxyh,bzxyc->bxyhc', attn, ctx)                     # sum_z a_z c_z
      out = jnp.einsum('bxyhc,chd->bxyhd', pooled, wv)
    out = out.reshape(x.shape[:3] + (inner,))
    return conv(x.shape[-1], 1, use_bias=False, name='to_out', dtype=self.dtype, lowering=lw)(out)


class _Kernel(nn.Module):
  """Just a conv's kernel param (same tree as a bias-free `conv`), for layers that apply it themselves."""
  shape: tuple

  @nn.compact
  def __call__(self):
    return self.param('kernel', nn.initializers.lecun_normal(), self.shape, jnp.float32)


class DepthTransformer(nn.Module):
  """DepthTransformer(dim, n_heads=4, d_head=context_dim // 2): attends into one frustum volume."""
  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, context):
    inner = self.heads * self.dim_head
    cdim = context.shape[-1]
    lw = self.lowering
    h = conv(inner, 1, name='proj_in_0', dtype=self.dtype, lowering=lw)(x)
    h = nn.silu(GroupNorm(8, name='proj_in_1')(h))
    ctx = conv(cdim, 1, use_bias=False, ndim=3, name='proj_context_0', dtype=self.dtype, lowering=lw)(context)
    ctx = nn.relu(GroupNorm(8, name='proj_context_1')(ctx))
    h = DepthAttention(self.heads, self.dim_head, self.dtype, lw, name='depth_attn')(h, ctx)
    h = nn.relu(GroupNorm(8, name='proj_out_0')(h))
    h = conv(inner, 3, use_bias=False, name='proj_out_2', dtype=self.dtype, lowering=lw)(h)
    h = nn.relu(GroupNorm(8, name='proj_out_3')(h))
    h = conv(x.shape[-1], 3, use_bias=False, name='proj_out_5', dtype=self.dtype, lowering=lw)(h)
    return h + x


class Downsample(nn.Module):
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    return conv(x.shape[-1], 3, stride=2, padding=1, name='op', dtype=self.dtype, lowering=self.lowering)(x)




class DepthWiseAttentionUNet(nn.Module):
  """DepthWiseAttention(UNetModel).forward.

  Args (call): x [B, h, w, in_channels] (noisy latent ++ input latent), timesteps [B],
    context [B, M, context_dim], volumes: tuple of frustum features, finest first, each
    [B, D_i, r_i, r_i, volume_dims[i]] with r_i = h / 2**i.
  Returns: eps [B, h, w, out_channels].
  `lowering`: how convs and attention become XLA ops (hv_jax.models.config.Lowering; same params either way).
  """
  config: UNetConfig
  dtype: Dtype = jnp.float32
  remat: bool = False
  lowering: Lowering = TUNED

  def _volume_for(self, h, volumes):
    # The original looks the volume up by the feature map's width (source_dict[h.shape[-1]]).
    for vol in volumes:
      if vol.shape[3] == h.shape[2]:
        return vol
    raise ValueError(f'no frustum volume of width {h.shape[2]}: have {[v.shape[3] for v in volumes]}')

  @nn.compact
  def __call__(self, x, timesteps, context, volumes: Sequence[jax.Array]):
    cfg = self.config
    if cfg.num_res_blocks != 2 or len(cfg.channel_mult) != 4:
      raise ValueError('DepthWiseAttention hard-codes 2 res blocks and 4 levels (output_b2c)')
    mc = cfg.model_channels
    lw = self.lowering
    res_block = nn.remat(ResBlock) if self.remat else ResBlock
    transformer = nn.remat(SpatialTransformer) if self.remat else SpatialTransformer
    depth_tf = nn.remat(DepthTransformer) if self.remat else DepthTransformer

    emb = timestep_embedding(timesteps, mc)
    emb = dense(mc * 4, name='time_embed_0', dtype=self.dtype)(emb)
    emb = dense(mc * 4, name='time_embed_2', dtype=self.dtype)(nn.silu(emb))

    def attn(ch, name):
      dim_head = ch // cfg.num_heads
      return transformer(cfg.num_heads, dim_head, cfg.transformer_depth, self.dtype, lw, name=name)

    h = x.astype(self.dtype)
    context = context.astype(self.dtype)
    h = conv(mc, 3, name='input_blocks_0_0', dtype=self.dtype, lowering=lw)(h)
    hs = [h]
    ds, idx = 1, 1
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        h = res_block(mult * mc, self.dtype, lw, name=f'input_blocks_{idx}_0')(h, emb)
        if ds in cfg.attention_resolutions:
          h = attn(mult * mc, f'input_blocks_{idx}_1')(h, context)
        hs.append(h)
        idx += 1
      if level != len(cfg.channel_mult) - 1:
        h = Downsample(self.dtype, lw, name=f'input_blocks_{idx}_0')(h)
        hs.append(h)
        idx += 1
        ds *= 2

    h = res_block(h.shape[-1], self.dtype, lw, name='middle_block_0')(h, emb)
    h = attn(h.shape[-1], 'middle_block_1')(h, context)
    h = res_block(h.shape[-1], self.dtype, lw, name='middle_block_2')(h, emb)
    vol = self._volume_for(h, volumes)
    h = depth_tf(cfg.depth_attn_heads, vol.shape[-1] // 2, self.dtype, lw, name='middle_conditions')(h, vol)

    idx = 0
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
      for i in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res_block(mult * mc, self.dtype, lw, name=f'output_blocks_{idx}_0')(h, emb)
        sub = 1
        if ds in cfg.attention_resolutions:
          h = attn(mult * mc, f'output_blocks_{idx}_1')(h, context)
          sub = 2
        if level and i == cfg.num_res_blocks:
          h = Upsample(self.dtype, lw, name=f'output_blocks_{idx}_{sub}')(h)
          ds //= 2
        if idx >= 3:  # output_b2c = {3: 0, ..., 11: 8}
          vol = self._volume_for(h, volumes)
          h = depth_tf(cfg.depth_attn_heads, vol.shape[-1] // 2, self.dtype, lw,
                       name=f'output_conditions_{idx - 3}')(h, vol)
        idx += 1

    h = nn.silu(GroupNorm(32, name='out_0')(h))
    h = conv(cfg.out_channels, 3, name='out_2', dtype=self.dtype, lowering=lw)(h)
    return h.astype(jnp.float32)
