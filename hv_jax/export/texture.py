"""A UV atlas (xatlas) and a texture baked from posed views of the mesh (depth-tested, blended by view angle).

Method (`bake_texture`):
0. a mesh above `max_faces` faces is simplified (vertex clustering), since xatlas slows down fast with size;
1. atlas: xatlas charts the mesh and packs the charts into a size x size square with `padding` texels between
   them; it splits vertices along chart seams, so the output mesh has its own vertices (`vmapping` says which
   input vertex each one copies) and faces;
2. texels: every texel centre inside a UV triangle gets that triangle's barycentrics (a numpy rasteriser in
   texture space), hence its surface point and (interpolated, area-weighted) vertex normal;
3. views: each texel's point is projected into every view; it counts as seen by a view when the view's first
   hit (hv_jax.raycast.cast of the same mesh at that camera) lies at the point's depth within
   `depth_tolerance` and it faces the camera (|cos| > `min_cos`, either winding). Its colour is the bilinear
   sample of the view, weighted by |cos|^`cos_power` (cos between the normal and the direction to the camera:
   frontal views dominate, grazing ones, which smear, hardly count). The masks do not reject samples by
   default (`mask_threshold` 0): where a reconstructed surface covers background in a view (a membrane across
   a hole, a bloated silhouette) the view's colour there is the background the views were composited on,
   which is what NeuS's own colours learn too; rejecting them (0.5) paints such surfaces with the colours of
   views that see them edge-on (GSO alarm: 22.3 dB instead of 24.3 dB, docs/export.md);
   `robust_steps` > 0 adds reweighting against the views' consensus (measured: no gain, off);
4. holes: texels no view sees get the interpolated vertex colours when given, else their nearest seen texel;
5. seams: every texel outside the charts takes the colour of its nearest chart texel, so bilinear and
   mip-mapped lookups at chart borders never mix in the empty background.

UV convention: OBJ / trimesh (origin bottom-left, v up); texel (row r, column c) of the image (row 0 on top)
has its centre at u = (c + 0.5) / size, v = 1 - (r + 0.5) / size. trimesh flips v for glTF on export.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

from hv_jax import optional, raycast
from hv_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class BakeSettings:
  """The parameters of `bake_texture` (module docstring, steps 1-5)."""
  size: int = 1024               # texture side in texels
  padding: int = 2               # texels between packed charts (xatlas PackOptions.padding)
  cos_power: float = 2.0         # view weight cos^p (cos of normal vs direction to the camera)
  min_cos: float = 0.05          # views seeing the surface at a grazing angle beyond this do not count
  depth_tolerance: float = 0.01  # world units (the object spans ~1): |point depth - view's hit depth|
  mask_threshold: float = 0.0    # > 0: samples where the view's mask is below this are dropped (module docstring)
  pixel_offset: float = 0.0      # pixel (u, v) of the views sees the ray through (u + o, v + o); NeuS: 0
  max_faces: int = 20000         # a larger mesh is simplified first (`simplify`): xatlas time grows fast
  robust_steps: int = 0          # reweighting steps against the views' consensus (0: the plain weighted mean)
  robust_scale: float = 0.1      # colour distance (RGB in [0, 1]) at which a view's weight is halved


@dataclasses.dataclass(frozen=True)
class Atlas:
  """The mesh split along chart seams, with its UVs."""
  vertices: np.ndarray     # [V', 3] float64
  faces: np.ndarray        # [F, 3] int64 (same faces, same order as the input)
  uv: np.ndarray           # [V', 2] float64 in [0, 1], OBJ convention (v up)
  vmapping: np.ndarray     # [V'] int64: the input vertex each output vertex copies


def check_mesh(vertices, faces) -> Tuple[np.ndarray, np.ndarray]:
  """float64 [V, 3] and int64 [F, 3] arrays; UserError (one line) for an empty or malformed mesh."""
  v = np.asarray(vertices, np.float64)
  f = np.asarray(faces)
  if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
    raise UserError(f'a mesh needs vertices [V, 3] and faces [F, 3], got {v.shape} and {f.shape}')
  if len(f) == 0 or len(v) == 0:
    raise UserError('the mesh is empty (no faces)')
  if not np.issubdtype(f.dtype, np.integer) or f.min() < 0 or f.max() >= len(v):
    raise UserError(f'mesh faces must index its {len(v)} vertices')
  if not np.isfinite(v).all():
    raise UserError('mesh vertices must be finite')
  return v, f.astype(np.int64)


def simplify(vertices: np.ndarray, faces: np.ndarray, max_faces: int, vertex_colors: Optional[np.ndarray] = None):
  """Vertex clustering on a regular grid, coarsened until at most `max_faces` faces remain (a mesh already
  that small is returned as it is). Each cell's vertices merge into their mean; faces that collapse or repeat
  are dropped. Crude (it can make non-manifold edges) but linear-time: xatlas needs minutes above ~50k faces,
  and the texture, not the geometry, carries the detail of a marching-cubes mesh.

  Returns (vertices [V', 3], faces [F', 3], vertex_colors [V', C] float or None)."""
  v, f = check_mesh(vertices, faces)
  vc = None if vertex_colors is None else np.asarray(vertex_colors, np.float64)
  if len(f) <= max_faces:
    return v, f, vc
  extent = float((v.max(0) - v.min(0)).max())
  edge = float(np.linalg.norm(v[f[:, 0]] - v[f[:, 1]], axis=-1).mean())
  cell = edge * np.sqrt(len(f) / max_faces)
  for _ in range(8):
    key = np.floor((v - v.min(0)) / cell).astype(np.int64)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    nf = inverse[f]
    nf = nf[(nf[:, 0] != nf[:, 1]) & (nf[:, 1] != nf[:, 2]) & (nf[:, 0] != nf[:, 2])]
    _, first = np.unique(np.sort(nf, 1), axis=0, return_index=True)
    nf = nf[np.sort(first)]
    if len(nf) <= max_faces or cell > extent:
      break
    cell *= np.sqrt(len(nf) / max_faces) * 1.05
  nv = np.zeros((len(counts), 3))
  np.add.at(nv, inverse, v)
  nv /= counts[:, None]
  if vc is not None:
    c = np.zeros((len(counts), vc.shape[1]))
    np.add.at(c, inverse, vc)
    vc = c / counts[:, None]
  used = np.unique(nf)
  remap = np.full(len(nv), -1, np.int64)
  remap[used] = np.arange(len(used))
  return nv[used], remap[nf], None if vc is None else vc[used]


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int = 1024, padding: int = 2) -> Atlas:
  """xatlas charts packed into a size x size square (about `padding` texels apart); the input's faces,
  re-indexed. xatlas's own packed rectangle (its texel density is set from the surface area to fill ~size^2)
  is scaled uniformly into the unit square."""
  v, f = check_mesh(vertices, faces)
  xatlas = optional.xatlas()
  atlas = xatlas.Atlas()
  atlas.add_mesh(v.astype(np.float32), f.astype(np.uint32))
  area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=-1).sum()
  pack = xatlas.PackOptions()
  pack.texels_per_unit = float(size * np.sqrt(0.55 / max(area, 1e-12)))   # ~55% of the square for the charts
  pack.padding = int(padding)
  pack.bilinear = True
  atlas.generate(xatlas.ChartOptions(), pack)
  if atlas.atlas_count != 1:
    raise RuntimeError(f'xatlas made {atlas.atlas_count} atlases, expected 1')
  vmapping, indices, uv = atlas[0]
  w, h = atlas.width, atlas.height
  uv = np.asarray(uv, np.float64) * np.array([w, h]) / max(w, h)
  return Atlas(v[vmapping.astype(np.int64)], indices.astype(np.int64), uv, vmapping.astype(np.int64))


def uv_to_pixel(uv: np.ndarray, size: int) -> np.ndarray:
  """UV [..., 2] -> continuous image coordinates [..., 2] (column, row) with texel centres at integers."""
  return np.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5], -1)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Which triangle covers each texel centre, and where.

  uv [V, 2], faces [F, 3] -> triangle [size, size] int64 (-1: no triangle), barycentric [size, size, 3].
  Vectorised over all (triangle, texel of its bounding box) pairs; a texel covered twice keeps one triangle.
  """
  tri_uv = uv_to_pixel(np.asarray(uv, np.float64), size)[faces]              # [F, 3, 2] (x, y)
  lo = np.clip(np.ceil(tri_uv.min(1) - 1e-9), 0, size - 1).astype(np.int64)   # texel centres at integers
  hi = np.clip(np.floor(tri_uv.max(1) + 1e-9), 0, size - 1).astype(np.int64)
  wh = np.maximum(hi - lo + 1, 0)
  count = wh[:, 0] * wh[:, 1]
  triangle = np.full((size, size), -1, np.int64)
  bary = np.zeros((size, size, 3))
  chunk = 1 << 22                                # pairs per step: bounds the memory for huge triangles
  starts = np.concatenate([[0], np.cumsum(count)])
  f0 = 0
  while f0 < len(faces):
    f1 = int(np.searchsorted(starts, starts[f0] + chunk, 'right')) - 1
    f1 = min(max(f1, f0 + 1), len(faces))
    ids = np.repeat(np.arange(f0, f1), count[f0:f1])
    local = np.arange(len(ids)) - np.repeat(starts[f0:f1] - starts[f0], count[f0:f1])
    x = lo[ids, 0] + local % wh[ids, 0]
    y = lo[ids, 1] + local // wh[ids, 0]
    a, b, c = tri_uv[ids, 0], tri_uv[ids, 1], tri_uv[ids, 2]
    p = np.stack([x, y], -1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    w0 = 1.0 - w1 - w2
    inside = ok & (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6)
    w = np.clip(np.stack([w0, w1, w2], -1)[inside], 0, None)
    triangle[y[inside], x[inside]] = ids[inside]
    bary[y[inside], x[inside]] = w / w.sum(-1, keepdims=True)
    f0 = f1
  return triangle, bary


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals [V, 3]."""
  fn = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
  n = np.zeros_like(vertices)
  for k in range(3):
    np.add.at(n, faces[:, k], fn)
  return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-20)


def bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """image [H, W, C] sampled at continuous (x, y) [P, 2] (pixel centres at integers, edges clamped) -> [P, C]."""
  h, w = image.shape[:2]
  x = np.clip(xy[:, 0], 0, w - 1)
  y = np.clip(xy[:, 1], 0, h - 1)
  x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
  y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  return ((image[y0, x0] * (1 - fx) + image[y0, x1] * fx) * (1 - fy)
          + (image[y1, x0] * (1 - fx) + image[y1, x1] * fx) * fy)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
  """Bilinear lookup of a texture [S, S, C] (uint8 or float) at UV [P, 2] -> float [P, C] (uint8 -> [0, 1])."""
  tex = np.asarray(texture, np.float64)
  if np.asarray(texture).dtype == np.uint8:
    tex = tex / 255.0
  return bilinear(tex, uv_to_pixel(np.asarray(uv, np.float64), texture.shape[0]))


def _check_views(views_rgb, views_mask, Ks, poses):
  rgb = np.asarray(views_rgb, np.float32)
  mask = np.asarray(views_mask, np.float32)
  Ks, poses = np.asarray(Ks, np.float64), np.asarray(poses, np.float64)
  n = len(rgb)
  if rgb.ndim != 4 or rgb.shape[-1] != 3 or n == 0:
    raise UserError(f'views_rgb must be [N, H, W, 3] with N >= 1, got {rgb.shape}')
  if mask.shape != rgb.shape[:3]:
    raise UserError(f'views_mask must be [N, H, W] = {rgb.shape[:3]}, got {mask.shape}')
  if Ks.shape != (n, 3, 3) or poses.shape != (n, 3, 4):
    raise UserError(f'{n} views need Ks [{n}, 3, 3] and poses [{n}, 3, 4], got {Ks.shape} and {poses.shape}')
  if not (np.isfinite(rgb).all() and np.isfinite(mask).all() and np.isfinite(Ks).all() and np.isfinite(poses).all()):
    raise UserError('views, masks and cameras must be finite')
  return rgb, mask, Ks, poses


def bake_texture(vertices: np.ndarray, faces: np.ndarray, views_rgb: np.ndarray, views_mask: np.ndarray,
                 Ks: np.ndarray, poses: np.ndarray, size: int = 1024, vertex_colors: Optional[np.ndarray] = None,
                 settings: Optional[BakeSettings] = None, stats: Optional[dict] = None
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A texture baked from posed views (module docstring).

  vertices [V, 3], faces [F, 3]; views_rgb [N, H, W, 3] float in [0, 1]; views_mask [N, H, W] in [0, 1];
  Ks [N, 3, 3]; poses [N, 3, 4] world->camera; vertex_colors [V, 3] (uint8 or float in [0, 1]) fill the
  texels no view sees. `size` overrides settings.size. Returns (vertices' [V', 3], faces' [F, 3], uv [V', 2],
  texture [size, size, 3] uint8). `stats` (a dict) receives texel counts and seconds per step.
  """
  s = dataclasses.replace(settings or BakeSettings(), size=int(size))
  if s.size < 8:
    raise UserError(f'texture size {s.size}: must be >= 8')
  v, f = check_mesh(vertices, faces)
  rgb, mask, Ks, poses = _check_views(views_rgb, views_mask, Ks, poses)
  if vertex_colors is not None:
    vc = np.asarray(vertex_colors)
    if vc.shape[0] != len(v) or vc.ndim != 2 or vc.shape[1] < 3:
      raise UserError(f'vertex_colors must be [{len(v)}, 3], got {vc.shape}')
    vertex_colors = vc[:, :3] / 255.0 if vc.dtype == np.uint8 else vc[:, :3].astype(np.float64)
  t = {'start': time.time()}

  v, f, vertex_colors = simplify(v, f, int(s.max_faces), vertex_colors)
  atlas = uv_atlas(v, f, s.size, s.padding)
  t['atlas'] = time.time()
  triangle, bary = rasterize_uv(atlas.uv, atlas.faces, s.size)
  covered = triangle >= 0
  tri = triangle[covered]                                      # [T]
  w = bary[covered]                                            # [T, 3]
  corners = atlas.faces[tri]
  points = np.einsum('tk,tkc->tc', w, atlas.vertices[corners])
  normals = np.einsum('tk,tkc->tc', w, vertex_normals(v, f)[atlas.vmapping][corners])
  normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-20)
  t['rasterize'] = time.time()

  acc = np.zeros((len(tri), 3))
  wsum = np.zeros(len(tri))
  samples = []                                                 # per view (texel, weight, colour) for robust_steps
  inter = raycast.intersector(v, f)
  _, h, wd, _ = rgb.shape
  for i in range(len(rgb)):
    R, tv = poses[i][:, :3], poses[i][:, 3]
    hits = raycast.cast(v, f, Ks[i], poses[i], h, wd, pixel_offset=s.pixel_offset, mesh_intersector=inter)
    cam = points @ R.T + tv                                    # [T, 3] camera coordinates
    z = cam[:, 2]
    front = z > 1e-6
    proj = cam @ Ks[i].T
    xy = proj[:, :2] / np.where(front, z, 1.0)[:, None] - s.pixel_offset
    px = np.rint(xy).astype(np.int64)
    inside = front & (px[:, 0] >= 0) & (px[:, 0] < wd) & (px[:, 1] >= 0) & (px[:, 1] < h)
    px = np.clip(px, 0, [wd - 1, h - 1])
    hit_depth = hits.depth[px[:, 1], px[:, 0]]
    seen = inside & hits.mask[px[:, 1], px[:, 0]] & (np.abs(z - hit_depth) < s.depth_tolerance)
    to_cam = raycast.camera_center(poses[i])[None] - points
    # |cos|: the depth test already says which side is seen, and meshes come with either winding
    cos = np.abs((normals * to_cam).sum(-1)) / np.maximum(np.linalg.norm(to_cam, axis=-1), 1e-20)
    seen &= cos > s.min_cos
    idx = np.nonzero(seen)[0]
    if s.mask_threshold > 0:
      idx = idx[bilinear(mask[i][..., None], xy[idx])[:, 0] >= s.mask_threshold]
    weight = cos[idx] ** s.cos_power
    sample = bilinear(rgb[i], xy[idx])
    acc[idx] += weight[:, None] * sample
    wsum[idx] += weight
    if s.robust_steps:
      samples.append((idx.astype(np.int32), weight.astype(np.float32), sample.astype(np.float32)))
  seen = wsum > 0
  mean = acc[seen] / wsum[seen, None]
  for _ in range(int(s.robust_steps)):     # IRLS, Cauchy weights: views that disagree with the consensus
    acc[:], wsum[:] = 0.0, 0.0             # (a misplaced surface shows them other content) count less
    full = np.zeros((len(tri), 3))
    full[seen] = mean
    for idx, weight, sample in samples:
      r2 = ((sample - full[idx]) ** 2).sum(-1)
      wr = weight * s.robust_scale ** 2 / (s.robust_scale ** 2 + r2)
      acc[idx] += wr[:, None] * sample
      wsum[idx] += wr
    mean = acc[seen] / wsum[seen, None]
  t['views'] = time.time()

  colour = np.zeros((len(tri), 3))
  colour[seen] = mean
  image = np.zeros((s.size, s.size, 3))
  if vertex_colors is not None:
    colour[~seen] = np.einsum('tk,tkc->tc', w[~seen], vertex_colors[atlas.vmapping][corners[~seen]])
    filled = covered
  else:
    filled = np.zeros((s.size, s.size), bool)
    filled[covered] = seen
  image[covered] = colour
  if filled.any():                   # holes (without vertex colours), then everything outside the charts
    _, (ry, rx) = ndimage.distance_transform_edt(~filled, return_indices=True)
    image = image[ry, rx]
  texture = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
  t['fill'] = time.time()
  if stats is not None:
    stats.update(texels=int(covered.sum()), texels_seen=int(seen.sum()), charts_vertices=len(atlas.vertices),
                 faces=int(len(f)), seconds={k: t[k] - t[p] for p, k in zip(['start', 'atlas', 'rasterize', 'views'],
                                                          ['atlas', 'rasterize', 'views', 'fill'])})
  return atlas.vertices, atlas.faces, atlas.uv, texture
