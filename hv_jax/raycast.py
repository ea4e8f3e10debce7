"""First-hit ray casting of a triangle mesh from a pinhole camera (embree through trimesh).

One renderer for everything that looks at a mesh from a camera: the Chamfer depth maps
(hv_jax.metrics.geometry), silhouettes for elevation estimation, visibility and depth tests for texture baking,
and re-renders / previews of exported assets.

Cameras follow SyncDreamer's conventions (shared/gso-eval README): world->camera pose [R | t] (3x4),
intrinsics K, pixel (u, v) ray direction R^T K^-1 [u + o, v + o, 1] with o = `pixel_offset`, camera centre
-R^T t. World +z is up; `look_at_pose(azimuth, elevation)` builds the pose of the 16-view set for any angles.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from hv_jax import optional

FOCAL_256 = 280.0          # K of the 16-view set at 256x256 (camera-16.pkl)
DISTANCE = 1.5             # camera distance of the 16-view set


@dataclasses.dataclass(frozen=True)
class Hits:
  """What each pixel of an [H, W] image sees (first hit only)."""
  mask: np.ndarray         # [H, W] bool: the ray hits the mesh
  depth: np.ndarray        # [H, W] float64 camera-space z of the hit (0 where no hit)
  triangle: np.ndarray     # [H, W] int64 index of the hit triangle (-1 where no hit)
  points: np.ndarray       # [H, W, 3] float64 world position of the hit (0 where no hit)
  barycentric: np.ndarray  # [H, W, 3] float64 weights of the hit triangle's 3 corners (0 where no hit)


def intrinsics(size: int, focal_256: float = FOCAL_256) -> np.ndarray:
  """K [3, 3] of the 16-view set scaled to a size x size image (principal point at size / 2)."""
  r = size / 256.0
  return np.array([[focal_256 * r, 0.0, 128.0 * r], [0.0, focal_256 * r, 128.0 * r], [0.0, 0.0, 1.0]])


def look_at_pose(azimuth_deg: float, elevation_deg: float, distance: float = DISTANCE) -> np.ndarray:
  """World->camera [R | t] [3, 4] of SyncDreamer's camera at (azimuth, elevation) looking at the origin.

  row0 = [-sin a, cos a, 0], row1 = [sin e cos a, sin e sin a, -cos e], row2 = row0 x row1, t = [0, 0, d]
  (camera-16.pkl's poses are these at a = i * 22.5 deg, e = 30 deg, d = 1.5).
  """
  a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  r0 = np.array([-np.sin(a), np.cos(a), 0.0])
  r1 = np.array([np.sin(e) * np.cos(a), np.sin(e) * np.sin(a), -np.cos(e)])
  R = np.stack([r0, r1, np.cross(r0, r1)])
  return np.concatenate([R, np.array([[0.0], [0.0], [distance]])], 1)


def camera_center(pose: np.ndarray) -> np.ndarray:
  """-R^T t [3]."""
  pose = np.asarray(pose, np.float64)
  return -pose[:, :3].T @ pose[:, 3]


def intersector(vertices: np.ndarray, faces: np.ndarray):
  """An embree ray intersector of the mesh; build it once and pass it to `cast` for many cameras."""
  tm = optional.trimesh().Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), process=False)
  return optional.ray_pyembree().RayMeshIntersector(tm)


def rays(K: np.ndarray, pose: np.ndarray, height: int, width: int, pixel_offset: float = 0.5):
  """The camera centre [3] and the world ray direction [H * W, 3] of every pixel (row-major), R^T K^-1 p with
  p = [u + pixel_offset, v + pixel_offset, 1] (camera z = 1 per unit of length)."""
  K = np.asarray(K, np.float64)
  pose = np.asarray(pose, np.float64)
  R, t = pose[:, :3], pose[:, 3]
  v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing='ij')
  pix = np.stack([u + pixel_offset, v + pixel_offset, np.ones_like(u)], -1).reshape(-1, 3)
  # einsum, not BLAS: a [N, 3] x [3, 3] matmul through a multithreaded BLAS takes ~10x longer on a busy machine
  return -R.T @ t, np.einsum('nj,jk->nk', pix, np.linalg.inv(K).T @ R)


def cast(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, pose: np.ndarray, height: int, width: int,
         pixel_offset: float = 0.5, mesh_intersector=None) -> Hits:
  """First hit of every pixel's ray; pixel (u, v) is sampled at (u + pixel_offset, v + pixel_offset)."""
  inter = mesh_intersector or intersector(vertices, faces)
  pose = np.asarray(pose, np.float64)
  R, t = pose[:, :3], pose[:, 3]
  origin, d_world = rays(K, pose, height, width, pixel_offset)
  locs, ray_idx, tri_idx = inter.intersects_location(np.broadcast_to(origin, d_world.shape), d_world,
                                                     multiple_hits=False)
  n = height * width
  mask = np.zeros(n, bool)
  depth = np.zeros(n)
  tri = np.full(n, -1, np.int64)
  pts = np.zeros((n, 3))
  bary = np.zeros((n, 3))
  if len(ray_idx):
    mask[ray_idx] = True
    depth[ray_idx] = (locs @ R.T + t)[:, 2]
    tri[ray_idx] = tri_idx
    pts[ray_idx] = locs
    bary[ray_idx] = barycentric(np.asarray(vertices, np.float64)[np.asarray(faces)[tri_idx]], locs)
  return Hits(mask.reshape(height, width), depth.reshape(height, width), tri.reshape(height, width),
              pts.reshape(height, width, 3), bary.reshape(height, width, 3))


def barycentric(corners: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Weights [P, 3] of points [P, 3] in their triangles corners [P, 3, 3] (clipped to >= 0, summing to 1)."""
  a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
  v0, v1, v2 = b - a, c - a, points - a
  d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
  d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
  den = d00 * d11 - d01 * d01
  den = np.where(np.abs(den) > 1e-30, den, 1e-30)
  w1 = (d11 * d20 - d01 * d21) / den
  w2 = (d00 * d21 - d01 * d20) / den
  w = np.clip(np.stack([1.0 - w1 - w2, w1, w2], -1), 0.0, None)
  return w / np.maximum(w.sum(-1, keepdims=True), 1e-30)


def silhouette(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, pose: np.ndarray, size: int,
               mesh_intersector=None, pixel_offset: float = 0.5) -> np.ndarray:
  """[size, size] bool mask of the pixels whose ray hits the mesh: `cast(...).mask`, through embree's any-hit
  query (about 10x faster: no hit location, no first-hit search)."""
  inter = mesh_intersector or intersector(vertices, faces)
  origin, d_world = rays(K, pose, size, size, pixel_offset)
  return np.asarray(inter.intersects_any(np.broadcast_to(origin, d_world.shape), d_world), bool).reshape(size, size)


def interpolate(hits: Hits, faces: np.ndarray, attribute: np.ndarray, background: Optional[np.ndarray] = None
                ) -> np.ndarray:
  """A per-vertex attribute [V, C] interpolated at the hits -> [H, W, C] (`background` where no hit)."""
  attribute = np.asarray(attribute, np.float64)
  h, w = hits.mask.shape
  out = np.zeros((h, w, attribute.shape[-1]))
  if background is not None:
    out[:] = background
  m = hits.mask
  corners = attribute[np.asarray(faces)[hits.triangle[m]]]                      # [P, 3, C]
  out[m] = (hits.barycentric[m][..., None] * corners).sum(1)
  return out
