"""Mesh files that other tools open (trimesh writes them): GLB (glTF binary) and OBJ + MTL + PNG texture.

Every file is written atomically (hv_jax.atomic: temporary file in the same folder, then os.replace); the
files of a set are written texture first, OBJ last, so an OBJ on disk always finds its MTL and PNG.
Axes: the project's meshes are z-up (SyncDreamer's world frame: the cameras orbit +z). glTF is y-up by its
spec, and Blender's and most viewers' OBJ import assume y-up too, so the files hold (x, z, -y) (`Y_UP`, a
rotation of -90 degrees about x): the object stands upright in a viewer, its front (azimuth 0, +x) kept.
mesh.ply stays in the project's frame.

The textured material is glTF PBR with metallic 0 and roughness 1 (a plain diffuse look in viewers);
the OBJ's MTL names the PNG as map_Kd, with Kd 1 and Ks 0 (the texture as it is, no highlight).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from hv_jax import atomic, optional
from hv_jax.export import texture as texture_lib
from hv_jax.errors import UserError

TEXTURE_NAME = 'mesh_texture'   # the PNG of an OBJ is mesh_texture.png beside it
Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])   # z-up -> y-up: (x, y, z) -> (x, z, -y)


def to_y_up(vertices: np.ndarray) -> np.ndarray:
  """Vertices [V, 3] of the project's z-up frame in the y-up frame of the written files."""
  return np.asarray(vertices, np.float64) @ Y_UP.T


def _colors_u8(vertex_colors, n: int) -> np.ndarray:
  vc = np.asarray(vertex_colors)
  if vc.ndim != 2 or vc.shape[0] != n or vc.shape[1] not in (3, 4):
    raise UserError(f'vertex_colors must be [{n}, 3], got {vc.shape}')
  if vc.dtype != np.uint8:
    vc = np.clip(np.rint(np.asarray(vc, np.float64) * 255), 0, 255).astype(np.uint8)
  return vc[:, :3]


def _texture_u8(texture) -> np.ndarray:
  tex = np.asarray(texture)
  if tex.ndim != 3 or tex.shape[-1] != 3 or min(tex.shape[:2]) < 1:
    raise UserError(f'texture must be [H, W, 3], got {tex.shape}')
  if tex.dtype != np.uint8:
    tex = np.clip(np.rint(np.asarray(tex, np.float64) * 255), 0, 255).astype(np.uint8)
  return tex


def _trimesh(vertices, faces, vertex_colors=None, uv=None, texture=None, name: str = TEXTURE_NAME):
  """A y-up trimesh.Trimesh (not processed: no vertex is merged or dropped) with its colours or texture."""
  trimesh = optional.trimesh()
  v, f = texture_lib.check_mesh(vertices, faces)
  v = to_y_up(v)
  if (uv is None) != (texture is None):
    raise UserError('a textured mesh needs both uv and texture')
  if uv is not None:
    uv = np.asarray(uv, np.float64)
    if uv.shape != (len(v), 2) or not np.isfinite(uv).all():
      raise UserError(f'uv must be finite [{len(v)}, 2], got {uv.shape}')
    material = trimesh.visual.material.PBRMaterial(
        name=name, baseColorTexture=Image.fromarray(_texture_u8(texture)), metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
  elif vertex_colors is not None:
    visual = trimesh.visual.ColorVisuals(vertex_colors=_colors_u8(vertex_colors, len(v)))
  else:
    visual = None
  return trimesh.Trimesh(v, f, visual=visual, process=False)


def write_glb(path, vertices: np.ndarray, faces: np.ndarray, vertex_colors: Optional[np.ndarray] = None,
              uv: Optional[np.ndarray] = None, texture: Optional[np.ndarray] = None) -> str:
  """A GLB file (y-up: `to_y_up`): vertex colours [V, 3] (uint8, or float in [0, 1]) as COLOR_0, or with uv [V, 2] (OBJ
  convention, v up) and texture [S, S, 3] a baseColorTexture. Returns the path."""
  mesh = _trimesh(vertices, faces, vertex_colors, uv, texture)
  data = mesh.export(file_type='glb')
  atomic.write_bytes(path, data)
  return str(path)


def write_obj(path, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray) -> dict:
  """PATH (.obj), PATH's stem + .mtl and mesh_texture.png beside it: a textured OBJ set (y-up: `to_y_up`).

  Returns {'obj': path, 'mtl': path, 'texture': path}."""
  path = Path(path)
  mesh = _trimesh(vertices, faces, uv=uv, texture=texture)
  mtl_name = path.with_suffix('.mtl').name
  text, files = optional.trimesh().exchange.obj.export_obj(
      mesh, include_normals=False, include_color=False, include_texture=True, return_texture=True,
      mtl_name=mtl_name, header=None)
  written = {}
  for name, data in sorted(files.items(), key=lambda kv: kv[0] == mtl_name):    # images, then the MTL
    if name != Path(name).name:
      raise RuntimeError(f'trimesh named an OBJ side file {name!r} outside the folder')
    if name == mtl_name:      # trimesh's defaults (Kd, Ks 0.4) darken the texture in viewers that multiply
      data = re.sub(rb'(?m)^Kd .*$', b'Kd 1.0 1.0 1.0', re.sub(rb'(?m)^Ks .*$', b'Ks 0.0 0.0 0.0', data))
    atomic.write_bytes(path.parent / name, data)
    written['mtl' if name == mtl_name else 'texture'] = str(path.parent / name)
  atomic.write_text(path, text)
  written['obj'] = str(path)
  return written


def _views(views, cameras):
  """(rgb [N, H, W, 3], mask [N, H, W], Ks [N, 3, 3], poses [N, 3, 4]) from export_asset's arguments."""
  rgb, mask = (views.rgb, views.mask) if hasattr(views, 'rgb') else views
  rgb = np.asarray(rgb)
  if cameras is None:
    from hv_jax.models.cameras import default_cameras   # the 16-view set (SyncDreamer's cameras)
    if rgb.ndim != 4 or rgb.shape[0] != 16:
      raise UserError(f'views without cameras must be the 16-view set [16, H, W, 3], got {rgb.shape}')
    Ks, poses, _ = default_cameras(16, rgb.shape[1])
  else:
    Ks, poses = cameras[:2]
  return rgb, np.asarray(mask), np.asarray(Ks), np.asarray(poses)


def export_asset(out_dir, vertices: np.ndarray, faces: np.ndarray, vertex_colors: Optional[np.ndarray] = None,
                 views=None, cameras=None, texture: bool = True, texture_size: int = 1024,
                 bake_settings: Optional[texture_lib.BakeSettings] = None, keep_arrays: bool = False) -> dict:
  """OUT/mesh.glb, and with texture=True and views, a textured mesh.glb plus mesh.obj + mesh.mtl +
  mesh_texture.png (the texture baked from the views: hv_jax.export.texture.bake_texture).

  views: (rgb [N, H, W, 3] in [0, 1], mask [N, H, W]) or an object with .rgb and .mask (hv_jax.neus.data.Views);
  cameras: (Ks [N, 3, 3], poses [N, 3, 4]); None means the 16-view set (hv_jax.models.cameras.default_cameras)
  at the views' size. Without views (or texture=False) mesh.glb has the vertex colours.
  Returns {'glb': path, ('obj', 'mtl', 'texture': paths, 'bake': stats,) 'textured': bool, 'seconds': {...},
  with keep_arrays 'arrays': the exported mesh (vertices, faces, and uv + texture or vertex_colors: what
  write_preview takes)}.
  """
  out = Path(out_dir)
  seconds = {}
  result = {'textured': bool(texture and views is not None)}
  if result['textured']:
    t0 = time.time()
    rgb, mask, Ks, poses = _views(views, cameras)
    stats = {}
    v2, f2, uv, tex = texture_lib.bake_texture(vertices, faces, rgb, mask, Ks, poses, size=int(texture_size),
                                               vertex_colors=vertex_colors, settings=bake_settings, stats=stats)
    seconds['bake'] = time.time() - t0
    result['bake'] = stats
    t0 = time.time()
    result.update(write_obj(out / 'mesh.obj', v2, f2, uv, tex))
    seconds['obj'] = time.time() - t0
    t0 = time.time()
    result['glb'] = write_glb(out / 'mesh.glb', v2, f2, uv=uv, texture=tex)
    if keep_arrays:
      result['arrays'] = {'vertices': v2, 'faces': f2, 'uv': uv, 'texture': tex}
  else:
    t0 = time.time()
    result['glb'] = write_glb(out / 'mesh.glb', vertices, faces, vertex_colors)
    if keep_arrays:
      result['arrays'] = {'vertices': vertices, 'faces': faces, 'vertex_colors': vertex_colors}
  seconds['glb'] = time.time() - t0
  result['seconds'] = seconds
  return result
