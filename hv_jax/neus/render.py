"""NeuS volume rendering of HarmonyView (`renderer/renderer.py` NeuSRenderer) as pure functions on ray batches.

Rays are [R, 3] (`rays_o`, `rays_d`), depths [R, S], per-sample features on the last axis. All functions
are jit-able with `cfg` (a frozen `NeuSConfig`) static.

Differences from the original that do not change results:
- the original evaluates the networks only at samples inside the cube |x| <= default_side_length and
  leaves zeros elsewhere; here every sample is evaluated and the outside ones are zeroed with `where`;
- the original splits `render` into chunks of train/test_batch_num rays; every ray is independent, so
  `render` takes any batch (use `render_chunked` to bound memory on large batches);
- the perturbation draw `torch.rand([R, 1])` of sample_depth is an argument (`perturb_u`, uniform [0, 1)).
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.neus import fields
from hv_jax.neus.fields import NeuSConfig, Params


def near_far_from_sphere(rays_o, rays_d, radius: float = float(np.sqrt(3) / 2)):
  """[R, 1] near / far where the ray passes closest to the origin, -/+ radius."""
  a = jnp.sum(rays_d ** 2, axis=-1, keepdims=True)
  b = jnp.sum(rays_o * rays_d, axis=-1, keepdims=True)
  mid = -b / a
  return mid - radius, mid + radius


def near_far_in_cube(rays_o, rays_d, near, far, side_length: float = 0.6):
  """Clips [near, far] to the ray's overlap with the cube |x_i| <= side_length (samples outside it contribute
  nothing in NeuS); a ray that misses the cube keeps a zero-length interval at `near`."""
  inv = 1.0 / jnp.where(jnp.abs(rays_d) < 1e-9, 1e-9, rays_d)
  t0 = (-side_length - rays_o) * inv
  t1 = (side_length - rays_o) * inv
  tmin = jnp.max(jnp.minimum(t0, t1), -1, keepdims=True)
  tmax = jnp.min(jnp.maximum(t0, t1), -1, keepdims=True)
  n2 = jnp.maximum(near, tmin)
  f2 = jnp.minimum(far, tmax)
  return n2, jnp.maximum(f2, n2 + 1e-4)


def inner_mask(points, side_length: float = 0.6):
  """get_inner_mask: all |x_i| <= side_length."""
  return jnp.all(jnp.abs(points) <= side_length, axis=-1)


def anneal_ratio(step, anneal_end: int):
  """get_anneal_val: min(1, step / anneal_end) (1 when anneal_end < 0)."""
  if anneal_end < 0:
    return jnp.float32(1.0)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / anneal_end)


def _cumprod_transmittance(alpha):
  """alpha * cumprod([1, 1 - alpha + 1e-7])[:-1] along the last axis."""
  ones = jnp.ones(alpha.shape[:-1] + (1,), alpha.dtype)
  t = jnp.cumprod(jnp.concatenate([ones, 1.0 - alpha + 1e-7], -1), axis=-1)[..., :-1]
  return alpha * t


def sample_pdf(bins, weights, n_samples: int):
  """Deterministic inverse-CDF sampling of NeRF (sample_pdf(det=True)); bins [R, K], weights [R, K-1]."""
  weights = weights + 1e-5
  pdf = weights / jnp.sum(weights, -1, keepdims=True)
  cdf = jnp.cumsum(pdf, -1)
  cdf = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf], -1)
  u = jnp.asarray(np.linspace(0.5 / n_samples, 1.0 - 0.5 / n_samples, n_samples), cdf.dtype)
  u = jnp.broadcast_to(u, cdf.shape[:-1] + (n_samples,))
  search = jnp.vectorize(lambda c, v: jnp.searchsorted(c, v, side='right'), signature='(k),(n)->(n)')
  inds = search(cdf, u)
  below = jnp.maximum(0, inds - 1)
  above = jnp.minimum(cdf.shape[-1] - 1, inds)
  cdf0 = jnp.take_along_axis(cdf, below, -1)
  cdf1 = jnp.take_along_axis(cdf, above, -1)
  bins0 = jnp.take_along_axis(bins, below, -1)
  bins1 = jnp.take_along_axis(bins, above, -1)
  denom = cdf1 - cdf0
  denom = jnp.where(denom < 1e-5, jnp.ones_like(denom), denom)
  t = (u - cdf0) / denom
  return bins0 + t * (bins1 - bins0)


def upsample(rays_o, rays_d, z_vals, sdf, n_importance: int, inv_s, side_length: float = 0.6):
  """NeuSRenderer.upsample: n_importance new depths [R, n_importance] from the SDF at z_vals, fixed inv_s."""
  pts = rays_o[:, None, :] + rays_d[:, None, :] * z_vals[..., :, None]
  inner = inner_mask(pts, side_length)
  inside = inner[:, :-1] | inner[:, 1:]
  prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]
  prev_z, next_z = z_vals[:, :-1], z_vals[:, 1:]
  mid_sdf = (prev_sdf + next_sdf) * 0.5
  cos_val = (next_sdf - prev_sdf) / (next_z - prev_z + 1e-5)
  prev_cos = jnp.concatenate([jnp.zeros_like(cos_val[:, :1]), cos_val[:, :-1]], -1)
  cos_val = jnp.minimum(prev_cos, cos_val)
  cos_val = jnp.clip(cos_val, -1e3, 0.0) * inside
  dist = next_z - prev_z
  prev_esti = mid_sdf - cos_val * dist * 0.5
  next_esti = mid_sdf + cos_val * dist * 0.5
  prev_cdf = jax.nn.sigmoid(prev_esti * inv_s)
  next_cdf = jax.nn.sigmoid(next_esti * inv_s)
  alpha = (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)
  weights = _cumprod_transmittance(alpha)
  return jax.lax.stop_gradient(sample_pdf(z_vals, weights, n_importance))


def cat_z_vals(sdf_params: Params, rays_o, rays_d, z_vals, new_z_vals, sdf, cfg: NeuSConfig, last: bool = False):
  """NeuSRenderer.cat_z_vals: merge and sort depths; evaluate the SDF at the new ones (unless `last`)."""
  z = jnp.concatenate([z_vals, new_z_vals], -1)
  index = jnp.argsort(z, axis=-1, stable=True)
  z = jnp.take_along_axis(z, index, -1)
  if not last:
    pts = rays_o[:, None, :] + rays_d[:, None, :] * new_z_vals[..., :, None]
    new_sdf = fields.sdf(sdf_params, pts, cfg.sdf)
    sdf = jnp.take_along_axis(jnp.concatenate([sdf, new_sdf], -1), index, -1)
  return z, sdf


def coarse_z_vals(near, far, n_samples: int, perturb_u=None):
  """near + (far - near) * linspace(0, 1, n) [+ (u - 0.5) * 2 / n], [R, n]."""
  lin = jnp.asarray(np.linspace(0.0, 1.0, n_samples), near.dtype)
  z = near + (far - near) * lin[None, :]
  if perturb_u is not None:
    z = z + (perturb_u - 0.5) * 2.0 / n_samples
  return z


def sample_depth(sdf_params: Params, rays_o, rays_d, near, far, cfg: NeuSConfig, perturb_u=None):
  """NeuSRenderer.sample_depth: n_samples coarse depths + up_sample_steps hierarchical rounds of
  n_importance // up_sample_steps (inv_s = 64 * 2**i), sorted, [R, n_samples + n_importance], no gradient."""
  sdf_params = jax.lax.stop_gradient(sdf_params)
  z = coarse_z_vals(near, far, cfg.n_samples, perturb_u)
  pts = rays_o[:, None, :] + rays_d[:, None, :] * z[..., :, None]
  s = fields.sdf(sdf_params, pts, cfg.sdf)
  n_up = cfg.n_importance // cfg.up_sample_steps
  for i in range(cfg.up_sample_steps):
    new_z = upsample(rays_o, rays_d, z, s, n_up, 64.0 * 2 ** i, cfg.default_side_length)
    z, s = cat_z_vals(sdf_params, rays_o, rays_d, z, new_z, s, cfg, last=(i + 1 == cfg.up_sample_steps))
  return jax.lax.stop_gradient(z)


def render_core(params: Params, rays_o, rays_d, z_vals, cfg: NeuSConfig, cos_anneal_ratio=1.0) -> Dict[str, jnp.ndarray]:
  """render_impl after sample_depth: alpha from the SDF's logistic CDF at section mid-points.

  Returns rgb [R, 3] (white background), mask [R, 1] (sum of weights), normal [R, 3],
  gradient_error [R, S] ((|grad sdf| - 1)^2, 0 outside), inner_mask [R, S] bool, and (not in the
  original's outputs) weights [R, S] and z_vals [R, S].
  """
  r, n = z_vals.shape
  dists = z_vals[..., 1:] - z_vals[..., :-1]
  dists = jnp.concatenate([dists, dists[..., -1:]], -1)
  mid_z = z_vals + dists * 0.5
  points = rays_o[:, None, :] + rays_d[:, None, :] * mid_z[..., :, None]
  inner = inner_mask(points, cfg.default_side_length)
  dirs = fields.normalize(jnp.broadcast_to(rays_d[:, None, :], (r, n, 3)))

  # compute_sdf_alpha
  out, gradients = fields.sdf_and_gradient(params['sdf'], points, cfg.sdf)
  sdf, feature = out[..., 0], out[..., 1:]
  inv_s = fields.inv_s(params['variance'])
  true_cos = jnp.sum(dirs * gradients, -1)
  iter_cos = -(jax.nn.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) +
               jax.nn.relu(-true_cos) * cos_anneal_ratio)
  next_sdf = sdf + iter_cos * dists * 0.5
  prev_sdf = sdf - iter_cos * dists * 0.5
  prev_cdf = jax.nn.sigmoid(prev_sdf * inv_s)
  next_cdf = jax.nn.sigmoid(next_sdf * inv_s)
  alpha = jnp.clip((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5), 0.0, 1.0)

  color = fields.color_forward(params['color'], points, gradients, -dirs, feature, cfg.color)
  grad_norm = jnp.sqrt(jnp.sum(gradients * gradients, -1))
  gradient_error = (grad_norm - 1.0) ** 2
  normal = fields.normalize(gradients)

  m = inner[..., None]
  alpha = jnp.where(inner, alpha, 0.0)
  color = jnp.where(m, color, 0.0)
  gradient_error = jnp.where(inner, gradient_error, 0.0)
  normal = jnp.where(m, normal, 0.0)

  weights = _cumprod_transmittance(alpha)
  mask = jnp.sum(weights, axis=1, keepdims=True)
  rgb = jnp.sum(color * weights[..., None], axis=1) + (1 - mask)
  normal = jnp.sum(normal * weights[..., None], axis=1)
  return {'rgb': rgb, 'gradient_error': gradient_error, 'inner_mask': inner, 'normal': normal,
          'mask': mask, 'weights': weights, 'z_vals': z_vals}


def depths(params: Params, rays_o, rays_d, cfg: NeuSConfig, *, is_train: bool = False, perturb_u=None):
  """The sample depths [R, n_samples + n_importance] render_impl uses (no gradient)."""
  near, far = near_far_from_sphere(rays_o, rays_d, cfg.default_radius)
  if cfg.clip_to_cube:
    near, far = near_far_in_cube(rays_o, rays_d, near, far, cfg.default_side_length)
  if is_train and perturb_u is None:
    raise ValueError('render(is_train=True) needs perturb_u: uniform [R, 1] draws in [0, 1)')
  return sample_depth(params['sdf'], rays_o, rays_d, near, far, cfg, perturb_u if is_train else None)


def inner_count(rays_o, rays_d, z_vals, cfg: NeuSConfig):
  """Number of samples inside the cube (render_core's inner_mask), from the depths alone."""
  dists = z_vals[..., 1:] - z_vals[..., :-1]
  dists = jnp.concatenate([dists, dists[..., -1:]], -1)
  points = rays_o[:, None, :] + rays_d[:, None, :] * (z_vals + dists * 0.5)[..., :, None]
  return jnp.sum(inner_mask(points, cfg.default_side_length).astype(jnp.float32))


def render(params: Params, rays_o, rays_d, cfg: NeuSConfig, *, is_train: bool = False, step=0,
           perturb_u=None, z_vals=None) -> Dict[str, jnp.ndarray]:
  """NeuSRenderer.render_impl. Training mode perturbs the coarse depths by (perturb_u - 0.5) * 2 / n_samples
  (`perturb_u` [R, 1] uniform in [0, 1), required) and anneals cos with min(1, step / anneal_end);
  evaluation uses no perturbation and ratio 1. `z_vals` skips the depth sampling (already done)."""
  if z_vals is None:
    z_vals = depths(params, rays_o, rays_d, cfg, is_train=is_train, perturb_u=perturb_u)
  ratio = anneal_ratio(step, cfg.anneal_end) if is_train else 1.0
  return render_core(params, rays_o, rays_d, z_vals, cfg, ratio)


render_jit = jax.jit(render, static_argnames=('cfg', 'is_train'))


def render_chunked(params: Params, rays_o, rays_d, cfg: NeuSConfig, chunk: int = 4096, *, is_train: bool = False,
                   step=0, perturb_u=None):
  """`render` over chunks of `chunk` rays (BaseRenderer.render's batching), jitted per chunk shape
  (a last, shorter chunk compiles once more)."""
  outs = []
  for i in range(0, rays_o.shape[0], chunk):
    u = None if perturb_u is None else perturb_u[i:i + chunk]
    outs.append(render_jit(params, rays_o[i:i + chunk], rays_d[i:i + chunk], cfg, is_train=is_train, step=step,
                           perturb_u=u))
  return {k: jnp.concatenate([o[k] for o in outs], 0) for k in outs[0]}


def loss_sums(outputs: Dict[str, jnp.ndarray], rgb_gt, mask_gt, cfg: NeuSConfig) -> Dict[str, jnp.ndarray]:
  """The additive parts of render_with_loss's loss over a ray batch (sums over rays), so a batch can be
  processed in chunks and combined exactly (`combine_losses`)."""
  rgb_pr = outputs['rgb']
  if cfg.rgb_loss == 'soft_l1':
    rgb = jnp.sum(jnp.sqrt(jnp.sum((rgb_gt - rgb_pr) ** 2, -1) + 0.001))
  elif cfg.rgb_loss == 'mse':
    rgb = jnp.sum(jnp.mean((rgb_pr - rgb_gt) ** 2, -1))
  else:
    raise NotImplementedError(cfg.rgb_loss)
  inner = outputs['inner_mask'].astype(outputs['gradient_error'].dtype)
  sums = {'rgb': rgb, 'eik_num': jnp.sum(outputs['gradient_error'] * inner), 'eik_den': jnp.sum(inner + 1e-5)}
  if cfg.lambda_mask_loss > 0 and cfg.use_mask:
    sums['mask'] = jnp.sum((outputs['mask'] - mask_gt) ** 2)
  return sums


def combine_losses(sums: Dict[str, jnp.ndarray], n_rays: int, cfg: NeuSConfig):
  """(total, {'eikonal', 'rendering', 'mask'}) from `loss_sums` of all rays of the batch.

  rendering: soft-L1 mean(sqrt(|rgb_gt - rgb|^2 + 1e-3)) (or elementwise MSE for rgb_loss='mse');
  eikonal: sum(gradient_error * inner) / sum(inner + 1e-5) -- the 1e-5 is added per sample, as the original;
  mask: MSE(mask, mask_gt), included when use_mask and lambda_mask_loss > 0.
  """
  rgb_loss = sums['rgb'] / n_rays
  eikonal = sums['eik_num'] / sums['eik_den']
  loss = rgb_loss * cfg.lambda_rgb_loss + eikonal * cfg.lambda_eikonal_loss
  terms = {'eikonal': eikonal, 'rendering': rgb_loss}
  if 'mask' in sums:
    mask_loss = sums['mask'] / n_rays
    loss = loss + mask_loss * cfg.lambda_mask_loss
    terms['mask'] = mask_loss
  return loss, terms


def losses(outputs: Dict[str, jnp.ndarray], rgb_gt, mask_gt, cfg: NeuSConfig):
  """render_with_loss's loss from render outputs: (total, {'eikonal', 'rendering', 'mask'})."""
  return combine_losses(loss_sums(outputs, rgb_gt, mask_gt, cfg), outputs['rgb'].shape[0], cfg)


def render_with_loss(params: Params, batch: Dict[str, jnp.ndarray], cfg: NeuSConfig, *, is_train: bool,
                     step=0, perturb_u=None):
  """NeuSRenderer.render_with_loss on a ray batch {'rays_o', 'rays_d', 'rgb', 'mask'}: (loss, terms, outputs)."""
  outputs = render(params, batch['rays_o'], batch['rays_d'], cfg, is_train=is_train, step=step,
                   perturb_u=perturb_u)
  loss, terms = losses(outputs, batch['rgb'], batch.get('mask'), cfg)
  return loss, terms, outputs
