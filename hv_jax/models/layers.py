"""Building blocks shared by the SyncDreamer port (channels-last everywhere).

PyTorch conventions reproduced here, because they are easy to get wrong:
- GroupNorm/LayerNorm use the biased variance, computed in float32 (the original's GroupNorm32 and CLIP
  LayerNorm cast to float32), with the module's own epsilon (1e-5 torch default, 1e-6 in LDM's Normalize).
- `grid_sample_2d/3d` follow `torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros',
  align_corners=True)`: the last grid coordinate axis is (x, y[, z]) = (width, height[, depth]).
- `ConvTranspose3d` follows `torch.nn.ConvTranspose3d(k=3, stride=2, padding=1, output_padding=1)`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.models.config import TUNED, Lowering


class GroupNorm(nn.Module):
  """torch.nn.GroupNorm on channels-last input [B, ..., C], statistics in float32."""
  num_groups: int
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'GroupNorm: {c} channels not divisible by {self.num_groups} groups')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    g = xf.reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)
    mean = jnp.mean(g, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = g.reshape(xf.shape) * scale + bias
    return y.astype(dtype)


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm over the last axis, in float32 (CLIP's LayerNorm subclass casts)."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(dtype)


class Conv(nn.Module):
  """nn.Conv's params and semantics (NHWC / NDHWC, explicit padding), with a choice of lowering.

  `lowering.conv` (a static field, see hv_jax.models.config.Lowering): 'xla' is one `lax.conv_general_dilated`;
  'tuned' turns 1x1 convs (stride 1, no padding) into one matmul over channels, 3x3 stride-1 convs on maps of
  h * w <= lowering.im2col_max_pixels into im2col + one matmul, a 3x3 conv of the nearest-2x-upsampled map
  (`upsample=True`) into four 2x2 phase convs on the small map, and 3-d convs into one depth-folded 2-d conv;
  everything else stays a `lax.conv`. Same sums either way (float32 rounding order aside), and the same param
  tree: kernel [*k, C_in, C_out] (HWIO), bias [C_out].
  """
  features: int
  kernel_size: tuple
  strides: tuple
  padding: tuple          # ((lo, hi), ...) per spatial axis
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  upsample: bool = False   # nearest-2x-upsample the input first (F.interpolate + conv of LDM's Upsample)
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    ks = tuple(self.kernel_size)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), ks + (x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
    dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    tuned = self.lowering.conv == 'tuned'
    strided = any(s != 1 for s in self.strides)
    pad3 = len(ks) == 2 and ks == (3, 3) and tuple(self.padding) == ((1, 1), (1, 1))
    if self.upsample:
      if len(ks) != 2:
        raise ValueError('Conv(upsample=True) is 2-d only')
      if tuned and pad3 and not strided:
        y = _upsample2x_conv3x3(x, kernel)
        return y if bias is None else y + bias.astype(dtype)
      x = upsample_nearest_2x(x)
    nd = len(ks)
    if nd not in (2, 3):
      raise ValueError(f'Conv: {nd}-d kernels not supported')
    if tuned and not strided and all(k == 1 for k in ks) and all(p == (0, 0) for p in self.padding):
      y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel.reshape(x.shape[-1], self.features))
      y = y.reshape(x.shape[:-1] + (self.features,))
    elif tuned and nd == 3:
      y = _conv3d_depth_folded(x, kernel, tuple(self.strides), tuple(tuple(p) for p in self.padding),
                               self.lowering.im2col_max_pixels)
    elif tuned:
      y = _conv2d(x, kernel, tuple(self.strides), tuple(tuple(p) for p in self.padding),
                  self.lowering.im2col_max_pixels)
    else:
      dn = ('NHWC', 'HWIO', 'NHWC') if nd == 2 else ('NDHWC', 'DHWIO', 'NDHWC')
      y = jax.lax.conv_general_dilated(x, kernel, window_strides=tuple(self.strides),
                                       padding=[tuple(p) for p in self.padding], dimension_numbers=dn)
    if bias is not None:
      y = y + bias.astype(dtype)
    return y


def _conv2d(x, kernel, strides, padding, im2col_max_pixels: int):
  """2-d conv [B, H, W, C] x [kh, kw, C, O]: im2col + matmul for 3x3/pad-1/stride-1 on maps of at most
  `im2col_max_pixels` pixels, else lax."""
  h, w = x.shape[1:3]
  if (kernel.shape[:2] == (3, 3) and tuple(strides) == (1, 1) and tuple(padding) == ((1, 1), (1, 1))
      and h * w <= im2col_max_pixels):
    return _conv3x3_im2col(x, kernel)
  return jax.lax.conv_general_dilated(x, kernel, window_strides=tuple(strides), padding=list(padding),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv3d_depth_folded(x, kernel, strides, padding, im2col_max_pixels: int):
  """3-d conv [B, D, H, W, C] x [kd, kh, kw, C, O] as ONE 2-d conv: the kd depth taps are stacked on
  channels (kd*C) and the output depths folded into the batch. XLA:CPU has no fast 3-d conv; its 2-d
  convs are ~10x faster here. Same sums as the 3-d conv (float32 rounding order aside)."""
  b, d, h, w, c = x.shape
  kd, kh, kw, _, o = kernel.shape
  sd = strides[0]
  xp = jnp.pad(x, ((0, 0), padding[0], (0, 0), (0, 0), (0, 0)))
  dout = (d + padding[0][0] + padding[0][1] - kd) // sd + 1
  taps = [xp[:, j:j + sd * (dout - 1) + 1:sd] for j in range(kd)]                   # each [B, dout, H, W, C]
  xs = jnp.concatenate(taps, -1).reshape(b * dout, h, w, kd * c)
  k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, o)          # channel index j*C + c
  y = _conv2d(xs, k2, strides[1:], padding[1:], im2col_max_pixels)
  return y.reshape((b, dout) + y.shape[1:])


def _conv3x3_im2col(x, kernel):
  """3x3, stride 1, padding 1 on [B, H, W, C] as one [B*H*W, 9C] x [9C, O] matmul."""
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
  y = jnp.dot(cols.reshape(b * h * w, 9 * c), kernel.reshape(9 * c, kernel.shape[-1]))
  return y.reshape(b, h, w, kernel.shape[-1])


def _upsample2x_conv3x3(x, kernel):
  """conv3x3(pad 1)(upsample_nearest_2x(x)) on [B, H, W, C] without the upsampled map.

  Output row 2i+a sees upsampled rows 2i+a-1..2i+a+1, i.e. input rows (i-1, i, i) for a=0 and
  (i, i, i+1) for a=1: a 2-tap kernel (w0, w1+w2) at rows (i-1, i), or (w0+w1, w2) at rows (i, i+1).
  The same holds for columns, so each of the 4 output phases is a 2x2 conv of x.
  """
  b, h, w, _ = x.shape
  o = kernel.shape[-1]
  merge = (lambda k: jnp.stack([k[0], k[1] + k[2]]), lambda k: jnp.stack([k[0] + k[1], k[2]]))
  outs = []
  for a in range(2):
    ka = merge[a](kernel)                                            # [2, 3, C, O]
    for c in range(2):
      kab = jnp.moveaxis(merge[c](jnp.moveaxis(ka, 1, 0)), 0, 1)     # [2, 2, C, O]
      pad = [(1, 0) if a == 0 else (0, 1), (1, 0) if c == 0 else (0, 1)]
      outs.append(jax.lax.conv_general_dilated(x, kab, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  y = jnp.stack(outs, axis=3).reshape(b, h, w, 2, 2, o)               # phases (a, c)
  return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, 2 * h, 2 * w, o)


def conv(features: int, kernel: int | Sequence[int], *, stride: int = 1, padding: int | None = None,
         use_bias: bool = True, ndim: int = 2, name: str | None = None, dtype=None,
         upsample: bool = False, lowering: Lowering = TUNED) -> Conv:
  """A torch-style Conv{2,3}d: symmetric integer padding (default kernel//2), stride, bias flag.

  upsample=True: the conv of the nearest-2x-upsampled input (LDM's Upsample), see `Conv`.
  """
  ks = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
  pad = tuple((k // 2, k // 2) for k in ks) if padding is None else ((padding, padding),) * ndim
  return Conv(features, ks, (stride,) * ndim, pad, use_bias=use_bias, name=name, dtype=dtype, upsample=upsample,
              lowering=lowering)


def dense(features: int, *, use_bias: bool = True, name: str | None = None, dtype=None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, name=name, dtype=dtype, param_dtype=jnp.float32)


class ConvTranspose3d(nn.Module):
  """torch.nn.ConvTranspose3d(in, out, kernel_size=3, stride=2, padding=1, output_padding=1).

  The kernel is stored as [kD, kH, kW, C_in, C_out] (torch's [C_in, C_out, k, k, k] moved to
  channels-last); the forward pass is the gradient of a strided conv: dilate the input by the stride,
  pad (k-1-p, k-1-p+output_padding) and correlate with the spatially flipped kernel. With
  `lowering.conv == 'tuned'`, k=3/s=2/p=1/op=1 runs as 8 output-phase convs on the undilated input instead.
  """
  features: int
  kernel_size: int = 3
  stride: int = 2
  padding: int = 1
  output_padding: int = 1
  dtype: jnp.dtype | None = None
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    dtype = self.dtype or x.dtype
    if self.lowering.conv == 'tuned' and (k, self.stride, self.padding, self.output_padding) == (3, 2, 1, 1):
      return (_conv_transpose3d_phases(x.astype(dtype), kernel.astype(dtype), self.lowering.im2col_max_pixels)
              + bias.astype(dtype))
    lo = k - 1 - self.padding
    hi = lo + self.output_padding
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel[::-1, ::-1, ::-1].astype(dtype), window_strides=(1, 1, 1),
        padding=[(lo, hi)] * 3, lhs_dilation=(self.stride,) * 3,
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
    return y + bias.astype(dtype)


def _conv_transpose3d_phases(x, kernel, im2col_max_pixels: int):
  """ConvTranspose3d(k=3, s=2, p=1, op=1) without the zero-dilated input: output o = 2i - 1 + k per axis, so
  even outputs 2m take tap k=1 of input m and odd outputs 2m+1 take taps k=2 of input m and k=0 of m+1
  (zero past the end). Each of the 8 output phases is a small conv on x; they are interleaved."""
  b, d, h, w, c = x.shape
  o = kernel.shape[-1]
  taps = {0: ([1], (0, 0)), 1: ([2, 0], (0, 1))}      # phase -> kernel taps in shift order, high-end padding
  phases = []
  for a in (0, 1):
    for bb in (0, 1):
      for cc in (0, 1):
        (ka, pa), (kb, pb), (kc, pc) = taps[a], taps[bb], taps[cc]
        kern = kernel[jnp.array(ka)][:, jnp.array(kb)][:, :, jnp.array(kc)]        # [ta, tb, tc, C, O]
        phases.append(_conv3d_depth_folded(x, kern, (1, 1, 1), (pa, pb, pc), im2col_max_pixels))
  y = jnp.stack(phases, 0).reshape(2, 2, 2, b, d, h, w, o)
  return jnp.transpose(y, (3, 4, 0, 5, 1, 6, 2, 7)).reshape(b, 2 * d, 2 * h, 2 * w, o)


def upsample_nearest_2x(x):
  """F.interpolate(scale_factor=2, mode='nearest') on [B, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Upsample(nn.Module):
  """Upsample(with_conv=True) of both the UNet and the VAE: nearest x2, then a 3x3 conv named `conv`."""
  dtype: jnp.dtype | None = None
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x):
    return conv(x.shape[-1], 3, name='conv', dtype=self.dtype, upsample=True, lowering=self.lowering)(x)


def _gather_nd(feats, idx):
  """feats [S..., C] (one batch item), idx [..., ndim] int -> [..., C]."""
  return feats[tuple(idx[..., i] for i in range(idx.shape[-1]))]


def _grid_sample(feats, grid):
  """Bilinear/trilinear sampling of one batch item, zeros padding, align_corners=True.

  feats: [S_0, ..., S_{n-1}, C] (spatial axes in array order), grid: [..., n] with coordinates in
  reversed order (x indexes the last spatial axis), each in [-1, 1].

  The 3-d case rounds as torch's CPU grid_sampler_3d does: per-axis weights (i0 + 1 - p) and (p - i0),
  multiplied x, y, z in that order, and the eight corner terms, each product rounded, added one by one.
  The sampled volume changes steeply between voxels, so the frustum features keep every ulp they can.
  """
  n = grid.shape[-1]
  sizes = feats.shape[:n]
  # grid axis j addresses spatial axis n-1-j; align_corners=True: -1 -> 0, 1 -> size-1.
  pos = jnp.stack([(grid[..., n - 1 - a] + 1) / 2 * (sizes[a] - 1) for a in range(n)], -1)
  base = jnp.floor(pos)
  if n == 3:
    lo, hi = (base + 1) - pos, pos - base                   # weights of corner offsets 0 and 1, per axis
  else:
    hi = pos - base
    lo = 1 - hi
  base = base.astype(jnp.int32)
  out = 0.
  for corner in np.ndindex(*(2,) * n):
    off = jnp.asarray(corner, jnp.int32)
    idx = base + off
    ws = [hi[..., a] if corner[a] else lo[..., a] for a in range(n)]
    w = ws[n - 1]
    for a in range(n - 2, -1, -1):                          # x * y (* z): last spatial axis first
      w = w * ws[a]
    valid = jnp.all((idx >= 0) & (idx < jnp.asarray(sizes)), axis=-1)
    val = _gather_nd(feats, jnp.clip(idx, 0, jnp.asarray(sizes) - 1))
    term = val * (w * valid)[..., None].astype(feats.dtype)
    out = out + (round_before_add(term) if n == 3 else term)
  return out


def round_before_add(p):
  """p itself, rounded to its dtype before anything is added to it.

  XLA (CPU and GPU) contracts `a * b + c` into one fused multiply-add (one rounding) where torch's kernels
  round the product first. A select on `p == p` between the multiply and the add is an identity (a NaN
  stays NaN) that the compiler cannot fuse through.
  """
  return jnp.where(p == p, p, jnp.nan)


def grid_sample_2d(feats, grid):
  """feats [B, H, W, C], grid [B, ..., 2] (x, y) -> [B, ..., C]."""
  return jax.vmap(_grid_sample)(feats, grid)


def grid_sample_3d(feats, grid):
  """feats [B, D, H, W, C], grid [B, ..., 3] (x, y, z) -> [B, ..., C]."""
  return jax.vmap(_grid_sample)(feats, grid)


def _truncate_mantissa(v: np.float32, bits: int) -> np.float32:
  """v with only its `bits` leading significand bits kept (so small-integer multiples are exact)."""
  mask = np.uint32((0xFFFFFFFF << (24 - bits)) & 0xFFFFFFFF)
  return np.array([v], np.float32).view(np.uint32).__and__(mask).view(np.float32)[0]


def _reduce_2pi(x):
  """x - 2*pi*round(x / 2*pi) for float32 x, accurate to ~1 ulp (Cody-Waite, 3-part 2*pi).

  XLA's float32 sin/cos lose ~3e-5 at arguments near 1000 (the timestep embedding reaches t*1 = 999),
  where torch's are correctly rounded; reducing first makes both agree to float32 rounding.
  """
  hi = np.float32(6.28125)                       # 8 significant bits: k * hi is exact for |k| < 2^16
  mid = _truncate_mantissa(np.float32(2 * np.pi - 6.28125), 12)  # 12 bits: k * mid exact too
  lo = np.float32(2 * np.pi - float(hi) - float(mid))
  k = jnp.round(x / np.float32(2 * np.pi))
  return ((x - k * hi) - k * mid) - k * lo


def timestep_embedding(t, dim: int, max_period: float = 10000.):
  """LDM's sinusoidal embedding: [cos(t f), sin(t f)], f_i = exp(-log(max_period) i / (dim/2))."""
  half = dim // 2
  # Frequencies are constants: exponent in float32 as torch forms it, exp correctly rounded (torch's
  # float32 exp is within 1 ulp of this; at t ~ 1000 one ulp of f moves t*f by up to ~6e-5).
  expo = np.float32(-np.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
  freqs = jnp.asarray(np.exp(expo.astype(np.float64)).astype(np.float32))
  args = _reduce_2pi(jnp.asarray(t, jnp.float32)[:, None] * freqs[None])
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], -1)
  return emb
