"""Renders of a coloured or textured mesh (hv_jax.raycast) and the preview files: a turntable GIF and a PNG.

`render` is the plain image of the mesh at one camera (colours as stored, no lighting): the re-renders that
the texture validation compares with the views. `write_preview` adds a Lambert factor (a light at the camera)
and frames the mesh: its bounding box is centred at the origin and scaled to a largest side of 1, which is
the GSO-eval normalisation, and it turns about +z on SyncDreamer's cameras (distance 1.5, focal 280 at 256).
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Optional

import numpy as np

from hv_jax import atomic, optional, raycast
from hv_jax.export import texture as texture_lib
from hv_jax.errors import UserError

PREVIEW_AMBIENT = 0.35     # Lambert: colour * (ambient + (1 - ambient) * |cos(normal, view ray)|)


def _colour_source(vertices, vertex_colors, uv, texture):
  if uv is not None or texture is not None:
    if uv is None or texture is None:
      raise UserError('a textured render needs both uv and texture')
    uv = np.asarray(uv, np.float64)
    if uv.shape != (len(vertices), 2):
      raise UserError(f'uv must be [{len(vertices)}, 2], got {uv.shape}')
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[-1] < 3:
      raise UserError(f'texture must be [S, S, 3], got {texture.shape}')
    return None, uv, texture[..., :3]
  if vertex_colors is None:
    return np.full((len(vertices), 3), 0.7), None, None
  vc = np.asarray(vertex_colors)
  if vc.ndim != 2 or vc.shape[0] != len(vertices) or vc.shape[1] < 3:
    raise UserError(f'vertex_colors must be [{len(vertices)}, 3], got {vc.shape}')
  return (vc[:, :3] / 255.0 if vc.dtype == np.uint8 else vc[:, :3].astype(np.float64)), None, None


def render(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, pose: np.ndarray, height: int, width: int,
           vertex_colors: Optional[np.ndarray] = None, uv: Optional[np.ndarray] = None,
           texture: Optional[np.ndarray] = None, background: float = 1.0, shading: float = 0.0,
           pixel_offset: float = 0.0, mesh_intersector=None) -> np.ndarray:
  """[H, W, 3] float image in [0, 1] of the mesh at one camera.

  Colour: vertex colours [V, 3] (uint8 or float) interpolated, or the texture [S, S, 3] looked up bilinearly
  at the interpolated UV [V, 2] (OBJ convention), or grey without either. shading = a in [0, 1] scales the
  colour by (1 - a) + a * |cos| of the face normal and the view ray (0: the stored colours as they are).
  pixel (u, v) sees the ray through (u + pixel_offset, v + pixel_offset): 0 as NeuS and the 16-view set.
  """
  v, f = texture_lib.check_mesh(vertices, faces)
  colours, uv, texture = _colour_source(v, vertex_colors, uv, texture)
  hits = raycast.cast(v, f, K, pose, height, width, pixel_offset=pixel_offset, mesh_intersector=mesh_intersector)
  image = np.full((height, width, 3), float(background))
  m = hits.mask
  if not m.any():
    return image
  if texture is not None:
    uvs = raycast.interpolate(hits, f, uv)[m]
    image[m] = texture_lib.sample_texture(texture, uvs)
  else:
    image[m] = raycast.interpolate(hits, f, colours)[m]
  if shading:
    tri = hits.triangle[m]
    n = np.cross(v[f[tri, 1]] - v[f[tri, 0]], v[f[tri, 2]] - v[f[tri, 0]])
    ray = hits.points[m] - raycast.camera_center(pose)[None]
    cos = np.abs((n * ray).sum(-1)) / np.maximum(np.linalg.norm(n, axis=-1) * np.linalg.norm(ray, axis=-1), 1e-20)
    image[m] *= ((1 - shading) + shading * cos)[:, None]
  return np.clip(image, 0.0, 1.0)


def normalize(vertices: np.ndarray) -> np.ndarray:
  """Vertices with their bounding box centred at the origin and its largest side scaled to 1."""
  v = np.asarray(vertices, np.float64)
  lo, hi = v.min(0), v.max(0)
  return (v - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-12)


def turntable(vertices: np.ndarray, faces: np.ndarray, vertex_colors=None, uv=None, texture=None, frames: int = 36,
              size: int = 256, elevation: float = 20.0) -> np.ndarray:
  """[frames, size, size, 3] uint8: the normalised mesh at azimuths 360 * i / frames, Lambert-shaded, on white."""
  v, f = texture_lib.check_mesh(vertices, faces)
  v = normalize(v)
  inter = raycast.intersector(v, f)
  K = raycast.intrinsics(size)
  out = np.empty((frames, size, size, 3), np.uint8)
  for i in range(frames):
    img = render(v, f, K, raycast.look_at_pose(360.0 * i / frames, elevation), size, size, vertex_colors, uv,
                 texture, shading=1 - PREVIEW_AMBIENT, pixel_offset=0.5, mesh_intersector=inter)
    out[i] = np.rint(img * 255).astype(np.uint8)
  return out


def write_preview(out_dir, vertices: np.ndarray, faces: np.ndarray, vertex_colors=None, uv=None, texture=None,
                  frames: int = 36, size: int = 256, elevation: float = 20.0) -> dict:
  """OUT/turntable.gif (`frames` frames, 10 per second, looping) and OUT/preview.png (a 2x2 grid of the
  frames at azimuths 0, 90, 180, 270 degrees, i.e. frames 0, F/4, F/2, 3F/4), each written atomically.

  Returns {'turntable': path, 'preview': path, 'seconds': s}."""
  if int(frames) < 1 or int(size) < 8:
    raise UserError(f'preview: frames={frames} must be >= 1 and size={size} >= 8')
  t0 = time.time()
  out = Path(out_dir)
  images = turntable(vertices, faces, vertex_colors, uv, texture, int(frames), int(size), float(elevation))
  n = len(images)
  grid = [images[(k * n) // 4] for k in range(4)]
  grid = np.concatenate([np.concatenate(grid[:2], 1), np.concatenate(grid[2:], 1)], 0)
  buf = io.BytesIO()
  optional.imageio().mimsave(buf, list(images), format='GIF', duration=100, loop=0)
  gif, png = out / 'turntable.gif', out / 'preview.png'
  atomic.write_bytes(gif, buf.getvalue())
  atomic.write_png(png, grid)
  return {'turntable': str(gif), 'preview': str(png), 'seconds': time.time() - t0}
