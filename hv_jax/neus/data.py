"""Training data of the NeuS stage: 16 views -> colours, masks and rays (RendererTrainer._init_dataset).

Inputs:
- a 256x4096 strip (16 views of 256x256 left to right), as `hv_jax.sample` and the original write them;
- or a folder of 16 views `000.png ... 015.png` (a GSO-eval object folder).

Colours are composited on white. Masks (`matting`): 'auto' (the default) takes the alpha channel when the
images carry a usable one, else a matte of each view (hv_jax.data.matting: 'plain' for the generated views
on white, or 'rembg' with a model file), as the original masks its generated views with a segmentation
network (carvekit) before NeuS. 'white' is the rule the original applies to pick its foreground rays
(`pseudo_fg`: a pixel is foreground unless all three channels are > 0.99). The log says which ran.

Rays follow `_construct_ray_batch`: pixel (u, v) at integer coordinates, d = normalize(R^T K^-1 [u, v, 1]),
o = -R^T t; order view-major, then row, then column.

Batches follow `training_step`: `batch_num` rays from a shuffled list of all rays plus `fg_num` rays from a
shuffled list of the pseudo-foreground rays, each list reshuffled when the next batch would run past its
end. Here the permutation of each pass is drawn from (seed, pass index), so the batch of any step is a pure
function of (seed, step) and a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from hv_jax.data import matting as matting_lib
from hv_jax.data.views import NUM_VIEWS, VIEW_FILES, join_strip, split_strip
from hv_jax.models.cameras import default_cameras

IMAGE_SIZE = 256


class ViewsError(ValueError):
  """Unusable reconstruction input; the message is one line."""


@dataclasses.dataclass
class Views:
  rgb: np.ndarray      # [16, H, W, 3] float32 in [0, 1], composited on white
  mask: np.ndarray     # [16, H, W] float32 in [0, 1]
  mask_source: str     # 'alpha' | 'plain' | 'rembg' | 'white-background'


def _open(path: Path) -> Image.Image:
  try:
    img = Image.open(path)
    img.load()
  except FileNotFoundError:
    raise ViewsError(f'{path}: no such file') from None
  except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
    raise ViewsError(f'{path}: not a readable image ({type(e).__name__}: {e})') from None
  return img


def _split(img: Image.Image, where: str) -> Tuple[np.ndarray, np.ndarray | None]:
  """uint8 RGB [H, W, 3] and alpha [H, W] (None without alpha)."""
  if img.mode in ('RGBA', 'LA', 'PA') or 'transparency' in img.info:
    a = np.asarray(img.convert('RGBA'))
    return a[..., :3], a[..., 3]
  if img.mode not in ('RGB', 'L', 'P', 'I;16', 'I', 'F', 'CMYK', 'YCbCr'):
    raise ViewsError(f'{where}: unsupported image mode {img.mode}')
  return np.asarray(img.convert('RGB')), None


MATTING = ('auto', 'alpha', 'plain', 'rembg', 'white')


def load_views(path, image_size: int = IMAGE_SIZE, matting: str = 'auto', model: str = '', session=None) -> Views:
  """Reads a strip or a folder of 16 views; ViewsError on wrong sizes, missing views or an empty mask.

  matting: how the masks are made (module docstring); model / session: the rembg model file or session."""
  if matting not in MATTING:
    raise ViewsError(f'unknown matting {matting!r}: use one of {", ".join(MATTING)}')
  path = Path(path)
  if path.is_dir():
    files = [path / name for name in VIEW_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
      raise ViewsError(f'{path}: missing view(s) {", ".join(missing)} (a folder needs 000.png ... 015.png)')
    rgbs, alphas = [], []
    for f in files:
      img = _open(f)
      if img.size != (image_size, image_size):
        raise ViewsError(f'{f}: expected {image_size}x{image_size}, got {img.size[0]}x{img.size[1]}')
      rgb, a = _split(img, str(f))
      rgbs.append(rgb)
      alphas.append(a)
    if any(a is None for a in alphas) and not all(a is None for a in alphas):
      raise ViewsError(f'{path}: some views have an alpha channel and some do not')
    rgb = np.stack(rgbs)
    alpha = None if alphas[0] is None else np.stack(alphas)
  elif path.is_file():
    img = _open(path)
    want = (image_size * NUM_VIEWS, image_size)
    if img.size != want:
      raise ViewsError(f'{path}: expected a {want[0]}x{want[1]} strip (16 views of {image_size}x{image_size} '
                       f'left to right), got {img.size[0]}x{img.size[1]}')
    rgb, alpha = _split(img, str(path))
    rgb = split_strip(rgb)
    if alpha is not None:
      alpha = split_strip(alpha[..., None])[..., 0]
  else:
    raise ViewsError(f'{path}: no such file or folder (give a 256x4096 strip or a folder of 16 views)')

  return views_from_arrays(rgb, alpha, matting, model, session, where=str(path))


def views_from_arrays(rgb: np.ndarray, alpha, matting: str = 'auto', model: str = '', session=None,
                      where: str = 'views') -> Views:
  """16 views rgb [16, H, W, 3] uint8 (+ alpha [16, H, W] uint8 or None) -> Views: colours on white, masks by
  `matting` (load_views' rule). ViewsError when the mask is empty in every view."""
  if matting not in MATTING:
    raise ViewsError(f'unknown matting {matting!r}: use one of {", ".join(MATTING)}')
  path = where
  has_alpha = alpha is not None and matting_lib.usable_alpha(alpha)
  if matting == 'alpha' and not has_alpha:
    raise ViewsError(f'{path}: the views have no usable alpha channel: use --config.matting=auto, plain or rembg')
  method = ('alpha' if has_alpha else ('rembg' if model or session else 'plain')) if matting == 'auto' else matting
  rgb8 = rgb
  rgb = rgb.astype(np.float32) / 255
  if method == 'alpha':
    a = alpha.astype(np.float32) / 255
    rgb = rgb * a[..., None] + (1 - a[..., None])
    mask, source = a, 'alpha'
  elif method == 'white':
    mask, source = (~np.all(rgb > 0.99, -1)).astype(np.float32), 'white-background'
  else:
    if method == 'rembg' and session is None:
      session = matting_lib.rembg_session(model)
    mask, source = np.stack([_matte_view(v, i, method, session, path) for i, v in enumerate(rgb8)]), method
  empty = [i for i in range(NUM_VIEWS) if not np.any(mask[i] > 0.5)]
  if len(empty) == NUM_VIEWS:
    raise ViewsError(f'{path}: the object mask is empty in every view ({source}): nothing to reconstruct')
  return Views(rgb.astype(np.float32), mask.astype(np.float32), source)


def _matte_view(rgb8: np.ndarray, i: int, method: str, session, path) -> np.ndarray:
  """One view's matte; a view with no foreground (a generated view can be blank) gets an empty mask, which
  load_views refuses only when every view is empty."""
  try:
    return matting_lib.matte(np.ascontiguousarray(rgb8), method, session=session, name=f'{path} view {i:03d}')
  except matting_lib.MattingError as e:
    if 'no foreground' not in str(e):
      raise
    return np.zeros(rgb8.shape[:2], np.float32)


def make_rays(Ks: np.ndarray, poses: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
  """_construct_ray_batch: rays_o, rays_d [N*H*W, 3] float32 (float32 arithmetic as the original)."""
  v, u = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing='ij')
  coords = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)                      # (u, v, 1)
  Ks = np.asarray(Ks, np.float32)
  poses = np.asarray(poses, np.float32)
  R, t = poses[:, :, :3], poses[:, :, 3:]
  d = np.einsum('pk,njk->npj', coords, np.linalg.inv(Ks).astype(np.float32))          # K^-1 (u, v, 1)
  d = np.einsum('npk,nkj->npj', d, R)                                                  # R^T d (row vectors)
  d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
  o = -np.einsum('nkj,nk->nj', R, t[..., 0])                                           # -R^T t
  o = np.broadcast_to(o[:, None], d.shape)
  return o.reshape(-1, 3).astype(np.float32), d.reshape(-1, 3).astype(np.float32)


def ray_dataset(views: Views) -> Dict[str, np.ndarray]:
  """All training rays {'rays_o', 'rays_d', 'rgb', 'mask' [.., 1]} and the pseudo-foreground index list."""
  n, h, w, _ = views.rgb.shape
  Ks, poses, _ = default_cameras(n, h)
  rays_o, rays_d = make_rays(Ks, poses, h, w)
  rgb = views.rgb.reshape(-1, 3)
  data = {'rays_o': rays_o, 'rays_d': rays_d, 'rgb': rgb, 'mask': views.mask.reshape(-1, 1)}
  data['fg_index'] = np.nonzero(np.sum(rgb > 0.99, 1) != 3)[0].astype(np.int64)   # pseudo_fg_mask
  return data


def _pass_and_offset(step: int, total: int, num: int) -> Tuple[int, int]:
  """The original walks a permutation in blocks of `num` and reshuffles once i + num >= total, so one pass
  yields max(1, ceil(total / num) - 1) blocks."""
  per_pass = max(1, -(-total // num) - 1)
  return step // per_pass, (step % per_pass) * num


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, stream: int, p: int, total: int) -> np.ndarray:
  """Pass p's shuffle of the rays (read-only: one per pass, shared by its steps; a 1M-ray permutation costs
  ~13 ms, a pass of neus_fast is ~1000 steps)."""
  perm = np.random.default_rng([seed, stream, p]).permutation(total)
  perm.flags.writeable = False
  return perm


def _block(seed: int, stream: int, step: int, total: int, num: int) -> np.ndarray:
  p, off = _pass_and_offset(step, total, num)
  perm = _permutation(seed, stream, p, total)
  if total < num:                      # fewer rays than a batch: repeat (keeps the batch shape fixed)
    return np.resize(perm, num)
  return perm[off:off + num].copy()


def batch_indices(step: int, seed: int, total: int, num: int, fg_index: np.ndarray, fg_num: int) -> np.ndarray:
  """Indices of the rays of training step `step` (random rays, then foreground rays)."""
  idx = _block(seed, 0, step, total, num)
  if fg_num > 0 and len(fg_index) > 0:
    idx = np.concatenate([idx, fg_index[_block(seed, 1, step, len(fg_index), fg_num)]])
  return idx


def write_strip(views: Views, path) -> None:
  """RGBA 256x4096 strip (rgb, mask as alpha): handy for tests and for checking what was loaded."""
  rgba = np.concatenate([views.rgb, views.mask[..., None]], -1)
  strip = join_strip(rgba)
  Image.fromarray(np.round(strip * 255).astype(np.uint8), 'RGBA').save(os.fspath(path))
