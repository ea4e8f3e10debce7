"""Automatic best-of-N: a weight-free plausibility score of one generated 16-view instance (issue 20, part 3).

HarmonyView samples N instances per input and the authors pick the most plausible by eye (SyncDreamer #71).
`score_instance` scores one instance from what its views show, with no ground truth and no downloaded
weights; the pipeline keeps `argmax(total)` (`rank` orders several). Every term is a cost, 0 = perfect,
averaged over the 16 views; `total = -sum(WEIGHTS[k] * cost[k])` (higher is better). docs/best_of_n.md
has the validation on GSO-eval.

  silhouette   1 - IoU of each view's mask with the silhouette of the visual hull carved by the OTHER 15
               views (a voxel survives when at most `tolerance` of them carve it), ray-cast into that view.
               A view of another azimuth or another object disagrees with the hull of the rest.
  photometric  mean |RGB difference| between each view and its two azimuth neighbours at corresponding
               surface points: each pixel's first hit on the robust hull of all views, projected into the
               neighbour, kept where the neighbour sees the same hull point (depth test). Colour-shifted views
               disagree with their neighbours.
  sharpness    |log2| of each view's high-frequency energy (mean squared Laplacian inside the eroded mask)
               against the median over the 16 views, past a dead zone of one octave of natural variation. A
               blurred view loses most of its Laplacian energy.
  fidelity     view 0 (azimuth 0) against the input, both cropped to their mask's bounding box: 1 - mask IoU,
               plus the mean |RGB difference| inside both masks, plus the sharpness |log2| ratio past the
               same dead zone (catches a set blurred as a whole, which the relative sharpness cannot see).
               In the pipeline the input's elevation may differ from the views' 30 deg, so its weight is half.

Cameras are SyncDreamer's 16-view set (hv_jax.models.cameras.default_cameras; conventions in the GSO-eval
README): the hull lives in the NeuS cube [-0.6, 0.6]^3.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

from hv_jax.errors import UserError

# One rule for every weight: each cost is already in a natural unit where one plainly wrong view among 16
# adds about 1/16 of a unit (IoU, colour difference in [0, 1] RGB x 4, octaves of sharpness / 2), so all
# weigh 1, except fidelity, which weighs 1/2 because the real input is seen from its own elevation.
WEIGHTS = {'silhouette': 1.0, 'photometric': 1.0, 'sharpness': 1.0, 'fidelity': 0.5}


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
  grid: int = 64               # hull voxels per side over [-bound, bound]^3
  bound: float = 0.6           # the NeuS cube
  tolerance: int = 1           # a voxel survives when at most this many views carve it
  render_size: int = 64        # views are compared at this resolution (area-averaged)
  photo_scale: float = 4.0     # photometric cost = photo_scale * mean |RGB difference|
  octave_dead_zone: float = 1.0   # sharpness ratios within 2^dead_zone cost nothing
  octave_unit: float = 2.0     # sharpness cost = (|log2 ratio| - dead zone) / octave_unit
  erode: int = 3               # pixels removed from the mask's border before measuring sharpness


# ----------------------------------------------------------------------------- input checks

def _unit(a) -> np.ndarray:
  """float32; integer images (uint8) are divided by 255."""
  a = np.asarray(a)
  return a.astype(np.float32) / 255 if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)


def _check(views, masks, input_rgb, input_mask):
  views, masks, input_rgb, input_mask = (_unit(a) for a in (views, masks, input_rgb, input_mask))
  if views.ndim != 4 or views.shape[-1] != 3 or views.shape[0] < 3:
    raise UserError(f'score_instance: views must be [V, H, W, 3] with V >= 3, got shape {views.shape}')
  v, h, w = views.shape[:3]
  if masks.shape != (v, h, w):
    raise UserError(f'score_instance: masks must be [{v}, {h}, {w}] like the views, got shape {masks.shape}')
  if input_rgb.ndim != 3 or input_rgb.shape[-1] != 3:
    raise UserError(f'score_instance: input_rgb must be [H, W, 3], got shape {input_rgb.shape}')
  if input_mask.shape != input_rgb.shape[:2]:
    raise UserError(f'score_instance: input_mask must be {input_rgb.shape[:2]} like input_rgb, '
                    f'got shape {input_mask.shape}')
  for name, a in (('views', views), ('masks', masks), ('input_rgb', input_rgb), ('input_mask', input_mask)):
    if not np.isfinite(a).all():
      raise UserError(f'score_instance: {name} holds NaN or inf')
    if a.size and (a.min() < -1e-3 or a.max() > 1 + 1e-3):
      raise UserError(f'score_instance: {name} must lie in [0, 1] (or be uint8), '
                      f'got values in [{a.min():.3g}, {a.max():.3g}]')
  return views, masks, input_rgb, input_mask


def _cameras(cameras, n, size):
  """(Ks [n, 3, 3], poses [n, 3, 4]) float64 for images of `size` pixels."""
  if cameras is None:
    from hv_jax.models.cameras import default_cameras
    Ks, poses, _ = default_cameras(n, size)
  else:
    Ks, poses = cameras[0], cameras[1]
  Ks = np.broadcast_to(np.asarray(Ks, np.float64), (n, 3, 3))
  poses = np.asarray(poses, np.float64)
  if poses.shape != (n, 3, 4):
    raise UserError(f'score_instance: cameras need {n} poses [3, 4], got shape {poses.shape}')
  return Ks, poses


# ----------------------------------------------------------------------------- image helpers

def resize(img: np.ndarray, size: int) -> np.ndarray:
  """[H, W] or [H, W, C] float -> [size, size(, C)] (area average when shrinking, PIL BOX filter)."""
  img = np.asarray(img, np.float32)
  if img.shape[0] == size and img.shape[1] == size:
    return img
  chans = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[-1])]
  out = [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BOX)) for c in chans]
  return out[0] if img.ndim == 2 else np.stack(out, -1)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
  """Binary erosion by a (2r+1)^2 square, [..., H, W] bool (outside the image counts as background)."""
  m = mask
  for axis in (-2, -1):
    pad = [(0, 0)] * m.ndim
    pad[axis] = (r, r)
    p = np.pad(m, pad, constant_values=False)
    n = m.shape[axis]
    out = np.ones_like(m)
    for k in range(2 * r + 1):
      out &= np.take(p, np.arange(k, k + n), axis=axis)
    m = out
  return m


NOISE_ENERGY = (1 / 255) ** 2    # Laplacian energy below one 8-bit grey level squared is quantisation noise


def laplacian_energy(gray: np.ndarray, mask: np.ndarray, erode: int = 3) -> np.ndarray:
  """Mean squared 4-neighbour Laplacian inside the eroded mask: [..., H, W] -> [...], at least NOISE_ENERGY
  (so flat, textureless views compare as equal instead of as ratios of rounding errors)."""
  g = np.asarray(gray, np.float32)
  lap = np.zeros_like(g)
  lap[..., 1:-1, 1:-1] = (g[..., :-2, 1:-1] + g[..., 2:, 1:-1] + g[..., 1:-1, :-2] + g[..., 1:-1, 2:]
                          - 4 * g[..., 1:-1, 1:-1])
  m = _erode(np.asarray(mask) > 0.5, erode + 1)           # +1: the Laplacian reads one pixel further
  num = (lap ** 2 * m).sum((-2, -1))
  return np.maximum(num / np.maximum(m.sum((-2, -1)), 1), NOISE_ENERGY)


def _gray(rgb):
  return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- the hull

def _affine(M: np.ndarray, x: np.ndarray) -> np.ndarray:
  """x [..., 3] -> M[:, :3] x + M[:, 3] (or M x for a 3x3 M), [..., rows]: elementwise, since BLAS on [P, 3]
  x [3, 3] products is slow and thread-bound on a busy machine (75-180 ms against 5 ms here, measured)."""
  out = [x[..., 0] * M[r, 0] + x[..., 1] * M[r, 1] + x[..., 2] * M[r, 2] + (M[r, 3] if M.shape[1] > 3 else 0.0)
         for r in range(M.shape[0])]
  return np.stack(out, -1)


def _voxel_centres(grid: int, bound: float) -> np.ndarray:
  c = (np.arange(grid) + 0.5) / grid * 2 * bound - bound
  return np.stack(np.meshgrid(c, c, c, indexing='ij'), -1).reshape(-1, 3)


def carve_votes(masks: np.ndarray, Ks: np.ndarray, poses: np.ndarray, grid: int, bound: float) -> np.ndarray:
  """[V, grid^3] bool: view v carves the voxel (its centre projects inside the image onto background).

  masks [V, H, W] in [0, 1] at the resolution Ks are for; pixel centres at integer coordinates (README).
  A voxel that projects outside the image or behind the camera is not carved by that view (no evidence).
  """
  x = _voxel_centres(grid, bound)
  n, h, w = masks.shape
  carved = np.zeros((n, len(x)), bool)
  for i in range(n):
    cam = _affine(poses[i], x)
    z = cam[:, 2]
    uv = _affine(Ks[i], cam)
    with np.errstate(divide='ignore', invalid='ignore'):
      u = np.rint(uv[:, 0] / z)
      v = np.rint(uv[:, 1] / z)
    inside = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui = np.where(inside, u, 0).astype(np.int64)
    vi = np.where(inside, v, 0).astype(np.int64)
    carved[i] = inside & (masks[i][vi, ui] <= 0.5)
  return carved


def _rays(K, pose, size):
  """Camera centre [3] and per-pixel directions [size^2, 3] with camera-space z = 1 (so t = depth)."""
  R, t = pose[:, :3], pose[:, 3]
  v, u = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing='ij')
  pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
  return -R.T @ t, _affine(R.T, _affine(np.linalg.inv(K), pix))


def first_hit(occupancy: np.ndarray, K, pose, size: int, bound: float) -> np.ndarray:
  """Depth [k, size, size] of each pixel's first occupied voxel in each grid of `occupancy` [k, g, g, g]
  (0 where none).

  Each ray is marched at half a voxel through the bounding box of all occupied voxels only (slab test).
  """
  occupancy = np.asarray(occupancy, bool)
  k_, g = occupancy.shape[0], occupancy.shape[1]
  hit = np.zeros((k_, size * size), np.float32)
  nz = np.nonzero(occupancy.any(0))
  if not len(nz[0]):
    return hit.reshape(k_, size, size)
  vox = 2 * bound / g
  lo = np.array([a.min() for a in nz]) * vox - bound
  hi = (np.array([a.max() for a in nz]) + 1) * vox - bound
  centre, d = _rays(K, pose, size)
  with np.errstate(divide='ignore', invalid='ignore'):
    inv = 1.0 / d
    t0, t1 = (lo - centre) * inv, (hi - centre) * inv
  tmin = np.nanmax(np.minimum(t0, t1), -1)
  tmax = np.nanmin(np.maximum(t0, t1), -1)
  idx = np.nonzero(tmax > np.maximum(tmin, 1e-3))[0]
  if not len(idx):
    return hit.reshape(k_, size, size)
  step = vox / 2
  ks = np.arange(int(np.ceil((tmax[idx] - tmin[idx]).max() / step)) + 1, dtype=np.float32)
  t = tmin[idx, None].astype(np.float32) + (ks[None] + 0.5) * np.float32(step)          # [P, T]
  flat = np.zeros(t.shape, np.int64)
  ok = t < tmax[idx, None]
  for axis in range(3):
    q = np.floor((np.float32(centre[axis] + bound) + t * np.float32(d[idx, axis, None])) / np.float32(vox))
    q = q.astype(np.int64)
    ok &= (q >= 0) & (q < g)
    flat = flat * g + np.clip(q, 0, g - 1)
  occ_flat = occupancy.reshape(k_, -1)
  for j in range(k_):
    occ = ok & occ_flat[j][flat]
    any_ = occ.any(1)
    hit[j, idx[any_]] = t[any_, occ[any_].argmax(1)]
  return hit.reshape(k_, size, size)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  union = (a | b).sum()
  return float((a & b).sum() / union) if union else 1.0


# ----------------------------------------------------------------------------- terms

def _photometric(rgb, full, depth, Ks, poses):
  """Per-view mean |RGB difference| [V] against the two azimuth neighbours at corresponding hull points.

  rgb [V, S, S, 3], full [V, S, S] bool (pixels wholly inside the mask), depth [V, S, S] (0 = no hull hit),
  Ks/poses for size S. A correspondence counts when the neighbour's own first hit lies within two voxels of the
  projected point (visible there) and the neighbour's pixel is wholly inside its mask.
  """
  n, s = depth.shape[:2]
  cost = np.zeros(n)
  tol = 0.04
  for i in range(n):
    centre, d = _rays(Ks[i], poses[i], s)
    ok = (depth[i].reshape(-1) > 0) & full[i].reshape(-1)
    X = centre + depth[i].reshape(-1)[ok, None] * d[ok]
    ci = rgb[i].reshape(-1, 3)[ok]
    errs, counts = 0.0, 0
    for j in ((i - 1) % n, (i + 1) % n):
      cam = _affine(poses[j], X)
      uv = _affine(Ks[j], cam)
      u = np.rint(uv[:, 0] / cam[:, 2]).astype(np.int64)
      v = np.rint(uv[:, 1] / cam[:, 2]).astype(np.int64)
      inb = (u >= 0) & (u < s) & (v >= 0) & (v < s)
      u, v = np.clip(u, 0, s - 1), np.clip(v, 0, s - 1)
      vis = inb & full[j][v, u] & (np.abs(depth[j][v, u] - cam[:, 2]) < tol) & (depth[j][v, u] > 0)
      errs += np.abs(ci[vis] - rgb[j][v[vis], u[vis]]).mean(-1).sum()
      counts += int(vis.sum())
    cost[i] = errs / counts if counts else 0.25        # nothing comparable: an average colour mismatch
  return cost


def _crop(rgb, mask, size):
  """Crop to the mask's bounding box, padded square (white), resized: ([size, size, 3], [size, size])."""
  m = mask > 0.5
  if not m.any():
    return resize(rgb, size), resize(mask, size)
  ys, xs = np.nonzero(m)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  side = max(y1 - y0, x1 - x0)
  cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
  out_rgb = np.ones((side, side, 3), np.float32)
  out_m = np.zeros((side, side), np.float32)
  sy0, sx0 = cy - side // 2, cx - side // 2
  ys0, xs0 = max(sy0, 0), max(sx0, 0)
  ys1, xs1 = min(sy0 + side, mask.shape[0]), min(sx0 + side, mask.shape[1])
  out_rgb[ys0 - sy0:ys1 - sy0, xs0 - sx0:xs1 - sx0] = rgb[ys0:ys1, xs0:xs1]
  out_m[ys0 - sy0:ys1 - sy0, xs0 - sx0:xs1 - sx0] = mask[ys0:ys1, xs0:xs1]
  return resize(out_rgb, size), resize(out_m, size)


def _octaves(a, b, s: ScoreSettings):
  """Sharpness cost of energy a against reference b: (|log2(a / b)| / 2 - dead zone)+ / unit.

  Energy is squared, so |log2| / 2 is octaves of amplitude."""
  return np.maximum(np.abs(np.log2(a / b)) / 2 - s.octave_dead_zone, 0) / s.octave_unit


# ----------------------------------------------------------------------------- the score

def score_instance(views, masks, input_rgb, input_mask, cameras=None,
                   settings: ScoreSettings | None = None) -> dict:
  """Plausibility of one generated instance, without ground truth (higher `total` is better).

  views [V, H, W, 3] float in [0, 1] composited on white, masks [V, H, W] in [0, 1], input_rgb [H', W', 3],
  input_mask [H', W'] (the prepared input); cameras: None for SyncDreamer's 16 views, else (Ks [V, 3, 3] or
  [3, 3] for H x W images, poses [V, 3, 4] world->camera). Returns plain floats: the costs 'silhouette',
  'photometric', 'sharpness', 'fidelity' (0 = perfect; means over views), 'total' = -sum(WEIGHTS * cost),
  and the diagnostics 'silhouette_iou_min', 'worst_view' (the view with the largest summed view cost).
  Bad shapes raise UserError (one line).
  """
  s = settings or ScoreSettings()
  views, masks, input_rgb, input_mask = _check(views, masks, input_rgb, input_mask)
  n, h, w = masks.shape
  if h != w:
    raise UserError(f'score_instance: views must be square, got {h}x{w}')
  Ks, poses = _cameras(cameras, n, h)
  views = np.clip(views, 0, 1)
  masks = np.clip(masks, 0, 1)

  # silhouette: each view against the hull of the others
  carved = carve_votes(masks, Ks, poses, s.grid, s.bound)              # [V, g^3]
  count = carved.sum(0)
  r = s.render_size
  Kr = Ks.copy()
  Kr[:, :2] *= r / h
  m_small = np.stack([resize(m, r) for m in masks])                     # [V, r, r]
  # photometric: neighbours at corresponding points of the robust hull of all views (same rays)
  grid = (s.grid,) * 3
  occ_all = (count <= s.tolerance).reshape(grid)
  sil = np.zeros(n)
  depth = np.zeros((n, r, r), np.float32)
  for i in range(n):
    occ_others = ((count - carved[i]) <= s.tolerance).reshape(grid)
    d_others, depth[i] = first_hit(np.stack([occ_others, occ_all]), Kr[i], poses[i], r, s.bound)
    sil[i] = _iou(d_others > 0, m_small[i] > 0.5)
  rgb_small = np.stack([resize(v, r) for v in views])
  photo = s.photo_scale * _photometric(rgb_small, m_small > 0.999, depth, Kr, poses)
  # sharpness: against the median over views
  energy = laplacian_energy(_gray(views), masks, s.erode)
  sharp = _octaves(energy, np.median(energy), s)
  # fidelity: view 0 against the input, after the same crop
  size = min(h, 128)
  v0, m0 = _crop(views[0], masks[0], size)
  vi, mi = _crop(input_rgb, input_mask, size)
  both = (m0 > 0.5) & (mi > 0.5)
  colour = float(np.abs(v0 - vi)[both].mean()) if both.any() else 1.0
  e0 = laplacian_energy(_gray(v0), m0, s.erode)
  ei = laplacian_energy(_gray(vi), mi, s.erode)
  fid = (1 - _iou(m0 > 0.5, mi > 0.5)) + s.photo_scale * colour + float(_octaves(e0, ei, s))

  costs = {'silhouette': float(np.mean(1 - sil)), 'photometric': float(np.mean(photo)),
           'sharpness': float(np.mean(sharp)), 'fidelity': float(fid)}
  out = dict(costs)
  out['total'] = -float(sum(WEIGHTS[k] * costs[k] for k in WEIGHTS))
  out['silhouette_iou_min'] = float(sil.min())
  out['worst_view'] = int(np.argmax((1 - sil) + photo + sharp))
  return out


def rank(scores: Sequence[dict]) -> list:
  """Indices of `scores` (score_instance results) from the best to the worst total (ties keep input order)."""
  totals = [float(sc['total']) for sc in scores]
  return sorted(range(len(totals)), key=lambda k: -totals[k])
