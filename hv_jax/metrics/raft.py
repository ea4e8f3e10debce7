"""RAFT optical flow (large model, Teed & Deng 2020) as used by HarmonyView's E_flow, channels-last.

Port of the RAFT copy in byeongjun-park/HarmonyView (`RAFT/raft.py`, `corr.py`, `extractor.py`, `update.py`,
`utils/utils.py`; princeton-vl/RAFT), with the settings of `eval_consistency.py`: small=False,
mixed_precision=False, alternate_corr=False, dropout 0, eval mode, `model(img1, img2, iters=20, test_mode=True)`
without an InputPadder, and the upsampled flow (`flow_up`) used.

Reference behaviour reproduced here (channel orders matter for the converted weights):
- inputs [B, H, W, 3] in [0, 255] are mapped to 2 * (x / 255) - 1; H, W multiples of 8.
- fnet: BasicEncoder(256, instance norm without affine, eps 1e-5); cnet: BasicEncoder(256, batch norm with
  running statistics, eps 1e-5), split into net = tanh(first 128) and inp = relu(last 128).
- correlation: all-pairs <f1, f2> / sqrt(256), average-pooled 2x2 (floor) into 4 levels; lookup radius 4 at
  coords / 2**level with grid_sample(bilinear, zeros padding, align_corners=True) semantics, i.e. bilinear
  weights in pixel units, samples outside the map read 0. Channel order level * 81 + a * 9 + b where the
  sample is at (x + a - 4, y + b - 4): the reference's meshgrid(dy, dx) stacks the *first* grid axis as the
  x offset.
- update: BasicMotionEncoder, SepConvGRU (1x5 then 5x1), FlowHead; convex 8x upsampling with softmax over the
  3x3 neighbourhood of 8 * flow (F.unfold, zero padded) and the mask head scaled by 0.25. The mask of the last
  iteration alone is used, so it is computed once after the loop (the reference computes it every iteration).
- Differences: pixel coordinates are used directly instead of grid_sample's normalise / unnormalise round trip
  (float rounding only). A pyramid level of width or height 1 (H or W < 128) divides by zero in the reference
  (2 * x / (W - 1)); here it is sampled as a 1-pixel map. Convs and matmuls run at HIGHEST precision.
"""
from __future__ import annotations

import functools
from typing import Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

PRECISION = jax.lax.Precision.HIGHEST   # true float32 on accelerators (no TF32 / bf16 passes)
HIDDEN_DIM = 128
CONTEXT_DIM = 128
CORR_LEVELS = 4
CORR_RADIUS = 4
FEATURE_DIM = 256
EPS = 1e-5                              # torch InstanceNorm2d / BatchNorm2d default


def conv(features: int, kernel, *, stride: int = 1, name: str | None = None) -> nn.Conv:
  """torch.nn.Conv2d(k, stride, padding=k // 2) with bias; kernel HWIO."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  return nn.Conv(features, (kh, kw), strides=(stride, stride), padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
                 precision=PRECISION, name=name)


def instance_norm(x):
  """nn.InstanceNorm2d(affine=False): per-sample, per-channel over H, W, biased variance."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) / jnp.sqrt(var + EPS)


class BatchNorm(nn.Module):
  """nn.BatchNorm2d in eval mode: x * a + b with a = weight / sqrt(running_var + eps) (torch's CPU form)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param('mean', nn.initializers.zeros, (c,), jnp.float32)
    var = self.param('var', nn.initializers.ones, (c,), jnp.float32)
    a = scale / jnp.sqrt(var + EPS)
    return x * a + (bias - mean * a)


def _norm(kind: str, name: str):
  return BatchNorm(name=name) if kind == 'batch' else instance_norm


class ResidualBlock(nn.Module):
  """extractor.ResidualBlock: relu(x' + relu(n2(c2(relu(n1(c1(x))))))), x' = n3(1x1 stride conv) if strided."""
  planes: int
  norm: str
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_norm(self.norm, 'norm1')(conv(self.planes, 3, stride=self.stride, name='conv1')(x)))
    y = nn.relu(_norm(self.norm, 'norm2')(conv(self.planes, 3, name='conv2')(y)))
    if self.stride != 1:   # downsample = Sequential(conv, norm3): torch also lists norm3 as downsample.1
      x = _norm(self.norm, 'norm3')(conv(self.planes, 1, stride=self.stride, name='downsample_0')(x))
    return nn.relu(x + y)


class BasicEncoder(nn.Module):
  """extractor.BasicEncoder: 7x7/2 conv, 3 stages of 2 residual blocks (64, 96/2, 128/2), 1x1 to output_dim."""
  output_dim: int
  norm: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(_norm(self.norm, 'norm1')(conv(64, 7, stride=2, name='conv1')(x)))
    for i, (dim, stride) in enumerate(((64, 1), (96, 2), (128, 2)), start=1):
      x = ResidualBlock(dim, self.norm, stride, name=f'layer{i}_0')(x)
      x = ResidualBlock(dim, self.norm, 1, name=f'layer{i}_1')(x)
    return conv(self.output_dim, 1, name='conv2')(x)


class MotionEncoder(nn.Module):
  """update.BasicMotionEncoder: [relu(conv(cat(corr feats, flow feats))) (126), flow (2)]."""

  @nn.compact
  def __call__(self, flow, corr):
    cor = nn.relu(conv(256, 1, name='convc1')(corr))
    cor = nn.relu(conv(192, 3, name='convc2')(cor))
    flo = nn.relu(conv(128, 7, name='convf1')(flow))
    flo = nn.relu(conv(64, 3, name='convf2')(flo))
    out = nn.relu(conv(128 - 2, 3, name='conv')(jnp.concatenate([cor, flo], -1)))
    return jnp.concatenate([out, flow], -1)


class SepConvGRU(nn.Module):
  """update.SepConvGRU: a GRU step with (1, 5) convs, then one with (5, 1) convs."""

  @nn.compact
  def __call__(self, h, x):
    for suffix, k in (('1', (1, 5)), ('2', (5, 1))):
      hx = jnp.concatenate([h, x], -1)
      z = nn.sigmoid(conv(HIDDEN_DIM, k, name='convz' + suffix)(hx))
      r = nn.sigmoid(conv(HIDDEN_DIM, k, name='convr' + suffix)(hx))
      q = jnp.tanh(conv(HIDDEN_DIM, k, name='convq' + suffix)(jnp.concatenate([r * h, x], -1)))
      h = (1 - z) * h + z * q
    return h


class FlowHead(nn.Module):

  @nn.compact
  def __call__(self, x):
    return conv(2, 3, name='conv2')(nn.relu(conv(256, 3, name='conv1')(x)))


class UpdateBlock(nn.Module):
  """update.BasicUpdateBlock; `mask` is its mask head (Sequential(conv 3x3, relu, conv 1x1) * 0.25)."""

  def setup(self):
    self.encoder = MotionEncoder()
    self.gru = SepConvGRU()
    self.flow_head = FlowHead()
    self.mask_0 = conv(256, 3)
    self.mask_2 = conv(64 * 9, 1)

  def __call__(self, net, inp, corr, flow):
    motion = self.encoder(flow, corr)
    net = self.gru(net, jnp.concatenate([inp, motion], -1))
    return net, self.flow_head(net)

  def mask(self, net):
    return 0.25 * self.mask_2(nn.relu(self.mask_0(net)))


class RAFT(nn.Module):
  """Submodules named as raft.RAFT's (fnet, cnet, update_block); the stages are methods for `apply`."""

  def setup(self):
    self.fnet = BasicEncoder(FEATURE_DIM, 'instance')
    self.cnet = BasicEncoder(HIDDEN_DIM + CONTEXT_DIM, 'batch')
    self.update_block = UpdateBlock()

  def features(self, images):
    return self.fnet(normalize(images))

  def context(self, images):
    c = self.cnet(normalize(images))
    return jnp.tanh(c[..., :HIDDEN_DIM]), nn.relu(c[..., HIDDEN_DIM:])

  def update(self, net, inp, corr, flow):
    return self.update_block(net, inp, corr, flow)

  def upsample_mask(self, net):
    return self.update_block.mask(net)

  def __call__(self, image1, image2):
    """One-iteration forward pass touching every parameter (for `init` / `eval_shape`); `image2` goes through
    the same feature encoder as `image1`, so it adds no parameter."""
    del image2
    f1 = self.features(image1)
    net, inp = self.context(image1)
    b, h, w, _ = f1.shape
    corr = jnp.zeros((b, h, w, CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2), f1.dtype)
    net, delta = self.update(net, inp, corr, jnp.zeros((b, h, w, 2), f1.dtype))
    return delta, self.upsample_mask(net)


def normalize(images):
  """raft.forward: 2 * (image / 255) - 1."""
  return 2 * (images.astype(jnp.float32) / 255.0) - 1.0


# ----------------------------------------------------------------------------- correlation

def corr_pyramid(fmap1, fmap2, levels: int = CORR_LEVELS):
  """CorrBlock.__init__: [B*h*w, h, w] all-pairs correlation / sqrt(C), then 2x2 average pools (floor)."""
  b, h, w, c = fmap1.shape
  corr = jnp.einsum('bijc,bklc->bijkl', fmap1, fmap2, precision=PRECISION) / jnp.sqrt(jnp.float32(c))
  pyramid = [corr.reshape(b * h * w, h, w)]
  for _ in range(levels - 1):
    m = pyramid[-1]
    h2, w2 = m.shape[1] // 2, m.shape[2] // 2
    m = m[:, :2 * h2, :2 * w2].reshape(m.shape[0], h2, 2, w2, 2)
    pyramid.append(jnp.mean(m, axis=(2, 4)))
  return pyramid


def _tent(coords, size: int):
  """Bilinear weights of `coords` [...] on the integer grid 0..size-1 [..., size]; off-grid taps read 0."""
  return jnp.maximum(0.0, 1.0 - jnp.abs(coords[..., None] - jnp.arange(size, dtype=coords.dtype)))


def corr_lookup(pyramid, coords, radius: int = CORR_RADIUS):
  """CorrBlock.__call__: coords [B, h, w, 2] (x, y) -> [B, h, w, levels * (2r+1)^2].

  Bilinear sampling is separable, so each (2r+1)^2 window is Wy M Wx^T with tent weights: grid_sample's
  bilinear / zeros / align_corners=True in pixel units, as matmuls instead of gathers.
  """
  b, h, w, _ = coords.shape
  d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  x = coords[..., 0].reshape(-1, 1)
  y = coords[..., 1].reshape(-1, 1)
  out = []
  for i, m in enumerate(pyramid):
    wx = _tent(x / 2 ** i + d, m.shape[2])     # [N, 2r+1 (a), W]
    wy = _tent(y / 2 ** i + d, m.shape[1])     # [N, 2r+1 (b), H]
    t = jnp.einsum('nkl,nal->nak', m, wx, precision=PRECISION)
    out.append(jnp.einsum('nak,nbk->nab', t, wy, precision=PRECISION).reshape(b, h, w, -1))
  return jnp.concatenate(out, -1)


def coords_grid(b: int, h: int, w: int):
  """utils.coords_grid, channels-last: [..., 0] = x (column), [..., 1] = y (row)."""
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  return jnp.broadcast_to(jnp.stack([xs, ys], -1), (b, h, w, 2))


def upsample_flow(flow, mask):
  """RAFT.upsample_flow: [B, h, w, 2], [B, h, w, 576] -> [B, 8h, 8w, 2], convex combination of 3x3 neighbours.

  Mask channel k * 64 + i * 8 + j weighs neighbour k (row-major 3x3, F.unfold order) for sub-pixel (i, j).
  """
  b, h, w, _ = flow.shape
  m = jax.nn.softmax(mask.reshape(b, h, w, 9, 8, 8), axis=3)
  f = jnp.pad(8 * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
  nb = jnp.stack([f[:, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)], axis=3)   # [B,h,w,9,2]
  up = jnp.einsum('byxkij,byxkc->byixjc', m, nb, precision=PRECISION)
  return up.reshape(b, 8 * h, 8 * w, 2)


# ----------------------------------------------------------------------------- the flow function

MODEL = RAFT()


def check_size(h: int, w: int):
  if h % 8 or w % 8:
    raise ValueError(f'RAFT needs H and W divisible by 8 (no InputPadder, as in eval_consistency.py); got {h}x{w}')
  if h < 64 or w < 64:
    raise ValueError(f'RAFT needs H, W >= 64 so that every correlation level is non-empty; got {h}x{w}')


def encode(params, images):
  """fnet features and (net, inp) context of [B, H, W, 3] images in [0, 255]."""
  fmap = MODEL.apply({'params': params}, images, method=RAFT.features)
  net, inp = MODEL.apply({'params': params}, images, method=RAFT.context)
  return fmap, net, inp


def refine(params, fmap1, fmap2, net, inp, iters=20):
  """The iterative part of RAFT.forward (test_mode): returns (flow_low [B,h,w,2], flow_up [B,8h,8w,2]).

  `iters` may be a Python int (a scan) or a traced integer (a while loop): one compile serves all counts.
  """
  pyramid = corr_pyramid(fmap1, fmap2)
  coords0 = coords_grid(*fmap1.shape[:3])

  def body(_, carry):
    net, coords1 = carry
    corr = corr_lookup(pyramid, coords1)
    net, delta = MODEL.apply({'params': params}, net, inp, corr, coords1 - coords0, method=RAFT.update)
    return net, coords1 + delta

  net, coords1 = jax.lax.fori_loop(0, iters, body, (net, coords0))
  flow_low = coords1 - coords0
  mask = MODEL.apply({'params': params}, net, method=RAFT.upsample_mask)
  return flow_low, upsample_flow(flow_low, mask)


def flow(params, image1, image2, iters=20, return_low: bool = False):
  """RAFT(image1, image2, iters, test_mode=True)[1]: flow_up [B, H, W, 2] (x, y) from [B, H, W, 3] in [0, 255].

  Pure: jit it (`jax.jit(flow, static_argnames='return_low')`) and batch pairs on B or with vmap.
  """
  if image1.shape != image2.shape or image1.ndim != 4 or image1.shape[-1] != 3:
    raise ValueError(f'flow: want two [B, H, W, 3] images of one shape, got {image1.shape} and {image2.shape}')
  check_size(*image1.shape[1:3])
  b = image1.shape[0]
  fmap = MODEL.apply({'params': params}, jnp.concatenate([image1, image2], 0), method=RAFT.features)
  net, inp = MODEL.apply({'params': params}, image1, method=RAFT.context)
  flow_low, flow_up = refine(params, fmap[:b], fmap[b:], net, inp, iters)
  return (flow_low, flow_up) if return_low else flow_up


def abstract_params(h: int = 64, w: int = 64):
  """Shapes of the param tree (jax.eval_shape: nothing allocated)."""
  x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  return jax.eval_shape(lambda a, b: MODEL.init(jax.random.PRNGKey(0), a, b), x, x)['params']


@functools.lru_cache(maxsize=1)
def param_shapes() -> Tuple[Tuple[Tuple[str, ...], Tuple[int, ...]], ...]:
  """((path, shape), ...) of every leaf, sorted by path."""
  flat = traverse_util.flatten_dict(abstract_params())
  return tuple(sorted((k, tuple(v.shape)) for k, v in flat.items()))


def num_params() -> int:
  return int(sum(np.prod(s) for _, s in param_shapes()))
