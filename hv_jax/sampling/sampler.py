"""The HarmonyView sampler: conditioning, the guided denoise step, and the DDIM loop inside jit.

Pure functions of (params, inputs, keys, scales, eta). Shapes: B instances, N = 16 views, latents
channels-last [B, N, h, w, 4]; inside the UNet the views are folded into rows (M = B*N) and the guidance
branches are one `vmap` (see `guidance.py`), so a step is ONE batched network evaluation.

Randomness (per instance, independent of batch composition, device count and the other inputs of a run):
  key_i = fold_in(fold_in(PRNGKey(seed), input_id), instance_id)          (`instance_keys`)
  input_id = CRC-32 of the input's name                                   (`input_id_of`)
  posterior draw of the input latent: normal(fold_in(key_i, 0))
  x_T:                                normal(fold_in(key_i, 1))
  noise of loop step s (s = 0 first):  normal(fold_in(fold_in(key_i, 2), s))
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.models.config import ModelConfig
from hv_jax.models.syncdreamer import SyncDreamer
from hv_jax.sampling import guidance, modes, schedule
from hv_jax.sampling.ddim import DDIMTables, ddim_update

_POSTERIOR, _X_T, _STEPS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static sampler settings (anything that changes shapes or the traced program). Scales, eta and seeds are
  NOT here: they are traced arrays, so sweeping them never recompiles."""
  steps: int = 50
  ddim_spacing: str = 'uniform'        # 'uniform' (the original's; step counts dividing 1000) | 'uniform_exact'
  guidance: str = 'harmonyview'        # a mode of modes.MODES: 'none' | 'cfg' | 'harmonyview'
  uc2_concat_scale: float = 4.0        # original quirk: uc2 sees 4 * x_input (guidance.py); 1.0 = unscaled
  latent: str = 'sample'               # input latent: 'sample' (posterior draw, the original) or 'mode'
  dtype: str = 'float32'               # UNet / volume compute dtype: 'float32' | 'bfloat16' (params stay float32)
  view_chunk: int = 0                  # rows (views x instances) per network call; 0 = all at once
  remat: bool = False                  # rematerialise UNet blocks
  decode_chunk: int = 1                # views decoded per VAE call (sequential lax.map over views)

  def __post_init__(self):
    modes.mode(self.guidance)                                   # ValueError (one line) for an unknown mode
    if self.latent not in ('sample', 'mode'):
      raise ValueError(f"latent must be 'sample' or 'mode', got {self.latent!r}")
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    schedule.ddim_timesteps(self.steps, self.ddim_spacing)     # ScheduleError (one line) if not exactly `steps`
    if self.view_chunk < 0:
      raise ValueError(f'view_chunk must be >= 0 (0 = all rows at once), got {self.view_chunk}')
    if self.decode_chunk < 1:
      raise ValueError(f'decode_chunk must be >= 1, got {self.decode_chunk}')

  @property
  def num_scales(self) -> int:
    return modes.mode(self.guidance).num_scales


def input_id_of(name: str) -> int:
  """An input's id: the CRC-32 of its name, so an input keeps its noise when other inputs are added or removed
  (an index in the input list would shift). Only a PRNG fold-in: a collision merely shares noise."""
  return zlib.crc32(name.encode('utf-8'))


def instance_keys(seed: int, input_ids, instance_ids):
  """key_i = fold_in(fold_in(PRNGKey(seed), input_id), instance_id) for paired id arrays -> [B] keys."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))(
      jnp.asarray(input_ids, jnp.uint32), jnp.asarray(instance_ids, jnp.uint32))


def batch_arrays(seed: int, rows) -> list:
  """The host arrays of one batch, in the order `Sampler.sample` takes them, from rows
  (image [S, S, 3] in [-1, 1], elevation in radians, input_id, instance_id, scales):
  [images [B, S, S, 3], elevations [B] float32, keys [B] (`instance_keys`), scales [B, num_scales] float32]."""
  images, elevations, input_ids, instance_ids, scales = zip(*rows)
  keys = instance_keys(seed, input_ids, instance_ids)
  return [np.stack(images), np.asarray(elevations, np.float32), np.asarray(keys), np.asarray(scales, np.float32)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Condition:
  """The input-view condition r of one batch: CLIP embedding, input latent (scaled), viewpoint embeddings."""
  clip_embed: jax.Array   # [B, 1, 768]
  x_input: jax.Array      # [B, h, w, 4]   (x 0.18215)
  v_embed: jax.Array      # [B, N, 4]


class Sampler:
  """Binds a model config and sampler config to the pure functions below."""

  def __init__(self, model_config: ModelConfig, config: SamplerConfig = SamplerConfig()):
    self.model_config = model_config
    self.config = config
    dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
    self.model = SyncDreamer(model_config, dtype=dtype, remat=config.remat)
    self.tables = DDIMTables.make(config.steps, config.ddim_spacing)

  def _apply(self, params, method, *args):
    return self.model.apply({'params': params}, *args, method=method)

  # ------------------------------------------------------------------ conditioning (prepare())
  def condition(self, params, images, elevations, keys=None, posterior_noise=None) -> Condition:
    """images [B, H, W, 3] in [-1, 1], elevations [B] radians -> Condition.

    The input latent is a posterior draw (the original's encode_first_stage(sample=True)), with noise
    from `posterior_noise` if given, else from fold_in(key_i, 0); or the posterior mode if latent='mode'.
    """
    c = self.model_config
    moments = self._apply(params, SyncDreamer.vae_encode, images)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    if self.config.latent == 'sample':
      std = jnp.exp(0.5 * jnp.clip(logvar, -30., 20.))
      if posterior_noise is None:
        posterior_noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, _POSTERIOR), mean.shape[1:]))(keys)
      latent = mean + std * posterior_noise
    else:
      latent = mean
    return Condition(clip_embed=self._apply(params, SyncDreamer.encode_image, images),
                     x_input=latent * c.vae.scale_factor,
                     v_embed=self._apply(params, SyncDreamer.viewpoint_embedding, elevations))

  # ------------------------------------------------------------------ eps of all branches
  def branch_eps(self, params, x_t, t, cond: Condition, multipliers, share_volume: bool = True):
    """eps of every guidance branch: x_t [B, N, h, w, 4], t [B] -> [K, B, N, h, w, 4].

    The volumes and the projected context are built once from x_t and shared by all branches (branches
    only scale them), as the original does; share_volume=False rebuilds them per branch (for tests).
    """
    b, n = x_t.shape[:2]

    def features(x):
      t_embed = self._apply(params, SyncDreamer.embed_time, t)
      vol = self._apply(params, SyncDreamer.spatial_volume_feats, x, t_embed, cond.v_embed)
      return self._apply(params, SyncDreamer.frustum_volumes, vol, t_embed, cond.v_embed)

    ctx = self._apply(params, SyncDreamer.target_context, cond.clip_embed, cond.v_embed)   # [B*N, 1, 768]
    rows = x_t.reshape((b * n,) + x_t.shape[2:])
    t_rows = jnp.repeat(t, n)
    concat = jnp.repeat(cond.x_input, n, axis=0)
    eps_fn = lambda *a: self._apply(params, SyncDreamer.eps, *a)

    if share_volume:
      vols = features(x_t)
      eps = self._chunked(lambda r, tt, c, v, xc: guidance.branch_eps(eps_fn, r, tt, c, v, xc, multipliers),
                          rows, t_rows, ctx, vols, concat)
    else:  # every branch recomputes its own volumes from x_t
      def one(m):
        return guidance.branch_eps(eps_fn, rows, t_rows, ctx, features(x_t), concat, m[None])[0]
      eps = jax.lax.map(one, multipliers)
    return eps.reshape((eps.shape[0], b, n) + eps.shape[2:])

  def _chunked(self, fn, rows, t_rows, ctx, vols, concat):
    """fn over row chunks of size view_chunk (sequential lax.map), or all rows at once."""
    m = rows.shape[0]
    c = self.config.view_chunk
    if c <= 0 or c >= m:
      return fn(rows, t_rows, ctx, vols, concat)
    if m % c:
      raise ValueError(f'view_chunk={c} must divide the {m} rows (instances x views) of a step')
    split = lambda a: a.reshape((m // c, c) + a.shape[1:])
    out = jax.lax.map(lambda args: fn(*args), (split(rows), split(t_rows), split(ctx),
                                               tuple(split(v) for v in vols), split(concat)))
    return jnp.moveaxis(out, 0, 1).reshape((out.shape[1], m) + out.shape[3:])

  def guided_eps(self, params, x_t, t, cond: Condition, scales):
    """The guided eps (Eq. 5 / Eq. 9). scales [B, num_scales] (per instance) -> [B, N, h, w, 4]."""
    mult = guidance.branch_scales(self.config.guidance, self.config.uc2_concat_scale)
    eps = self.branch_eps(params, x_t, t, cond, mult)
    s = jnp.asarray(scales, jnp.float32)
    s = s.reshape(s.shape[:1] + (1, 1, 1, 1) + s.shape[1:])      # broadcast per instance over views/pixels
    return guidance.combine(self.config.guidance, eps, jnp.moveaxis(s, -1, 0))

  def denoise_step(self, params, x_t, cond: Condition, index, scales, eta, noise):
    """SyncDDIMSampler.denoise_apply at DDIM index `index` (traced)."""
    b = x_t.shape[0]
    t = jnp.full((b,), self.tables.timesteps[index], jnp.int32)
    eps = self.guided_eps(params, x_t, t, cond, scales)
    return ddim_update(x_t, eps, self.tables, index, eta, noise)

  # ------------------------------------------------------------------ the loop
  def sample_latents(self, params, cond: Condition, x_T, scales, eta, *, keys=None, noises=None,
                     return_intermediates: bool = False, progress: Optional[Callable[[int], None]] = None):
    """Runs the S DDIM steps inside one lax.scan, from x_T [B, N, h, w, 4].

    Step noise is noises[s] if `noises` [S-1, B, N, h, w, 4] is given (parity with recorded noise), else drawn
    from each instance's key. Returns x_0 (and x after every step if return_intermediates).
    """
    S = self.tables.num_steps

    def body(x, s):
      index = S - 1 - s
      if noises is not None:
        z = noises[jnp.minimum(s, noises.shape[0] - 1)] if noises.shape[0] else jnp.zeros_like(x)
      else:
        z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, _STEPS), s),
                                                 x.shape[1:]))(keys)
      x = self.denoise_step(params, x, cond, index, scales, eta, z)
      if progress is not None:
        jax.debug.callback(progress, s)
      return x, (x if return_intermediates else None)

    x0, inter = jax.lax.scan(body, x_T, jnp.arange(S))
    return (x0, inter) if return_intermediates else x0

  def initial_noise(self, keys):
    n, h = self.model_config.view_num, self.model_config.latent_size
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, _X_T), (n, h, h, 4)))(keys)

  def decode(self, params, latents):
    """decode_first_stage per view: [B, N, h, w, 4] -> images [B, N, H, W, 3] in [-1, 1] (unclipped)."""
    b, n = latents.shape[:2]
    c = max(1, min(self.config.decode_chunk, n))
    if n % c:
      raise ValueError(f'decode_chunk={c} must divide the {n} views')
    z = jnp.moveaxis(latents, 1, 0).reshape((n // c, c * b) + latents.shape[2:])   # view-major chunks
    imgs = jax.lax.map(lambda zz: self._apply(params, SyncDreamer.vae_decode, zz), z)
    imgs = imgs.reshape((n, b) + imgs.shape[2:])
    return jnp.moveaxis(imgs, 0, 1)

  def sample(self, params, images, elevations, keys, scales, eta, progress=None):
    """Full sampling: images [B, H, W, 3], elevations [B] rad, keys [B], scales [B, k], eta scalar ->
    16 views [B, N, H, W, 3] in [-1, 1] (clipped, as the original saves them)."""
    cond = self.condition(params, images, elevations, keys)
    x0 = self.sample_latents(params, cond, self.initial_noise(keys), scales, eta, keys=keys, progress=progress)
    return jnp.clip(self.decode(params, x0), -1., 1.)
