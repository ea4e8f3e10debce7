"""Input-view elevation from a mesh: the elevation whose silhouette best matches the input's mask.

  estimate(input_mask [H, W], vertices [V, 3], faces [F, 3]) -> Estimate (elevation_deg, scores, ...)
  estimate_files(image_path, mesh_path) -> Estimate          (the mask from the image's alpha or a matte)

SyncDreamer conditions on the input view's elevation, which the paper estimates at test time. Here: the mesh
(in SyncDreamer's frame: the reconstruction of the 16 generated views, or a GT mesh normalised like
eval_mesh.py) is rendered from the input view's azimuth (0) at every candidate elevation with the 16-view
cameras' conventions (hv_jax.raycast: look-at camera at distance 1.5), each silhouette and the input mask are
framed the same way (the sampler's crop, hv_jax.data.preprocess.prepare_rgba: bounding box rescaled so its
longer side is `crop_size`, centred), and the candidate with the highest IoU wins; the best is refined at
`refine_step` within one coarse step. Crop framing makes the score blind to the object's position and size in
the photo, so only the shape of the outline decides. `distances` optionally searches the camera distance
too (the input's perspective; SyncDreamer's 1.5 only by default). Cost: one embree any-hit render per
candidate (51 + 8 at 256 px), 1.2-3 s per estimate on a busy 2-core machine. Validation (GSO-eval: GT meshes
and NeuS reconstructions at known elevations), precision and limits: docs/elevation.md
(benchmarks/elevation_gso.py).

The one-command pipeline: sample at a prior elevation, reconstruct quickly, `estimate(input_mask, vertices,
faces)`, resample at `elevation_deg` if it moved by more than a threshold.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
from absl import logging
from PIL import Image

from hv_jax import raycast
from hv_jax.data import matting as matting_lib
from hv_jax.data import preprocess
from hv_jax.errors import UserError
from hv_jax.metrics import geometry

CANDIDATES = tuple(float(e) for e in np.arange(-10.0, 40.01, 1.0))   # the trained input range, 1 deg apart
CROP_SIZE = 200            # framing of masks and silhouettes (the sampler's photo_crop_size)
SIZE = 256                 # side of the framed masks
DISTANCES = (raycast.DISTANCE,)   # camera distances searched: SyncDreamer's only (see `estimate`)
REFINE_STEP = 0.25         # degrees: the refinement grid around the best coarse candidate
FIT = 0.95                 # the mesh's convex hull fills this fraction of the render where it looks largest
SEPARATION = 5.0           # degrees: what counts as another mode for `second_best_*`


class ElevationError(UserError):
  """An input the estimator cannot use (empty mask, mesh without triangles or out of the frame); one line."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The elevation (degrees) whose silhouette matches the input mask best, and every score evaluated."""
  elevation_deg: float
  iou: float                          # the best score
  candidates: Tuple[float, ...]       # every elevation evaluated (coarse grid and refinement), ascending
  scores: Tuple[float, ...]           # IoU of each candidate's framed silhouette with the framed input mask
  second_best_deg: Optional[float]    # the best candidate more than `SEPARATION` degrees from the winner
  second_best_iou: Optional[float]
  distance: float = raycast.DISTANCE  # the camera distance of the winner (`candidates`, `scores` are at it)
  distance_scores: Tuple[float, ...] = ()   # the best IoU at each of `distances`
  distances: Tuple[float, ...] = ()

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _binary(mask: np.ndarray, what: str) -> np.ndarray:
  """[H, W] bool foreground of a bool / float [0, 1] / uint8 mask (at one half)."""
  m = np.asarray(mask)
  if m.ndim != 2:
    raise ElevationError(f'{what}: want a [H, W] mask, got shape {m.shape}')
  if m.dtype == np.uint8:
    return m >= 128
  m = np.nan_to_num(m.astype(np.float64))
  return m > 0.5


def normalize_mask(mask: np.ndarray, size: int = SIZE, crop_size: int = CROP_SIZE) -> np.ndarray:
  """[H, W] mask (bool, float in [0, 1] or uint8 alpha; thresholded at one half) -> [size, size] float32 in
  [0, 1]: the sampler's framing (preprocess.prepare_rgba with `crop_size`, BICUBIC, so edges are soft).
  ElevationError when the mask has no foreground."""
  m = _binary(mask, 'mask')
  if not m.any():
    raise ElevationError('the input mask is empty: no foreground pixel (is the object cut out?)')
  rgba = np.zeros(m.shape + (4,), np.uint8)
  rgba[..., 3] = m * np.uint8(255)
  try:
    framed = preprocess.prepare_rgba(Image.fromarray(rgba, 'RGBA'), crop_size, size)
  except preprocess.InputError as e:
    raise ElevationError(f'mask: {e}') from None
  return np.asarray(framed.getchannel('A'), np.float32) / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Soft IoU sum(min) / sum(max) of two [S, S] masks in [0, 1] (the plain IoU for binary masks)."""
  union = np.maximum(a, b).sum()
  return float(np.minimum(a, b).sum() / union) if union > 0 else 0.0


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  v = np.asarray(vertices, np.float64)
  f = np.asarray(faces, np.int64)
  if f.ndim != 2 or f.shape[-1] != 3 or len(f) == 0:
    raise ElevationError(f'the mesh has no triangles (faces of shape {f.shape})')
  if v.ndim != 2 or v.shape[-1] != 3 or f.min() < 0 or f.max() >= len(v):
    raise ElevationError(f'the mesh is malformed: faces index {f.max() + 1} vertices, it has {len(v)}')
  if not np.isfinite(v[f]).all():
    raise ElevationError('the mesh has non-finite vertex coordinates')
  return v, f


def render_intrinsics(vertices: np.ndarray, faces: np.ndarray, render_size: int,
                      elevations: Sequence[float] = CANDIDATES, azimuth_deg: float = 0.0,
                      distance: float = raycast.DISTANCE) -> np.ndarray:
  """K of a render_size square render from `distance` in which the mesh fills `FIT` of the frame at the
  elevation where it looks largest among `elevations`: the mesh's convex hull projected by each camera
  (only the scale changes, which the crop framing removes; the perspective is the distance's), so the
  silhouettes get as many pixels as fit. ElevationError for a mesh that reaches the camera."""
  points = vertices[np.unique(faces)]
  r = float(np.linalg.norm(points, axis=-1).max())
  if r >= 0.95 * distance:
    raise ElevationError(f'the mesh reaches {r:.2f} from the origin, about the camera distance '
                         f'{distance:g}: it is not in SyncDreamer\'s frame (an object of size ~1 at the origin)')
  try:
    from scipy.spatial import ConvexHull
    points = points[ConvexHull(points).vertices]
  except Exception:  # noqa: BLE001  (a flat or degenerate mesh: use every vertex)
    pass
  lo, hi = min(elevations), max(elevations)
  tan = 0.0
  for e in np.unique(np.concatenate([np.asarray(elevations, np.float64), np.linspace(lo, hi, 11)])):
    pose = raycast.look_at_pose(azimuth_deg, float(e), distance)
    cam = points @ pose[:, :3].T + pose[:, 3]
    tan = max(tan, float((np.abs(cam[:, :2]) / cam[:, 2:]).max()))
  return raycast.intrinsics(render_size, FIT * 128.0 / max(tan, 1e-6))


def silhouettes(vertices: np.ndarray, faces: np.ndarray, elevations: Sequence[float], render_size: int = SIZE,
                azimuth_deg: float = 0.0, mesh_intersector=None) -> np.ndarray:
  """[E, render_size, render_size] bool silhouettes of the mesh from (azimuth, each elevation), distance 1.5."""
  v, f = _check_mesh(vertices, faces)
  inter = mesh_intersector or raycast.intersector(v, f)
  K = render_intrinsics(v, f, render_size, elevations, azimuth_deg)
  return np.stack([raycast.silhouette(v, f, K, raycast.look_at_pose(azimuth_deg, e), render_size,
                                      mesh_intersector=inter) for e in elevations])


def estimate(input_mask: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
             candidates: Sequence[float] = CANDIDATES, size: int = SIZE, crop_size: int = CROP_SIZE,
             refine: bool = True, refine_step: float = REFINE_STEP, render_size: int = SIZE,
             distances: Sequence[float] = DISTANCES) -> Estimate:
  """The elevation (degrees) of the view of the mesh, from azimuth 0, whose framed silhouette has the highest
  IoU with the framed `input_mask` ([H, W] bool / float in [0, 1] / uint8 alpha, any resolution).

  vertices [V, 3], faces [F, 3]: the mesh in SyncDreamer's frame (+z up, the input view at azimuth 0).
  `candidates`: the coarse grid (default -10..40 by 1); with `refine`, the best is searched again at
  `refine_step` within one coarse step of it (clipped to the grid's range). `distances`: the camera distances
  searched jointly with the elevation (the perspective of the input: 1.5 is SyncDreamer's camera; a photo from
  farther away with a longer lens has less). ElevationError for an empty mask,
  a mesh without triangles or one whose silhouette is empty at every candidate."""
  target = normalize_mask(input_mask, size, crop_size)
  m = _binary(input_mask, 'mask')
  if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
    logging.warning('the object touches the border of the input image: its outline is cut there, which the '
                    'silhouettes are not, so the elevation estimate may be off')
  v, f = _check_mesh(vertices, faces)
  grid = np.unique(np.asarray(candidates, np.float64))
  if len(grid) == 0 or not np.isfinite(grid).all():
    raise ElevationError(f'candidates must be finite elevations in degrees, got {list(candidates)!r}')
  dists = sorted({float(d) for d in distances})
  if not dists or not all(np.isfinite(d) and d > 0 for d in dists):
    raise ElevationError(f'distances must be positive camera distances, got {list(distances)!r}')
  inter = raycast.intersector(v, f)
  Ks = {d: render_intrinsics(v, f, render_size, (grid[0], grid[-1]), distance=d) for d in dists}
  scores = {}                      # (distance, elevation) -> IoU

  def score(d, elevations):
    for e in elevations:
      e = float(e)
      if (d, e) in scores:
        continue
      sil = raycast.silhouette(v, f, Ks[d], raycast.look_at_pose(0.0, e, d), render_size, mesh_intersector=inter)
      try:
        scores[d, e] = iou(normalize_mask(sil, size, crop_size), target) if sil.any() else 0.0
      except ElevationError:     # a silhouette too thin to frame (an edge-on sheet)
        scores[d, e] = 0.0

  for d in dists:
    score(d, grid)
  if max(scores.values()) <= 0.0:
    raise ElevationError('the mesh\'s silhouette is empty from every candidate elevation: is it in '
                         'SyncDreamer\'s frame (centred at the origin, inside the unit box)?')
  dist, best = max(scores, key=scores.get)
  if refine and len(grid) > 1:
    coarse = float(np.min(np.diff(grid)))
    fine = best + np.arange(-coarse, coarse + 1e-9, refine_step)
    score(dist, np.round(fine[(fine >= grid[0]) & (fine <= grid[-1])], 6))
    dist, best = max(scores, key=scores.get)
  es = np.array(sorted(e for d, e in scores if d == dist))
  ss = np.array([scores[dist, e] for e in es])
  far = np.abs(es - best) > SEPARATION
  second = float(es[far][np.argmax(ss[far])]) if far.any() else None
  return Estimate(float(best), float(scores[dist, best]), tuple(float(e) for e in es), tuple(float(s) for s in ss),
                  second, float(scores[dist, second]) if second is not None else None, dist,
                  tuple(max(s for (d, _), s in scores.items() if d == k) for k in dists), tuple(dists))


def input_mask(image_path, matting: str = 'auto', model: Optional[str] = None) -> np.ndarray:
  """[H, W] float32 mask of an image file: its alpha (a cut-out), else a matte (hv_jax.data.matting: plain,
  or rembg with `model`), as the sampler's preparation does."""
  photo = matting_lib.load_photo(image_path)
  return matting_lib.matte(photo.rgb, matting, alpha=photo.alpha, model=model or None, name=str(image_path))


def estimate_files(image_path, mesh_path, matting: str = 'auto', model: Optional[str] = None,
                   **estimate_options) -> Estimate:
  """`estimate` from an image file (the mask: `input_mask`) and a mesh file (.ply/.obj/...; used as stored,
  so it must already be in SyncDreamer's frame, e.g. a reconstruction of the generated views)."""
  mask = input_mask(image_path, matting, model)
  try:
    mesh = geometry.load_mesh(mesh_path)
  except geometry.MeshError as e:
    raise ElevationError(str(e)) from None
  return estimate(mask, mesh.vertices, mesh.faces, **estimate_options)
