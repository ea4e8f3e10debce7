"""Per-view image metrics of HarmonyView's `eval_nvs.py`: white compositing, PSNR and SSIM, channels-last.

Every function takes [..., H, W, C] arrays (any leading dims: views, instances; pred and gt broadcast
against each other) and returns [...]. All are jittable; SSIM's `sigma` and `crop_border` (and a tuple
`data_range`) are Python values fixed at trace time.

eval_nvs.py, per 256x256 view: `color_map_forward` (uint8 -> float32 / 255, RGBA composited on white),
`compute_psnr_float` (PSNR with peak 1) and torchmetrics' `structural_similarity_index_measure(pred, gt)`
with its defaults (Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data_range=None). LPIPS is in
`hv_jax.metrics.lpips`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _broadcast(a, b, what):
  """float32 copies broadcast against each other (e.g. gt [V, H, W, 3] against pred [N, V, H, W, 3])."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  try:
    shape = jnp.broadcast_shapes(a.shape, b.shape)
  except ValueError:
    raise ValueError(f'{what}: shapes do not broadcast, {a.shape} vs {b.shape}') from None
  if a.ndim < 3 or b.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
    raise ValueError(f'{what}: expected [..., H, W, C] images of one size, got {a.shape} and {b.shape}')
  return jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)


def to_unit(img: jax.Array) -> jax.Array:
  """uint8 (any integer dtype) -> float32 / 255; floating input is only cast to float32."""
  img = jnp.asarray(img)
  if jnp.issubdtype(img.dtype, jnp.integer):
    return img.astype(jnp.float32) / 255.
  return img.astype(jnp.float32)


def composite_on_white(img: jax.Array) -> jax.Array:
  """eval_nvs.color_map_forward: [..., H, W, 4|3] (uint8 or float in [0, 1]) -> float32 [..., H, W, 3].

  RGBA becomes rgb * alpha + (1 - alpha) (white background); RGB passes through (as float32).
  """
  img = to_unit(img)
  if img.shape[-1] == 3:
    return img
  if img.shape[-1] != 4:
    raise ValueError(f'composite_on_white: expected 3 or 4 channels, got shape {img.shape}')
  rgb, alpha = img[..., :3], img[..., 3:]
  return rgb * alpha + (1 - alpha)


def psnr(pred: jax.Array, gt: jax.Array, data_range: float = 1.0) -> jax.Array:
  """eval_nvs.compute_psnr_float: 10 log10(data_range^2 / MSE), [..., H, W, C] -> [...].

  MSE is the per-channel mean over pixels, then the mean over channels (as the original's two np.means).
  Identical images give MSE 0 and PSNR = +inf (as numpy does, minus its divide warning): average such
  values with care (eval_nvs.py would report inf for the whole object).
  """
  pred, gt = _broadcast(pred, gt, 'psnr')
  mse = jnp.mean(jnp.mean(jnp.square(gt - pred), axis=(-3, -2)), axis=-1)
  return 10. * jnp.log10(data_range ** 2 / mse)


# ----------------------------------------------------------------------------------------------------
# SSIM (torchmetrics.functional.image.ssim, 2D path)
# ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def gaussian_window(sigma: float = 1.5) -> np.ndarray:
  """torchmetrics `_gaussian_kernel_2d` in float32: [k, k], k = 2 int(3.5 sigma + 0.5) + 1 (11 for 1.5).

  1D taps exp(-(d / sigma)^2 / 2) at d = -(k-1)/2 .. (k-1)/2, normalised to sum 1; the 2D window is their
  outer product (not renormalised). torchmetrics ignores `kernel_size` for the Gaussian window.
  """
  k = int(3.5 * sigma + 0.5) * 2 + 1
  d = np.arange((1 - k) / 2, (1 + k) / 2, 1, dtype=np.float32)
  g = np.exp(-np.square(d / np.float32(sigma)) / np.float32(2)).astype(np.float32)
  # Normalise by the correctly rounded sum, as torch's sum gives for sigma 1.5 (np.sum in float32 is 1 ulp
  # lower there: the window then sums to > 1, flat regions get variance < 0, clamped, and SSIM(x, x) < 1).
  g = (g / np.float32(g.astype(np.float64).sum())).astype(np.float32)
  return np.outer(g, g).astype(np.float32)


def _window_sum(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Depthwise 'valid' correlation of [B, H+k-1, W+k-1, C] with a k x k window -> [B, H, W, C].

  A float32 running sum over the k^2 taps in row-major order: this is the order torch's CPU depthwise
  conv2d accumulates in (SSIM then equals torchmetrics' to ~1e-7, where any other order, e.g. XLA's conv or
  a separable blur, is ~5e-5 off: E[x^2] - mu^2 cancels against C2 ~ 1e-3 in flat regions). A loop over
  window rows with the k column taps unrolled; several times faster than a grouped conv on CPU.
  """
  k = window.shape[0]
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  win = jnp.asarray(window)

  def row(i, acc):
    rows = jax.lax.dynamic_slice_in_dim(x, i, h, axis=1)
    for j in range(k):
      acc = acc + win[i, j] * rows[:, :, j:j + w]
    return acc

  return jax.lax.fori_loop(0, k, row, jnp.zeros(x.shape[:1] + (h, w) + x.shape[3:], jnp.float32))


def ssim(pred: jax.Array, gt: jax.Array, *, data_range=None, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, crop_border: bool = False) -> jax.Array:
  """torchmetrics `structural_similarity_index_measure` (1.9.0, Gaussian window), [..., H, W, C] -> [...].

  Per image: reflect-pad H and W by r = (k-1)/2 (torch 'reflect', edge not repeated), one depthwise k x k
  Gaussian conv of x, y, x^2, y^2, xy; variances clamped at 0 (covariance not); SSIM map of the same size
  as the image, averaged over H, W and C.

  data_range:
    None     torchmetrics' default: max(pred.max() - pred.min(), gt.max() - gt.min()), here taken per
             image (over H, W, C). torchmetrics takes it over the whole batch it is given; eval_nvs.py
             calls it with one view at a time, which is what this reproduces for every view.
    number   C1 = (k1 data_range)^2, C2 = (k2 data_range)^2; also an array broadcastable to [...].
    (lo, hi) both images clamped to [lo, hi], data_range = hi - lo.
  crop_border: average only the map's interior [r:-r, r:-r] instead, as torchmetrics did before its
    PR #2721 (Sep 2024) and as skimage does; with it the padding mode no longer matters.
  """
  pred, gt = _broadcast(pred, gt, 'ssim')
  lead, (h, w, c) = pred.shape[:-3], pred.shape[-3:]
  window = gaussian_window(float(sigma))
  r = (window.shape[0] - 1) // 2
  if h <= r or w <= r:
    raise ValueError(f'ssim: image {h}x{w} too small for reflect padding by {r} (window {2 * r + 1})')

  if data_range is None:
    rng = lambda x: jnp.max(x, axis=(-3, -2, -1)) - jnp.min(x, axis=(-3, -2, -1))
    dr = jnp.maximum(rng(pred), rng(gt))
  elif isinstance(data_range, tuple):
    lo, hi = data_range
    pred, gt = jnp.clip(pred, lo, hi), jnp.clip(gt, lo, hi)
    dr = jnp.asarray(hi - lo, jnp.float32)
  else:
    dr = jnp.asarray(data_range, jnp.float32)
  dr = jnp.broadcast_to(dr, lead)[..., None, None, None]
  c1 = jnp.square(k1 * dr)
  c2 = jnp.square(k2 * dr)

  x = pred.reshape((-1, h, w, c))
  y = gt.reshape((-1, h, w, c))
  pad = ((0, 0), (r, r), (r, r), (0, 0))
  x, y = jnp.pad(x, pad, mode='reflect'), jnp.pad(y, pad, mode='reflect')
  stack = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)                  # [B, H+2r, W+2r, 5C]
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(_window_sum(stack, window).reshape(lead + (h, w, 5 * c)), 5, -1)

  mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
  var_x = jnp.maximum(e_xx - mu_xx, 0.)
  var_y = jnp.maximum(e_yy - mu_yy, 0.)
  cov = e_xy - mu_xy
  upper = 2 * cov + c2
  lower = var_x + var_y + c2
  ssim_map = ((2 * mu_xy + c1) * upper) / ((mu_xx + mu_yy + c1) * lower)
  if crop_border:
    ssim_map = ssim_map[..., r:-r, r:-r, :]
  return jnp.mean(ssim_map, axis=(-3, -2, -1))
