"""The whole SyncDreamer network (`SyncMultiviewDiffusion` of the original) as one Flax module.

Param tree (mirrors the PyTorch state_dict prefixes, see `convert/names.py`):
  time_embed_0, time_embed_2   Linear-SiLU-Linear on the 256-d sinusoid       (time_embed.*)
  cc_projection                Linear(768 + 4 -> 768)                           (cc_projection.*)
  spatial_volume               SpatialVolumeNet                                 (spatial_volume.*)
  unet                         DepthWiseAttention UNet                          (model.diffusion_model.*)
  vae                          AutoencoderKL                                    (first_stage_model.*)
  clip                         OpenAI CLIP ViT image tower                      (clip_image_encoder.model.visual.*)
  poses [N,3,4], Ks [N,3,3], azimuth [N]   camera buffers of the checkpoint     (poses, Ks, azimuth)

Every method is pure; call them with `model.apply({'params': p}, ..., method=...)` or through the
`SyncDreamerFns` helpers in `hv_jax.models.api`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from hv_jax.models import cameras
from hv_jax.models.clip import CLIPVisionTower, preprocess as clip_preprocess
from hv_jax.models.config import ModelConfig
from hv_jax.models.layers import dense, timestep_embedding
from hv_jax.models.unet import DepthWiseAttentionUNet
from hv_jax.models.vae import AutoencoderKL
from hv_jax.models.volume import SpatialVolumeNet

Dtype = Any


class SyncDreamer(nn.Module):
  """`config.conv_impl` / `attn_impl` choose the lowering of every conv and attention layer; 'auto' is
  resolved here, for the backend the model is built on (`ModelConfig.lowering`). The CLIP tower's one conv
  is the strided patchify, a `lax.conv` in every lowering."""
  config: ModelConfig
  dtype: Dtype = jnp.float32   # compute dtype of the UNet and volume nets (params stay float32)
  remat: bool = False          # rematerialise UNet blocks (memory for compute)

  def setup(self):
    c = self.config
    lw = c.lowering()
    self.time_embed_0 = dense(c.time_embed_dim)
    self.time_embed_2 = dense(c.time_embed_dim)
    self.cc_projection = dense(c.unet.context_dim)
    self.spatial_volume = SpatialVolumeNet(c.volume, c.view_num, self.dtype, lw)
    self.unet = DepthWiseAttentionUNet(c.unet, self.dtype, self.remat, lw)
    self.vae = AutoencoderKL(c.vae, lowering=lw)
    self.clip = CLIPVisionTower(c.clip)
    K, poses, az = cameras.default_cameras(c.view_num, c.image_size)
    self.poses = self.param('poses', lambda _: jnp.asarray(poses))
    self.Ks = self.param('Ks', lambda _: jnp.asarray(K))
    self.azimuth = self.param('azimuth', lambda _: jnp.asarray(az))

  # ---------------------------------------------------------------- conditioning
  def embed_time(self, t):
    """SyncMultiviewDiffusion.embed_time: t [B] int -> [B, 256]."""
    e = timestep_embedding(t, self.config.time_embed_dim)
    return self.time_embed_2(nn.silu(self.time_embed_0(e)))

  def viewpoint_embedding(self, elevation_in):
    """get_viewpoint_embedding: elevation_in [B] radians -> [B, N, 4] = [d_e, sin d_a, cos d_a, 0].

    Zero123's convention, kept by the original: elevations enter negated, d_e = (-e_target) - (-e_in).
    """
    d_e = np.float32(-np.deg2rad(self.config.target_elevation_deg)) + jnp.asarray(elevation_in, jnp.float32)
    d_a = self.azimuth - self.azimuth[0]
    b, n = d_e.shape[0], d_a.shape[0]
    d_e = jnp.broadcast_to(d_e[:, None], (b, n))
    d_a = jnp.broadcast_to(d_a[None], (b, n))
    return jnp.stack([d_e, jnp.sin(d_a), jnp.cos(d_a), jnp.zeros_like(d_a)], -1)

  def encode_image(self, image):
    """FrozenCLIPImageEmbedder.encode: image [B, H, W, 3] in [-1, 1] -> [B, 1, 768]."""
    return self.clip(clip_preprocess(image, self.config.clip))[:, None, :]

  def target_context(self, clip_embed, v_embed):
    """get_target_view_feats (clip part): cc_projection(cat(clip, v)) per view -> [B*N, 1, 768]."""
    b, n, _ = v_embed.shape
    clip_ = jnp.repeat(clip_embed, n, axis=0)                    # B*N, 1, 768
    v_ = v_embed.reshape(b * n, 1, -1)
    return self.cc_projection(jnp.concatenate([clip_, v_], -1))

  # ---------------------------------------------------------------- autoencoder
  def vae_encode(self, image):
    """AutoencoderKL.encode: image [B, H, W, 3] in [-1, 1] -> moments [B, h, w, 8]."""
    return self.vae.encode(image)

  def vae_decode(self, z):
    """decode_first_stage: scaled latent [B, h, w, 4] -> image [B, H, W, 3] (unclipped)."""
    return self.vae.decode(z / self.config.vae.scale_factor)

  # ---------------------------------------------------------------- volumes and UNet
  def spatial_volume_feats(self, x_t, t_embed, v_embed):
    """construct_spatial_volume: x_t [B, N, h, w, 4] -> [B, V, V, V, C]."""
    return self.spatial_volume.spatial_volume(x_t, t_embed, v_embed, self.poses, self.Ks)

  def frustum_volumes(self, spatial_volume, t_embed, v_embed):
    """construct_view_frustum_volume for all views -> 4 levels of [B*N, D_i, r_i, r_i, C_i]."""
    return self.spatial_volume.frustum_volumes(spatial_volume, t_embed, v_embed, self.poses, self.Ks)

  def eps(self, x_t, t, context, volumes, x_concat):
    """UNetWrapper.forward: x_t, x_concat [M, h, w, 4], t [M], context [M, 1, 768] -> eps [M, h, w, 4].

    As the original (`use_zero_123`, a Zero123 habit), the first 4 concat channels are divided by the
    VAE scale factor before concatenation.
    """
    xc = jnp.asarray(x_concat)
    if self.config.use_zero_123:
      xc = xc.at[..., :4].divide(self.config.vae.scale_factor)
    return self.unet(jnp.concatenate([x_t, xc.astype(x_t.dtype)], -1), t, context, volumes)

  def __call__(self, image, x_t, t, elevation_in):
    """Touches every submodule once (used by `init` / `jax.eval_shape`); returns eps [B*N, h, w, 4]."""
    b, n = x_t.shape[:2]
    moments = self.vae_encode(image)
    x_in = moments[..., :self.config.vae.embed_dim] * self.config.vae.scale_factor
    self.vae_decode(x_in)
    clip_embed = self.encode_image(image)
    t_embed = self.embed_time(t)
    v_embed = self.viewpoint_embedding(elevation_in)
    vols = self.frustum_volumes(self.spatial_volume_feats(x_t, t_embed, v_embed), t_embed, v_embed)
    ctx = self.target_context(clip_embed, v_embed)
    flat = x_t.reshape((b * n,) + x_t.shape[2:])
    return self.eps(flat, jnp.repeat(t, n), ctx, vols, jnp.repeat(x_in, n, axis=0))
