"""The 16 fixed target cameras of SyncDreamer (`meta_info/camera-16.pkl` of the original).

Bundled as `hv_jax/assets/camera16.npz` (K for 256x256, azimuths i*pi/8, elevation 30 deg, distance 1.5,
world->camera poses [R|t]). The converter replaces these with the checkpoint's own `poses`/`Ks`/`azimuth`
buffers, which are the same values.
"""
from __future__ import annotations

import functools
import os

import numpy as np

_ASSET = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'assets', 'camera16.npz')


@functools.lru_cache(None)
def _load():
  with np.load(_ASSET) as f:
    return {k: f[k] for k in f.files}


def default_cameras(view_num: int = 16, image_size: int = 256):
  """Returns (Ks [N,3,3], poses [N,3,4], azimuth [N]) float32, as `_init_multiview` registers them."""
  if view_num != 16:
    raise ValueError(f'only the 16-view camera set is bundled, got view_num={view_num}')
  c = _load()
  ratio = image_size / 256
  K = (np.diag([ratio, ratio, 1.0]) @ c['K'].astype(np.float64)).astype(np.float32)
  Ks = np.repeat(K[None], view_num, 0)
  az = c['azimuths'].astype(np.float32)
  az = ((az + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)).astype(np.float32)
  return Ks, c['poses'].astype(np.float32), az
