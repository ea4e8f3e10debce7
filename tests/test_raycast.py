"""hv_jax.raycast: the cameras of the 16-view set, and first hits on a known mesh."""
from __future__ import annotations

import numpy as np

from hv_jax import raycast
from hv_jax.models.cameras import default_cameras


def test_look_at_pose_is_the_bundled_16_view_set():
  Ks, poses, _ = default_cameras()
  for i in range(16):
    np.testing.assert_allclose(raycast.look_at_pose(22.5 * i, 30.0), poses[i], atol=1e-6)
  np.testing.assert_allclose(raycast.intrinsics(256), Ks[0], atol=1e-6)
  np.testing.assert_allclose(raycast.camera_center(poses[0]), [1.5 * np.cos(np.pi / 6), 0, 1.5 * 0.5], atol=1e-6)


def _box(half=0.25):
  import trimesh
  m = trimesh.creation.box(extents=(2 * half,) * 3)
  return np.asarray(m.vertices), np.asarray(m.faces)


def test_cast_a_box_from_the_front():
  v, f = _box()
  K, pose = raycast.intrinsics(64), raycast.look_at_pose(0.0, 0.0)       # camera on +x, looking at -x
  hits = raycast.cast(v, f, K, pose, 64, 64)
  assert hits.mask[32, 32] and not hits.mask[0, 0]
  np.testing.assert_allclose(hits.depth[hits.mask], 1.5 - 0.25, atol=1e-6)            # the +x face, flat
  np.testing.assert_allclose(hits.points[hits.mask][:, 0], 0.25, atol=1e-6)
  # the face spans |y|, |z| <= 0.25 at depth 1.25: focal 70 -> 14 pixels each side of the centre
  cols = np.nonzero(hits.mask[32])[0]
  assert abs(len(cols) - 28) <= 1
  # interpolating the vertex positions gives back the hit points
  np.testing.assert_allclose(raycast.interpolate(hits, f, v)[hits.mask], hits.points[hits.mask], atol=1e-9)
  assert (hits.triangle[~hits.mask] == -1).all() and (hits.triangle[hits.mask] >= 0).all()


def test_elevated_camera_sees_the_top():
  v, f = _box()
  hits = raycast.cast(v, f, raycast.intrinsics(64), raycast.look_at_pose(0.0, 60.0), 64, 64)
  assert (hits.points[hits.mask][:, 2] > 0.25 - 1e-6).any()          # some hits on the top face z = 0.25
  assert raycast.silhouette(v, f, raycast.intrinsics(64), raycast.look_at_pose(0.0, 60.0), 64).sum() == hits.mask.sum()
