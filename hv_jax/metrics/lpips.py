"""LPIPS with the VGG16 trunk (`lpips.LPIPS(net='vgg')`, v0.1), channels-last, as eval_nvs.py scores views.

Mirrors lpips 0.1.4: `ScalingLayer` ((x - shift) / scale), `pretrained_networks.vgg16` (torchvision's
`vgg16().features` cut into 5 slices, tapped at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3),
`normalize_tensor` (unit length over channels, eps 1e-10 added to the norm), squared difference, the
`NetLinLayer` heads (1x1 conv to 1 channel, no bias; dropout is off in eval), `spatial_average`, and the
sum over the 5 layers. eval_nvs.py calls `lpips_fn(gt * 2 - 1, pred * 2 - 1)`.

Parameter tree (built by `convert/lpips.py`):
  net/features_{i}/kernel [3, 3, C_in, C_out], net/features_{i}/bias [C_out]   i = torchvision's index in
      `vgg16().features` (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
  lin{k}/kernel [1, 1, C_k, 1]                                               k = 0..4, C = 64..512
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hv_jax.errors import ConversionError

# torchvision vgg16 `features` (cfg 'D'); 'M' = MaxPool2d(2, 2). Each conv is followed by ReLU(inplace).
VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')
N_TAPS = 5                                  # relu1_2 .. relu5_3: the ReLU before each of the first 5 pools
LIN_CHANNELS = (64, 128, 256, 512, 512)     # LPIPS.chns for 'vgg'
SHIFT = np.array([-.030, -.088, -.188], np.float32)   # ScalingLayer buffers
SCALE = np.array([.458, .448, .450], np.float32)
EPS = 1e-10                                 # lpips.normalize_tensor

_HI = jax.lax.Precision.HIGHEST


def vgg16_conv_layers() -> Tuple[Tuple[int, int, int], ...]:
  """(torchvision index, C_in, C_out) of the 13 convs of vgg16().features up to relu5_3."""
  out, idx, c_in = [], 0, 3
  for v in VGG16_CFG[:-1]:  # the last pool (index 30) is not part of lpips' slices
    if v == 'M':
      idx += 1
    else:
      out.append((idx, c_in, v))
      c_in, idx = v, idx + 2
  return tuple(out)


def param_shapes() -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flat {path: shape} of the LPIPS-VGG parameter tree (what the converter must fill)."""
  shapes = {}
  for i, c_in, c_out in vgg16_conv_layers():
    shapes[('net', f'features_{i}', 'kernel')] = (3, 3, c_in, c_out)
    shapes[('net', f'features_{i}', 'bias')] = (c_out,)
  for k, c in enumerate(LIN_CHANNELS):
    shapes[(f'lin{k}', 'kernel')] = (1, 1, c, 1)
  return shapes


class VGG16Features(nn.Module):
  """torchvision vgg16().features[:30] on [B, H, W, 3] -> the 5 lpips taps (relu1_2 .. relu5_3).

  3x3 convs with padding 1 and bias, ReLU, MaxPool2d(2, 2) (floor: odd rows/columns are dropped).
  """

  @nn.compact
  def __call__(self, x):
    taps, idx = [], 0
    for v in VGG16_CFG:
      if v == 'M':
        taps.append(x)
        if len(taps) == N_TAPS:
          break
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        idx += 1
      else:
        x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), precision=_HI, name=f'features_{idx}')(x)
        x = nn.relu(x)
        idx += 2
    return tuple(taps)


def scale_input(x: jax.Array) -> jax.Array:
  """lpips.ScalingLayer: (x - shift) / scale, x in [-1, 1], channels-last."""
  return (x - SHIFT) / SCALE


def normalize(feat: jax.Array) -> jax.Array:
  """lpips.normalize_tensor: feat / (||feat||_2 over channels + 1e-10)."""
  return feat / (jnp.sqrt(jnp.sum(jnp.square(feat), axis=-1, keepdims=True)) + EPS)


def lpips(params, x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS-VGG distance of [..., H, W, 3] images in [-1, 1] -> [...] (lpips' [B, 1, 1, 1], squeezed).

  eval_nvs.py order: x = gt * 2 - 1, y = pred * 2 - 1 (the distance is symmetric up to rounding). x and y
  broadcast against each other (e.g. gt [V, H, W, 3] against pred [N, V, H, W, 3]).
  H and W should be >= 16 so that relu5_3 is not empty. Jittable; both images go through one VGG pass.
  """
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  if x.ndim < 3 or y.ndim < 3 or x.shape[-3:] != y.shape[-3:] or x.shape[-1] != 3:
    raise ValueError(f'lpips: expected [..., H, W, 3] images of one size, got {x.shape} and {y.shape}')
  x, y = jnp.broadcast_arrays(x, y)
  lead, hw = x.shape[:-3], x.shape[-3:]
  b = int(np.prod(lead, dtype=np.int64))
  both = jnp.concatenate([x.reshape((b,) + hw), y.reshape((b,) + hw)], axis=0)
  taps = VGG16Features().apply({'params': params['net']}, scale_input(both))
  val = 0.
  for k, feat in enumerate(taps):
    f0, f1 = normalize(feat[:b]), normalize(feat[b:])
    w = params[f'lin{k}']['kernel'][0, 0, :, 0]                              # [C]
    res = jnp.einsum('bhwc,c->bhw', jnp.square(f0 - f1), w, precision=_HI)   # 1x1 conv C -> 1
    val = val + jnp.mean(res, axis=(1, 2))                                    # spatial_average
  return val.reshape(lead)


def random_params(seed: int = 0):
  """Random parameters in the real layout (tests, benchmarks), drawn with numpy: He-normal kernels,
  small biases, positive heads. Real weights come from convert/lpips.py."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in param_shapes().items():
    if path[0] != 'net':
      flat[path] = (rng.uniform(size=shape) / shape[2]).astype(np.float32)
    elif path[-1] == 'kernel':
      flat[path] = (rng.normal(size=shape) * np.sqrt(2. / np.prod(shape[:3]))).astype(np.float32)
    else:
      flat[path] = (rng.normal(size=shape) * 0.01).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


def save_npz(params: dict, path: str) -> None:
  """Converted params as an .npz: flat '/'-joined keys, float32 (python -m convert.lpips writes these)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_npz(path: str) -> dict:
  """Params written by save_npz (python -m convert.lpips), checked against the model layout. Reads converted
  weights only: no torch, nothing of convert/."""
  if not os.path.isfile(path):
    raise ConversionError(f'LPIPS params not found: {path}')
  try:
    with np.load(path) as z:
      flat = {tuple(k.split('/')): z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001
    raise ConversionError(f'{path} is not a readable .npz (truncated or corrupt?): {e}') from e
  shapes = param_shapes()
  bad = [f'  missing: {"/".join(p)}' for p in shapes if p not in flat]
  bad += [f'  unexpected: {"/".join(p)}' for p in flat if p not in shapes]
  bad += [f'  mis-shaped: {"/".join(p)} {flat[p].shape}, expected {shapes[p]}'
          for p in shapes if p in flat and flat[p].shape != shapes[p]]
  if bad:
    raise ConversionError(f'{path} does not hold LPIPS-VGG params:\n' + '\n'.join(bad))
  return traverse_util.unflatten_dict(flat)
