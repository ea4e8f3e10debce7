"""hv_jax.scoring: a consistent synthetic 16-view set outranks its corrupted copies; plain floats; one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hv_jax import raycast, scoring
from hv_jax.errors import UserError

SIZE = 128


def _mesh(parts):
  import trimesh
  meshes = []
  for kind, size, at in parts:
    m = trimesh.creation.box(extents=size) if kind == 'box' else trimesh.creation.icosphere(3, radius=size)
    m.apply_translation(at)
    meshes.append(m)
  m = trimesh.util.concatenate(meshes)
  return np.asarray(m.vertices), np.asarray(m.faces)


def _texture(points):
  """A checker of period 0.1 whose hue turns with the point's azimuth: [P, 3] in [0, 1]."""
  checker = (np.floor(points / 0.05).astype(int).sum(-1) % 2).astype(np.float64)
  phi = np.arctan2(points[:, 1], points[:, 0])
  base = 0.5 + 0.35 * np.stack([np.cos(phi), np.cos(phi + 2.1), np.cos(phi + 4.2)], -1)
  return np.clip(base * (0.55 + 0.45 * checker[:, None]), 0, 1)


def _render(parts):
  """16 views on white [16, S, S, 3] and masks [16, S, S] of SyncDreamer's cameras (elevation 30)."""
  v, f = _mesh(parts)
  inter = raycast.intersector(v, f)
  K = raycast.intrinsics(SIZE)
  rgb = np.ones((16, SIZE, SIZE, 3), np.float32)
  mask = np.zeros((16, SIZE, SIZE), np.float32)
  for i in range(16):
    hits = raycast.cast(v, f, K, raycast.look_at_pose(22.5 * i, 30.0), SIZE, SIZE, mesh_intersector=inter)
    rgb[i][hits.mask] = _texture(hits.points[hits.mask])
    mask[i] = hits.mask
  return rgb, mask


def corrupted_sets():
  """{'gt', 'azimuth', 'object', 'blur', 'colour'}: (views, masks) of a box with a sphere on it, and copies
  with views 2, 7, 12 replaced by other azimuths / another object (a sphere), blurred, or colour-shifted."""
  rgb, mask = _render([('box', (0.5, 0.3, 0.35), (0.0, 0.0, 0.0)), ('sphere', 0.15, (0.15, 0.12, 0.22))])
  other_rgb, other_mask = _render([('sphere', 0.3, (0.0, 0.0, 0.0))])
  from scipy import ndimage
  idx = [2, 7, 12]
  out = {'gt': (rgb, mask)}
  r, m = rgb.copy(), mask.copy()
  r[idx], m[idx] = rgb[[6, 11, 0]], mask[[6, 11, 0]]
  out['azimuth'] = (r, m)
  r, m = rgb.copy(), mask.copy()
  r[idx], m[idx] = other_rgb[idx], other_mask[idx]
  out['object'] = (r, m)
  r, m = rgb.copy(), mask.copy()
  for k in idx:
    r[k] = np.stack([ndimage.gaussian_filter(rgb[k, ..., c], 1.5) for c in range(3)], -1)
    m[k] = ndimage.gaussian_filter(mask[k], 1.5)
  out['blur'] = (r, m)
  r = rgb.copy()
  for k in idx:
    r[k] = np.where(mask[k][..., None] > 0.5, rgb[k][..., [2, 0, 1]] * 0.85, 1.0)   # channels rotated, darker
  out['colour'] = (r, mask.copy())
  return out


@pytest.fixture(scope='module')
def sets():
  return corrupted_sets()


def test_clean_set_ranks_first(sets):
  rgb, mask = sets['gt']
  keys = list(sets)
  scores = [scoring.score_instance(r, m, rgb[0], mask[0]) for r, m in sets.values()]
  assert keys[scoring.rank(scores)[0]] == 'gt'
  gt = scores[0]
  assert gt['fidelity'] < 1e-6 and gt['sharpness'] < 1e-6 and gt['silhouette'] < 0.15
  by = dict(zip(keys, scores))
  # each corruption is caught by the term meant for it
  assert by['azimuth']['silhouette'] > gt['silhouette'] + 0.01
  assert by['object']['silhouette'] > gt['silhouette'] + 0.01
  assert by['blur']['sharpness'] > gt['sharpness'] + 0.05
  assert by['colour']['photometric'] > gt['photometric'] + 0.02
  for key in ('azimuth', 'object', 'blur', 'colour'):                 # and points at a corrupted view
    assert by[key]['worst_view'] in (2, 7, 12), key
  json.dumps(scores)                                              # plain floats and ints only
  assert all(type(v) in (float, int) for v in gt.values())


def test_rank_orders_by_total():
  assert scoring.rank([{'total': -1.0}, {'total': -0.2}, {'total': -0.5}]) == [1, 2, 0]


def test_view_count_and_cameras():
  rgb, mask = np.ones((16, 32, 32, 3)), np.zeros((16, 32, 32))
  mask[:, 12:20, 12:20] = 1
  sc = scoring.score_instance(rgb, mask, rgb[0], mask[0])        # textureless: finite, no NaN
  assert all(np.isfinite(v) for v in sc.values())
  u8 = scoring.score_instance((rgb * 255).astype(np.uint8), mask, rgb[0], mask[0])   # uint8 views: / 255
  assert u8 == sc
  with pytest.raises(UserError, match='cameras need 16 poses'):
    scoring.score_instance(rgb, mask, rgb[0], mask[0], cameras=(np.eye(3), np.zeros((4, 3, 4))))


@pytest.mark.parametrize('views, masks, inp, inp_mask, message', [
    ((16, 32, 32), (16, 32, 32), (32, 32, 3), (32, 32), 'views must be'),
    ((16, 32, 32, 3), (15, 32, 32), (32, 32, 3), (32, 32), 'masks must be'),
    ((16, 32, 32, 3), (16, 32, 32), (32, 32), (32, 32), 'input_rgb must be'),
    ((16, 32, 32, 3), (16, 32, 32), (32, 32, 3), (16, 16), 'input_mask must be'),
    ((16, 32, 24, 3), (16, 32, 24), (32, 32, 3), (32, 32), 'square'),
    ((16, 32, 32, 3), (16, 32, 32), (32, 32, 3), (32, 32), 'must lie in'),
])
def test_bad_shapes_give_one_line(views, masks, inp, inp_mask, message):
  with pytest.raises(UserError, match=message) as e:
    scale = 255.0 if message == 'must lie in' else 1.0            # float images in [0, 255]
    scoring.score_instance(np.ones(views) * scale, np.ones(masks), np.ones(inp), np.ones(inp_mask))
  assert '\n' not in str(e.value)
