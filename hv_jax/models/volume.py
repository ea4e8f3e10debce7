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

from hv_jax.models.config import VolumeConfig
from hv_jax.models.layers import ConvTranspose3d, GroupNorm, conv, grid_sample_2d, grid_sample_3d

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
  """
  z = jnp.linspace(0., 1., depth, dtype=jnp.float32) * (far - near) + near
  ys, xs = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                        indexing='ij')
  pix = jnp.stack([xs, ys, jnp.ones_like(xs)], -1)                     # h w 3
  pts = pix[None] * z[:, None, None, None]                              # D h w 3
  inv = jnp.linalg.inv(projection_matrix(size / image_size, Ks, poses))  # N 4 4
  world = jnp.einsum('nij,dhwj->ndhwi', inv[:, :3, :3], pts) + inv[:, None, None, None, :3, 3]
  return world, z


# ----------------------------------------------------------------------------- networks

class ResBlockWithTV(nn.Module):
  """Image2DResBlockWithTV: x + conv(GN-SiLU-conv-GN-SiLU-conv)(x + t_proj(t) + v_proj(v))."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, v):
    dim = x.shape[-1]
    h = x + conv(dim, 1, name='time_embed', dtype=self.dtype)(t) + conv(dim, 1, name='view_embed', dtype=self.dtype)(v)
    h = conv(dim, 3, name='conv_2', dtype=self.dtype)(nn.silu(GroupNorm(8, name='conv_0')(h)))
    h = conv(dim, 3, name='conv_5', dtype=self.dtype)(nn.silu(GroupNorm(8, name='conv_3')(h)))
    return x + h


class NoisyTargetViewEncoder(nn.Module):
  """Encodes one noisy latent view [B, h, w, 4] with time [B, T] and view [B, V] embeddings."""
  run_dim: int = 16
  output_dim: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, v):
    t, v = t[:, None, None, :], v[:, None, None, :]
    x = conv(self.run_dim, 3, name='init_conv', dtype=self.dtype)(x)
    for i in range(3):
      x = ResBlockWithTV(self.dtype, name=f'out_conv{i}')(x, t, v)
    x = nn.silu(GroupNorm(8, name='final_out_0')(x))
    return conv(self.output_dim, 3, name='final_out_2', dtype=self.dtype)(x)


class _Block3D(nn.Module):
  """SpatialTimeBlock / FrustumTVBlock (and the Up variants): x + t(+v) projections, GN-SiLU, conv."""
  out_dim: int
  stride: int = 1
  up: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, v=None):
    d = x.shape[-1]
    x = x + conv(d, 1, ndim=3, name='t_conv', dtype=self.dtype)(t)
    if v is not None:
      x = x + conv(d, 1, ndim=3, name='v_conv', dtype=self.dtype)(v)
    # The original names the norm `bn` in the down blocks and `norm` in the up blocks.
    x = nn.silu(GroupNorm(8, name='norm' if self.up else 'bn')(x))
    if self.up:
      return ConvTranspose3d(self.out_dim, dtype=self.dtype, name='conv')(x)
    return conv(self.out_dim, 3, stride=self.stride, padding=1, ndim=3, name='conv', dtype=self.dtype)(x)


class SpatialTime3DNet(nn.Module):
  dims: Tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t):
    d0, d1, d2, d3 = self.dims
    t = t[:, None, None, None, :]
    B = lambda out, stride, name: _Block3D(out, stride, dtype=self.dtype, name=name)
    x = conv(d0, 3, ndim=3, name='init_conv', dtype=self.dtype)(x)
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
    x = conv4 + _Block3D(d2, up=True, dtype=self.dtype, name='conv7')(x, t)
    x = conv2 + _Block3D(d1, up=True, dtype=self.dtype, name='conv8')(x, t)
    return conv0 + _Block3D(d0, up=True, dtype=self.dtype, name='conv9')(x, t)


class FrustumTV3DNet(nn.Module):
  """Returns the frustum features at 4 resolutions, finest first: [(B,D,r,r,d0), ..., (B,D/8,r/8,r/8,d3)]."""
  dims: Tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, v):
    d0, d1, d2, d3 = self.dims
    t, v = t[:, None, None, None, :], v[:, None, None, None, :]
    B = lambda out, stride, name: _Block3D(out, stride, dtype=self.dtype, name=name)
    x0 = conv(d0, 3, ndim=3, name='conv0', dtype=self.dtype)(x)
    x1 = B(d1, 1, 'conv2')(B(d1, 2, 'conv1')(x0, t, v), t, v)
    x2 = B(d2, 1, 'conv4')(B(d2, 2, 'conv3')(x1, t, v), t, v)
    x3 = B(d3, 1, 'conv6')(B(d3, 2, 'conv5')(x2, t, v), t, v)
    x2 = _Block3D(d2, up=True, dtype=self.dtype, name='up0')(x3, t, v) + x2
    x1 = _Block3D(d1, up=True, dtype=self.dtype, name='up1')(x2, t, v) + x1
    x0 = _Block3D(d0, up=True, dtype=self.dtype, name='up2')(x1, t, v) + x0
    return (x0, x1, x2, x3)


class SpatialVolumeNet(nn.Module):
  """SpatialVolumeNet: `spatial_volume(...)` and `frustum_volumes(...)` (use via `apply(method=...)`)."""
  config: VolumeConfig
  view_num: int = 16
  dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.target_encoder = NoisyTargetViewEncoder(c.target_encoder_run_dim, c.target_encoder_output_dim, self.dtype)
    self.spatial_volume_feats = SpatialTime3DNet(tuple(c.spatial_net_dims), self.dtype)
    self.frustum_volume_feats = FrustumTV3DNet(tuple(c.frustum_net_dims), self.dtype)

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
