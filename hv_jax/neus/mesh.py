"""Mesh extraction of the NeuS stage (extract_fields / extract_geometry / extract_mesh of train_renderer.py).

The SDF is sampled on `resolution`^3 points `linspace(-0.6, 0.6, resolution)` per axis (float32, as
torch.linspace), points with |p| >= 1 set to 1.0, marching cubes at level 0 with PyMCubes (the original's
`mcubes`), vertices mapped back with v / (resolution - 1) * 1.2 - 0.6. Vertex colours: the colour network
at each vertex with normal = view direction = normalized SDF gradient (get_vertex_colors).

The SDF is evaluated in slabs of `slab` x-planes by one jitted function (fixed shape, the last slab padded),
so memory stays bounded at 512^3 (a slab of 16 planes = 4.2 M points).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import mcubes
import numpy as np
from tqdm import tqdm

from hv_jax import atomic
from hv_jax.neus import fields
from hv_jax.neus.fields import NeuSConfig, Params


def _sdf_fn(cfg: NeuSConfig):
  @jax.jit
  def f(params, pts):
    s = fields.sdf(params['sdf'], pts, cfg.sdf)
    return jnp.where(jnp.linalg.norm(pts, axis=-1) >= 1.0, 1.0, s)
  return f


def sdf_grid(params: Params, cfg: NeuSConfig, resolution: int = 512, bound: float = 0.6, slab: int = 16,
             progress: bool = False) -> np.ndarray:
  """[res, res, res] float32 SDF, indexed [x, y, z] like the original's meshgrid(ij)."""
  axis = np.linspace(-bound, bound, resolution, dtype=np.float32)
  f = _sdf_fn(cfg)
  out = np.empty((resolution,) * 3, np.float32)
  yz = np.stack(np.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
  slab = max(1, min(slab, resolution))
  starts = range(0, resolution, slab)
  with tqdm(starts, desc='sdf grid', unit='slab', leave=False, disable=not progress) as bar:
    for s in bar:
      xs = axis[s:s + slab]
      xs_pad = np.pad(xs, (0, slab - len(xs)), mode='edge')
      pts = np.concatenate([np.repeat(xs_pad, len(yz))[:, None], np.tile(yz, (slab, 1))], 1)
      vals = np.asarray(f(params, jnp.asarray(pts))).reshape(slab, resolution, resolution)
      out[s:s + len(xs)] = vals[:len(xs)]
  return out


def _color_fn(cfg: NeuSConfig):
  @jax.jit
  def f(params, verts):
    out, grad = fields.sdf_and_gradient(params['sdf'], verts, cfg.sdf)
    n = fields.normalize(grad)
    c = fields.color_forward(params['color'], verts, n, n, out[..., 1:], cfg.color)
    return jnp.clip(c, 0.0, 1.0)
  return f


def vertex_colors(params: Params, cfg: NeuSConfig, vertices: np.ndarray, chunk: int = 20480) -> np.ndarray:
  """get_vertex_colors: uint8 [V, 3]."""
  f = _color_fn(cfg)
  out = []
  for i in range(0, len(vertices), chunk):
    v = vertices[i:i + chunk].astype(np.float32)
    n = len(v)
    v = np.pad(v, ((0, chunk - n), (0, 0)))
    out.append(np.asarray(f(params, jnp.asarray(v)))[:n])
  cols = np.concatenate(out, 0) if out else np.zeros((0, 3), np.float32)
  return (cols * 255).astype(np.uint8)


FLOORS = ('none', 'mirror_top')


def check_floor(floor: str) -> None:
  if floor not in FLOORS:
    raise ValueError(f'mesh floor {floor!r}: expected one of {FLOORS}')


def mirror_top_floor(u: np.ndarray, bound: float) -> Tuple[np.ndarray, float]:
  """Intersects the SDF grid [x, y, z] with the half-space z >= -top, top = the highest zero crossing.

  A prior from the data, not from the original renderer: the GSO evaluation renders objects with their
  bounding box centred at the origin (eval_mesh.py's normalisation), so the bottom lies at -top. All 16
  cameras look down from 30 degrees, so nothing carves the space below the object's footprint (the visual
  hull reaches about tan(30 deg) x the footprint radius below the true bottom); the top is seen from every
  view. Wrong for an object whose box is not centred. Returns (grid, floor z); the grid is unchanged when no
  surface crosses z."""
  res = u.shape[2]
  axis = np.linspace(-bound, bound, res, dtype=np.float64)
  inside = u < 0
  cols = np.nonzero(inside.any(axis=(0, 1)))[0]
  if len(cols) == 0 or cols[-1] == res - 1:
    return u, -bound
  k = int(cols[-1])
  lo, hi = u[:, :, k].astype(np.float64), u[:, :, k + 1].astype(np.float64)
  cross = (lo < 0) & (hi >= 0)
  frac = np.where(cross, lo / np.where(cross, lo - hi, 1.0), 0.0)       # linear zero crossing in the cell
  top = axis[k] + float(frac[cross].max()) * (axis[1] - axis[0])
  floor = -top
  return np.maximum(u, (floor - axis)[None, None, :].astype(np.float32)), floor


def marching_cubes(u: np.ndarray, bound: float) -> Tuple[np.ndarray, np.ndarray]:
  """mcubes at level 0; vertices [V, 3] float64 in world units, faces [F, 3] int64."""
  vertices, faces = mcubes.marching_cubes(u, 0.0)
  return vertices / (u.shape[0] - 1.0) * (2 * bound) - bound, np.asarray(faces, np.int64)


def mesh_from_grid(params: Params, cfg: NeuSConfig, u: np.ndarray, floor: str = 'none', colors: bool = True):
  """Marching cubes of an `sdf_grid` after the floor prior: (vertices [V, 3] float64, faces [F, 3] int64,
  vertex colours uint8 [V, 3] or None). floor='mirror_top' applies `mirror_top_floor`; 'none' is the
  original."""
  check_floor(floor)
  bound = cfg.default_side_length
  if floor == 'mirror_top':
    u, _ = mirror_top_floor(u, bound)
  vertices, faces = marching_cubes(u, bound)
  cols = vertex_colors(params, cfg, vertices) if colors and len(vertices) else None
  return vertices, faces, cols


def extract_mesh(params: Params, cfg: NeuSConfig, resolution: int = 512, colors: bool = True, slab: int = 16,
                 progress: bool = False, floor: str = 'none'):
  """`sdf_grid` then `mesh_from_grid`: (vertices, faces, vertex colours or None)."""
  check_floor(floor)             # before the grid, which takes minutes at 512^3
  u = sdf_grid(params, cfg, resolution, cfg.default_side_length, slab, progress)
  return mesh_from_grid(params, cfg, u, floor, colors)


def write_ply(path, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray] = None) -> None:
  """Binary little-endian PLY (float32 xyz, optional uchar rgb, int32 triangle lists), written atomically."""
  path = os.fspath(path)
  v = np.asarray(vertices, np.float32)
  f = np.asarray(faces, np.int32)
  header = ['ply', 'format binary_little_endian 1.0', f'element vertex {len(v)}',
            'property float x', 'property float y', 'property float z']
  vdtype = [('xyz', '<f4', 3)]
  if colors is not None:
    header += ['property uchar red', 'property uchar green', 'property uchar blue']
    vdtype.append(('rgb', 'u1', 3))
  header += [f'element face {len(f)}', 'property list uchar int vertex_indices', 'end_header']
  vrec = np.empty(len(v), vdtype)
  vrec['xyz'] = v
  if colors is not None:
    vrec['rgb'] = np.asarray(colors, np.uint8)
  frec = np.empty(len(f), [('n', 'u1'), ('idx', '<i4', 3)])
  frec['n'] = 3
  frec['idx'] = f
  atomic.write_bytes(path, ('\n'.join(header) + '\n').encode('ascii') + vrec.tobytes() + frec.tobytes())
