"""SyncDreamer's 3D volumes: the spatial volume built from all noisy views, and per-view frustum volumes.

Mirrors `ldm/models/diffusion/sync_dreamer_network.py` (NoisyTargetViewEncoder, SpatialTime3DNet,
FrustumTV3DNet), `sync_dreamer_utils.py` (projection, create_target_volume) and
`SpatialVolumeNet.construct_spatial_volume / construct_view_frustum_volume` in `sync_dreamer.py`.

Layouts (channels-last): feature maps [B, h, w, C]; volumes [B, D, H, W, C] where, for the spatial
volume, (D, H, W) index (z, y, x) of a regular grid over [-L, L]^3 (the original's meshgrid 'ij' then
xyz = (k, j, i) reorder); grid_sample coordinates are (x, y, z) as in torch.
"""
from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.models.config import TUNED, Lowering, VolumeConfig
from hv_jax.models.layers import (ConvTranspose3d, GroupNorm, conv, grid_sample_2d, grid_sample_3d,
                                  round_before_add)

Dtype = Any


# ----------------------------------------------------------------------------- geometry (pure)

def projection_matrix(ratio: float, Ks, poses):
  """construct_project_matrix: diag(ratio, ratio, 1) @ K @ [R|t], padded to 4x4.  Ks [N,3,3], poses [N,3,4]."""
  scale = jnp.diag(jnp.asarray([ratio, ratio, 1.0], jnp.float32))
  prj = scale[None] @ Ks @ poses
  pad = jnp.broadcast_to(jnp.asarray([0., 0., 0., 1.], jnp.float32), prj.shape[:-2] + (1, 4))
  return jnp.concatenate([prj, pad], -2)


def project_to_grid(points, Ks, poses, feat_size: int, image_size: int):
  """get_warp_coordinates: world points [N, P, 3] -> grid_sample coords [N, P, 2] on a feat_size map.

  Depth is clamped below at 1e-4 and pixel coords mapped to [-1, 1] by /((size-1)/2) - 1 (align_corners).
  """
  prj = projection_matrix(feat_size / image_size, Ks, poses)
  cam = jnp.einsum('nij,npj->npi', prj[:, :3, :3], points) + prj[:, None, :3, 3]
  depth = jnp.where(cam[..., 2:] < 1e-4, 1e-4, cam[..., 2:])
  uv = cam[..., :2] / depth
  return uv / ((feat_size - 1) / 2) - 1


def spatial_grid(size: int, length: float):
  """Vertices of the spatial volume, [size^3, 3] xyz, ordered (z, y, x) like the original's grid."""
  v = jnp.linspace(-length, length, size, dtype=jnp.float32)
  zz, yy, xx = jnp.meshgrid(v, v, v, indexing='ij')
  return jnp.stack([xx, yy, zz], -1).reshape(-1, 3)


def frustum_points(depth: int, size: int, image_size: int, Ks, poses, near: float, far: float):
  """create_target_volume with constant near/far: world points [N, D, size, size, 3] and depths [D].

  Pixel (u, v) of the size x size target map at depth z back-projects through the inverse of the
  (ratio-scaled) 4x4 projection matrix; pixel centres at integer coordinates (kornia create_meshgrid).

  Computed in float32 exactly as the original does, rounding for rounding (see `_torch_inverse` and
  `_torch_linspace`): these points are sampled from a spatial volume whose values change by up to ~4 per
  voxel, at 7 voxels per unit of the normalised coordinate, so a few float32 ulps here (a generic matrix
  inverse differs from torch.inverse by up to 6 ulps) become ~1e-5 in the frustum features -- several
  times the original's own float32 spread on the 3-D net.
  """
  f32 = np.float32
  near32, far32 = f32(near), f32(far)
  # depth_values = linspace(0, 1, D) * (far - near) + near, as separate float32 ops (torch tensors)
  z = jnp.asarray(_torch_linspace(0., 1., depth) * f32(far32 - near32) + near32, jnp.float32)
  ys, xs = np.meshgrid(np.arange(size, dtype=f32), np.arange(size, dtype=f32), indexing='ij')
  pix = jnp.asarray(np.stack([xs, ys, np.ones_like(xs)], 0))                          # 3 h w
  pts = pix[:, None] * z[None, :, None, None]                                          # 3 D h w
  inv = _torch_inverse(projection_matrix(size / image_size, Ks, poses))                # N 4 4
  # inv[:3, :3] @ pts + inv[:3, 3]: the three products rounded, summed left to right (torch's bmm here)
  rows = []
  for i in range(3):
    acc = round_before_add(inv[:, i, 0, None, None, None] * pts[None, 0])
    acc = acc + round_before_add(inv[:, i, 1, None, None, None] * pts[None, 1])
    acc = acc + round_before_add(inv[:, i, 2, None, None, None] * pts[None, 2])
    rows.append(acc + inv[:, i, 3, None, None, None])
  return jnp.stack(rows, -1), z


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace(start, end, steps) in float32 as torch's CPU kernel computes it: the first half
  start + step * i, the second half end - step * (steps - 1 - i), each a fused multiply-add."""
  f32 = np.float32
  start, end = f32(start), f32(end)
  if steps == 1:
    return np.asarray([start], f32)
  step = f32(f32(end - start) / f32(steps - 1))
  i = np.arange(steps)
  # a float32 fma via float64: the product of two float32 is exact in float64, and so is its sum with a
  # float32 of similar size here, so the single rounding to float32 is the fma's
  lo = np.float64(start) + np.float64(step) * i
  hi = np.float64(end) - np.float64(step) * (steps - 1 - i)
  return np.where(i < steps // 2, lo, hi).astype(f32)


def _torch_inverse(a):
  """torch.inverse of a batch of 4x4 float32 matrices [N, 4, 4], rounding for rounding as torch's CPU
  LAPACK path computes it (checked bit for bit on the SyncDreamer cameras): LU with partial pivoting
  (pivot column scaled by the reciprocal pivot, rank-1 update), then for each column of the identity a
  forward substitution (unit lower) and a back substitution whose dot product is summed from the last
  column down and multiplied by the reciprocal diagonal. Products are rounded before each add
  (`round_before_add`)."""
  n = a.shape[-1]
  rows = jnp.arange(n)
  perm = jnp.broadcast_to(rows, a.shape[:-1])
  for k in range(n):
    p = k + jnp.argmax(jnp.abs(a[:, k:, k]), axis=-1)                                  # first maximum
    swap = jnp.where(rows == k, p[:, None], jnp.where(rows == p[:, None], k, rows))    # N n
    a = jnp.take_along_axis(a, swap[:, :, None], axis=1)
    perm = jnp.take_along_axis(perm, swap, axis=1)
    col = a[:, k + 1:, k] * (np.float32(1) / a[:, k, k])[:, None]
    a = a.at[:, k + 1:, k].set(col)
    a = a.at[:, k + 1:, k + 1:].add(-round_before_add(col[:, :, None] * a[:, k, None, k + 1:]))
  x = (perm[:, :, None] == rows).astype(a.dtype)                                       # P @ I
  xs = [x[:, i] for i in range(n)]                                                     # rows of X
  for i in range(n):                                                                   # L y = P b
    for k in range(i):
      xs[i] = xs[i] - round_before_add(a[:, i, k, None] * xs[k])
  for i in reversed(range(n)):                                                         # U x = y
    if i < n - 1:
      s = round_before_add(a[:, i, n - 1, None] * xs[n - 1])
      for k in range(n - 2, i, -1):
        s = s + round_before_add(a[:, i, k, None] * xs[k])
      xs[i] = xs[i] - s
    xs[i] = xs[i] * (np.float32(1) / a[:, i, i])[:, None]
  return jnp.stack(xs, 1)


# ----------------------------------------------------------------------------- networks

class ResBlockWithTV(nn.Module):
  """Image2DResBlockWithTV: x + conv(GN-SiLU-conv-GN-SiLU-conv)(x + t_proj(t) + v_proj(v))."""
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, t, v):
    dim = x.shape[-1]
    cv = lambda k, name: conv(dim, k, name=name, dtype=self.dtype, lowering=self.lowering)
    h = x + cv(1, 'time_embed')(t) + cv(1, 'view_embed')(v)
    h = cv(3, 'conv_2')(nn.silu(GroupNorm(8, name='conv_0')(h)))
    h = cv(3, 'conv_5')(nn.silu(GroupNorm(8, name='conv_3')(h)))
    return x + h


class NoisyTargetViewEncoder(nn.Module):
  """Encodes one noisy latent view [B, h, w, 4] with time [B, T] and view [B, V] embeddings."""
  run_dim: int = 16
  output_dim: int = 16
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, t, v):
    t, v = t[:, None, None, :], v[:, None, None, :]
    x = conv(self.run_dim, 3, name='init_conv', dtype=self.dtype, lowering=self.lowering)(x)
    for i in range(3):
      x = ResBlockWithTV(self.dtype, self.lowering, name=f'out_conv{i}')(x, t, v)
    x = nn.silu(GroupNorm(8, name='final_out_0')(x))
    return conv(self.output_dim, 3, name='final_out_2', dtype=self.dtype, lowering=self.lowering)(x)


class _Block3D(nn.Module):
  """SpatialTimeBlock / FrustumTVBlock (and the Up variants): x + t(+v) projections, GN-SiLU, conv."""
  out_dim: int
  stride: int = 1
  up: bool = False
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, t, v=None):
    d = x.shape[-1]
    x = x + conv(d, 1, ndim=3, name='t_conv', dtype=self.dtype, lowering=self.lowering)(t)
    if v is not None:
      x = x + conv(d, 1, ndim=3, name='v_conv', dtype=self.dtype, lowering=self.lowering)(v)
    # The original names the norm `bn` in the down blocks and `norm` in the up blocks.
    x = nn.silu(GroupNorm(8, name='norm' if self.up else 'bn')(x))
    if self.up:
      return ConvTranspose3d(self.out_dim, dtype=self.dtype, lowering=self.lowering, name='conv')(x)
    return conv(self.out_dim, 3, stride=self.stride, padding=1, ndim=3, name='conv', dtype=self.dtype,
                lowering=self.lowering)(x)


class SpatialTime3DNet(nn.Module):
  dims: Tuple[int, ...]
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, t):
    d0, d1, d2, d3 = self.dims
    t = t[:, None, None, None, :]
    B = lambda out, stride, name: _Block3D(out, stride, dtype=self.dtype, lowering=self.lowering, name=name)
    x = conv(d0, 3, ndim=3, name='init_conv', dtype=self.dtype, lowering=self.lowering)(x)
    conv0 = B(d0, 1, 'conv0')(x, t)
    x = B(d1, 2, 'conv1')(conv0, t)
    x = B(d1, 1, 'conv2_0')(x, t)
    conv2 = B(d1, 1, 'conv2_1')(x, t)
    x = B(d2, 2, 'conv3')(conv2, t)
    x = B(d2, 1, 'conv4_0')(x, t)
    conv4 = B(d2, 1, 'conv4_1')(x, t)
    x = B(d3, 2, 'conv5')(conv4, t)
    x = B(d3, 1, 'conv6_0')(x, t)
    x = B(d3, 1, 'conv6_1')(x, t)
    x = conv4 + _Block3D(d2, up=True, dtype=self.dtype, lowering=self.lowering, name='conv7')(x, t)
    x = conv2 + _Block3D(d1, up=True, dtype=self.dtype, lowering=self.lowering, name='conv8')(x, t)
    return conv0 + _Block3D(d0, up=True, dtype=self.dtype, lowering=self.lowering, name='conv9')(x, t)


class FrustumTV3DNet(nn.Module):
  """Returns the frustum features at 4 resolutions, finest first: [(B,D,r,r,d0), ..., (B,D/8,r/8,r/8,d3)]."""
  dims: Tuple[int, ...]
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  @nn.compact
  def __call__(self, x, t, v):
    d0, d1, d2, d3 = self.dims
    t, v = t[:, None, None, None, :], v[:, None, None, None, :]
    B = lambda out, stride, name: _Block3D(out, stride, dtype=self.dtype, lowering=self.lowering, name=name)
    x0 = conv(d0, 3, ndim=3, name='conv0', dtype=self.dtype, lowering=self.lowering)(x)
    x1 = B(d1, 1, 'conv2')(B(d1, 2, 'conv1')(x0, t, v), t, v)
    x2 = B(d2, 1, 'conv4')(B(d2, 2, 'conv3')(x1, t, v), t, v)
    x3 = B(d3, 1, 'conv6')(B(d3, 2, 'conv5')(x2, t, v), t, v)
    x2 = _Block3D(d2, up=True, dtype=self.dtype, lowering=self.lowering, name='up0')(x3, t, v) + x2
    x1 = _Block3D(d1, up=True, dtype=self.dtype, lowering=self.lowering, name='up1')(x2, t, v) + x1
    x0 = _Block3D(d0, up=True, dtype=self.dtype, lowering=self.lowering, name='up2')(x1, t, v) + x0
    return (x0, x1, x2, x3)


class SpatialVolumeNet(nn.Module):
  """SpatialVolumeNet: `spatial_volume(...)` and `frustum_volumes(...)` (use via `apply(method=...)`)."""
  config: VolumeConfig
  view_num: int = 16
  dtype: Dtype = jnp.float32
  lowering: Lowering = TUNED

  def setup(self):
    c = self.config
    lw = self.lowering
    self.target_encoder = NoisyTargetViewEncoder(c.target_encoder_run_dim, c.target_encoder_output_dim, self.dtype, lw)
    self.spatial_volume_feats = SpatialTime3DNet(tuple(c.spatial_net_dims), self.dtype, lw)
    self.frustum_volume_feats = FrustumTV3DNet(tuple(c.frustum_net_dims), self.dtype, lw)

  def __call__(self, x, t_embed, v_embed, poses, Ks):
    vol = self.spatial_volume(x, t_embed, v_embed, poses, Ks)
    return self.frustum_volumes(vol, t_embed, v_embed, poses, Ks)

  def spatial_volume(self, x, t_embed, v_embed, poses, Ks):
    """construct_spatial_volume.  x [B, N, h, w, 4], t_embed [B, T], v_embed [B, N, 4] -> [B, V, V, V, C]."""
    c = self.config
    b, n, hh, ww, _ = x.shape
    feats = self.target_encoder(x.reshape(b * n, hh, ww, -1), jnp.repeat(t_embed, n, axis=0),
                                v_embed.reshape(b * n, -1))                       # BN h w C
    V = c.spatial_volume_size
    grid = project_to_grid(jnp.broadcast_to(spatial_grid(V, c.spatial_volume_length), (n, V ** 3, 3)),
                           Ks, poses, ww, c.input_image_size)                        # N V^3 2
    grid = jnp.broadcast_to(grid[None], (b, n) + grid.shape[1:]).reshape(b * n, V ** 3, 2)
    unproj = grid_sample_2d(feats, grid)                                             # BN V^3 C
    C = unproj.shape[-1]
    # stack over views then fold views into channels: channel index = view * C + c (torch .view(B, N*C, ...))
    unproj = unproj.reshape(b, n, V, V, V, C).transpose(0, 2, 3, 4, 1, 5).reshape(b, V, V, V, n * C)
    return self.spatial_volume_feats(unproj, t_embed)

  def frustum_volumes(self, spatial_volume, t_embed, v_embed, poses, Ks):
    """construct_view_frustum_volume for all N target views.

    spatial_volume [B, V, V, V, C] -> tuple of 4 levels, each [B*N, D_i, r_i, r_i, C_i] (finest first).
    """
    c = self.config
    b = spatial_volume.shape[0]
    n = poses.shape[0]
    size = c.input_image_size // 8
    near = c.default_origin_depth - c.frustum_volume_length
    far = c.default_origin_depth + c.frustum_volume_length
    xyz, _ = frustum_points(c.frustum_volume_depth, size, c.input_image_size, Ks, poses, near, far)
    grid = xyz / c.spatial_volume_length                                              # N D h w 3
    # sample each batch item's volume at the N frusta: vmap over batch, views folded into the grid
    feats = jax.vmap(lambda vol: grid_sample_3d(vol[None], grid.reshape(1, -1, 3))[0])(spatial_volume)
    feats = feats.reshape((b * n,) + grid.shape[1:4] + (spatial_volume.shape[-1],))
    t_ = jnp.repeat(t_embed, n, axis=0)
    v_ = v_embed.reshape(b * n, -1)
    return self.frustum_volume_feats(feats, t_, v_)
