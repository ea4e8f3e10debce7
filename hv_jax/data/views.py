"""The 16 views on disk: strips (the sampler's output) and view folders (GSO-eval objects).

A strip is one image of the N = 16 views left to right, [H, N*W, 3] (the original `generate.py`'s layout:
256 x 4096 at full size); a view folder holds 000.png ... 015.png (RGBA). Every module that writes, reads or
splits them (sampling, studies, evaluation, E_flow, NeuS) uses these functions.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
from PIL import Image

NUM_VIEWS = 16
VIEW_FILES = tuple(f'{i:03d}.png' for i in range(NUM_VIEWS))   # a view folder's files, view 000 first


class StripError(ValueError):
  """A file that is not a readable strip of the expected size; the message is one line."""


def to_uint8(views) -> np.ndarray:
  """[..., H, W, 3] in [-1, 1] -> uint8 exactly as the original saves: ((clip(x) + 1) * 0.5 * 255).astype(uint8)."""
  x = (np.clip(np.asarray(views, np.float32), -1., 1.) + 1) * 0.5
  return (x * 255).astype(np.uint8)


def join_strip(views: np.ndarray) -> np.ndarray:
  """[N, H, W, C] views -> [H, N*W, C] strip (views left to right)."""
  return np.concatenate(list(views), axis=1)


def split_strip(strip, num_views: int = NUM_VIEWS) -> np.ndarray:
  """[H, V*W, C] image strip -> [V, H, W, C] views (np.array_split along the width, as the reference)."""
  strip = np.asarray(strip)
  if strip.ndim != 3:
    raise ValueError(f'split_strip: want an [H, W, C] image, got shape {strip.shape}')
  if strip.shape[1] % num_views:
    raise ValueError(f'split_strip: width {strip.shape[1]} is not {num_views} equal views')
  return np.stack(np.array_split(strip, num_views, axis=1))


def _open_strip(path, size: Optional[int], num_views: int):
  """(the decoded image, '') or (None, why it is not a strip of `num_views` views of size x size)."""
  if not os.path.isfile(path):
    return None, 'missing'
  try:
    img = Image.open(path)
    img.load()
  except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ... for truncated files)
    return None, f'unreadable ({type(e).__name__}: {e}; truncated?)'
  w, h = img.size
  size = h if size is None else size
  if (w, h) != (num_views * size, size):
    return None, (f'{w}x{h}, expected {num_views * size}x{size} ({num_views} views of {size}x{size} left to '
                  'right)')
  return img, ''


def strip_problem(path, size: Optional[int] = None, num_views: int = NUM_VIEWS) -> str:
  """Why `path` is not a strip of `num_views` views of size x size ('' if it is): 'missing', 'unreadable (...)'
  or its wrong size. size=None: views of any size (square)."""
  return _open_strip(path, size, num_views)[1]


def read_strip(path, size: Optional[int] = None, num_views: int = NUM_VIEWS) -> np.ndarray:
  """A strip file -> [V, H, W, 3] uint8 RGB views; StripError (one line) if it is missing, unreadable
  (truncated) or not V views of size x size (size=None: views of any size)."""
  img, problem = _open_strip(path, size, num_views)
  if problem:
    raise StripError(f'{path}: strip is {problem}')
  return split_strip(np.asarray(img.convert('RGB')), num_views)


def view_paths(folder, num_views: int = NUM_VIEWS) -> List[str]:
  """folder/000.png ... folder/015.png."""
  return [os.path.join(folder, f'{k:03d}.png') for k in range(num_views)]


def read_gt_views(folder, num_views: int = NUM_VIEWS) -> np.ndarray:
  """[V, H, W, 4] uint8 from folder/000.png ... (RGBA, as skimage.io.imread reads them); FileNotFoundError for a
  missing view."""
  views = []
  for path in view_paths(folder, num_views):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'GT view missing: {path}')
    views.append(np.asarray(Image.open(path).convert('RGBA')))
  return np.stack(views)


def resize_views(views_u8: np.ndarray, size: int) -> np.ndarray:
  """[V, H, W, C] uint8 -> [V, size, size, C] (PIL bicubic; identity when already that size)."""
  if views_u8.shape[1] == size:
    return views_u8
  return np.stack([np.asarray(Image.fromarray(v).resize((size, size), Image.BICUBIC)) for v in views_u8])
