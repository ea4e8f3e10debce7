"""Sampler input preparation: RGBA image -> [256, 256, 3] float32 in [-1, 1], elevation -> radians.

Reproduces `prepare_inputs` / `add_margin` of the original (HarmonyView / SyncDreamer `ldm/util.py`)
pixel for pixel, in numpy + PIL only (no torch, no jax):

* `crop_size != -1`: bounding box of the nonzero alpha, cropped with PIL `crop((min_x, min_y, max_x, max_y))`
  (PIL excludes the right/bottom edge, so the last mask row/column is dropped: quirk kept on purpose),
  scaled by `crop_size / max(h, w)` to `(int(scale*w), int(scale*h))` with BICUBIC, pasted centred on a
  transparent `image_size` square.
* `crop_size == -1`: pasted centred on a transparent square of side `max(h, w)`, resized to `image_size`
  with BICUBIC.
* Then `/255`, RGB composited on white with the alpha (`rgb*a + 1 - a`), scaled to [-1, 1].

The original assumes an RGBA input and crashes (or silently misbehaves) on anything else; here every
input problem is an `InputError` with a one-line message. Where the original works, the output is
identical (tests/test_preprocess.py compares against a transcription of it).
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
from PIL import Image

from hv_jax.data.views import VIEW_FILES

PathLike = Union[str, os.PathLike]

ELEVATION_RANGE = (-10.0, 40.0)   # degrees; the SyncDreamer README's supported input elevations
IMAGE_SUFFIXES = ('.png', '.webp', '.tif', '.tiff', '.gif', '.bmp', '.jpg', '.jpeg')

# Modes whose extra band is a real alpha channel ('LAB' also has an 'A' band, which is not alpha).
_ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')
# Modes that may carry a colour-key transparency (`info['transparency']`, e.g. a PNG tRNS chunk).
_KEYED_MODES = ('P', 'L', 'RGB', '1')

_NO_ALPHA_HINT = ('SyncDreamer needs the object mask as alpha: let the sampler cut the object out '
                  '(--config.matting=auto, the default) or pass an RGBA cut-out')


class InputError(ValueError):
  """A user-facing problem with the inputs (image, elevation, crop size); the message is one line."""


def _to_rgba(img: Image.Image, name: str) -> Image.Image:
  """RGBA version of `img` (the same object if it already is), or InputError if it carries no mask."""
  mode = img.mode
  if mode == 'RGBA':
    return img
  has_alpha = mode in _ALPHA_MODES or (mode in _KEYED_MODES and 'transparency' in img.info)
  if not has_alpha:
    raise InputError(f'{name} has no alpha channel (image mode {mode}): {_NO_ALPHA_HINT}')
  try:
    return img.convert('RGBA')
  except (ValueError, OSError) as e:
    raise InputError(f'{name}: cannot convert image mode {mode} to RGBA ({e}); save it as an 8-bit RGBA PNG')


def _check_mask(img: Image.Image, name: str) -> None:
  alpha = np.asarray(img.getchannel('A'))
  if not alpha.any():
    raise InputError(f'{name}: the alpha channel is empty (fully transparent), so there is no object; '
                     'the alpha must be the object mask')
  if alpha.min() == 255:
    warnings.warn(f'{name}: the alpha channel is fully opaque; was the background removed? '
                  'SyncDreamer expects the object cut out on a transparent background', stacklevel=3)


def load_rgba(path: PathLike) -> Image.Image:
  """Open `path` as a decoded RGBA PIL image (LA, PA and colour-keyed P/L/RGB are converted).

  Raises InputError when the file is missing, unreadable, not an image, has no alpha channel, or has a
  fully transparent alpha. 16-bit RGB(A) PNG/TIFF are reduced to 8 bits by PIL on open; other modes
  without alpha (16-bit grey, float, CMYK, ...) are refused with the no-alpha message.
  """
  p = Path(path)
  if not p.exists():
    raise InputError(f'input image not found: {p}')
  if p.is_dir():
    raise InputError(f'input image is a directory, not an image file: {p}')
  try:
    with Image.open(p) as im:
      im.load()
      img = _to_rgba(im, str(p))
      if img is im:   # detach from the file before it is closed
        img = im.copy()
  except InputError:
    raise
  except Image.DecompressionBombError as e:
    raise InputError(f'{p}: image too large ({e})')
  except Image.UnidentifiedImageError:
    raise InputError(f'{p} is not an image PIL can read (expected an RGBA PNG)')
  except Exception as e:  # truncated/corrupt data, unreadable file: PIL raises OSError, SyntaxError, ...
    raise InputError(f'{p}: cannot read the image ({type(e).__name__}: {e})')
  _check_mask(img, str(p))
  return img


def add_margin(pil_img: Image.Image, color=0, size: int = 256) -> Image.Image:
  """`pil_img` pasted at ((size - w) // 2, (size - h) // 2) on a new `size` square of its mode (original)."""
  width, height = pil_img.size
  result = Image.new(pil_img.mode, (size, size), color)
  result.paste(pil_img, ((size - width) // 2, (size - height) // 2))
  return result


def _check_int(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise InputError(f'{what} must be an integer, got {value!r}')
  return int(value)


def prepare_rgba(img: Image.Image, crop_size: int = -1, image_size: int = 256) -> Image.Image:
  """The original's framing: the RGBA `image_size` square the model sees (before compositing on white).

  `crop_size` -1 keeps the framing (pad to a square, resize); otherwise the object's alpha bounding box is
  rescaled so its longer side is `crop_size` pixels (1..image_size) and centred.
  """
  image_size = _check_int(image_size, 'image_size')
  if image_size < 1:
    raise InputError(f'image_size must be positive, got {image_size}')
  crop_size = _check_int(crop_size, 'crop_size')
  if crop_size != -1 and not 1 <= crop_size <= image_size:
    raise InputError(f'crop_size must be -1 (no crop) or in [1, {image_size}], got {crop_size}')
  image_input = _to_rgba(img, 'input image')

  if crop_size != -1:
    alpha_np = np.asarray(image_input)[:, :, 3]
    if not alpha_np.any():
      raise InputError('input image: the alpha channel is empty (fully transparent), so there is no object')
    coords = np.stack(np.nonzero(alpha_np), 1)[:, (1, 0)]
    min_x, min_y = np.min(coords, 0)
    max_x, max_y = np.max(coords, 0)
    ref_img_ = image_input.crop((min_x, min_y, max_x, max_y))
    h, w = ref_img_.height, ref_img_.width
    if h == 0 or w == 0:
      raise InputError(f'input image: the object mask is only {max_x - min_x + 1}x{max_y - min_y + 1} pixels; '
                       'too small to crop (use crop_size -1)')
    scale = crop_size / max(h, w)
    h_, w_ = int(scale * h), int(scale * w)
    if h_ == 0 or w_ == 0:
      raise InputError(f'input image: the object ({w}x{h} pixels) is too thin to rescale to crop_size '
                       f'{crop_size}; use a larger crop_size or -1')
    ref_img_ = ref_img_.resize((w_, h_), resample=Image.Resampling.BICUBIC)
    return add_margin(ref_img_, size=image_size)
  image_input = add_margin(image_input, size=max(image_input.height, image_input.width))
  return image_input.resize((image_size, image_size), resample=Image.Resampling.BICUBIC)


def composite_on_white(rgba: Image.Image) -> np.ndarray:
  """RGBA -> [S, S, 3] float32 in [-1, 1]: `/255`, RGB composited on white with the alpha (the original)."""
  image_input = np.asarray(rgba)
  image_input = image_input.astype(np.float32) / 255.0
  ref_mask = image_input[:, :, 3:]
  image_input[:, :, :3] = image_input[:, :, :3] * ref_mask + 1 - ref_mask  # white background
  image_input = image_input[:, :, :3] * 2.0 - 1.0
  return np.ascontiguousarray(image_input, dtype=np.float32)


def prepare_image(img: Image.Image, crop_size: int = -1, image_size: int = 256) -> np.ndarray:
  """The original's image preprocessing: [image_size, image_size, 3] float32 in [-1, 1], white background
  (`prepare_rgba`, then `composite_on_white`)."""
  return composite_on_white(prepare_rgba(img, crop_size, image_size))


def check_elevation(deg) -> float:
  """Input-view elevation in degrees -> radians (float32 value, as the original's `np.float32(deg2rad)`).

  The model was trained for input elevations in [-10, 40] degrees; anything else is an InputError.
  """
  try:
    d = float(deg)
  except (TypeError, ValueError):
    raise InputError(f'elevation must be a number of degrees, got {deg!r}')
  if not math.isfinite(d):
    raise InputError(f'elevation must be a finite number of degrees, got {deg}')
  lo, hi = ELEVATION_RANGE
  if not lo <= d <= hi:
    raise InputError(f'elevation must be in [-10, 40] degrees, got {deg}; SyncDreamer was trained on that range')
  return float(np.float32(np.deg2rad(d)))


def prepare_inputs(image_path: PathLike, elevation_input, crop_size: int = -1, image_size: int = 256) -> dict:
  """The original's `prepare_inputs` in numpy: {'input_image': [S, S, 3] f32, 'input_elevation': [1] f32}."""
  image = prepare_image(load_rgba(image_path), crop_size=crop_size, image_size=image_size)
  elevation = np.asarray([check_elevation(elevation_input)], np.float32)
  return {'input_image': image, 'input_elevation': elevation}


def _visible(p: Path) -> bool:
  return not p.name.startswith('.')


def _is_object_folder(d: Path) -> bool:
  """All 16 views 000.png ... 015.png, or 000.png as the only image (e.g. the bundled demo, view 000 only)."""
  if not (d / '000.png').is_file():
    return False
  if all((d / name).is_file() for name in VIEW_FILES[1:]):     # a GSO-eval object folder; 000 is the input view
    return True
  return not any(c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES and c.name != '000.png'
                 for c in d.iterdir() if _visible(c))


def find_inputs(path: PathLike) -> List[Tuple[str, Path]]:
  """Inputs named by `path`, as sorted (name, image path) pairs.

  * an image file -> [(stem, file)];
  * a GSO-eval object folder (holds 000.png ... 015.png, or 000.png as its only image) ->
    [(folder name, folder/000.png)]: view 000 is the input view of the paper's protocol;
  * a folder of object folders -> one entry per object subfolder (other subfolders and files are ignored);
  * otherwise a folder of images (png, webp, tif, ...) -> one entry per image; colliding stems
    (a.png, a.webp) are named by the full file name instead.
  Nothing matching -> InputError. Files are not opened here: `load_rgba` validates each.
  """
  p = Path(path)
  if not p.exists():
    raise InputError(f'input not found: {p}')
  if p.is_file():
    return [(p.stem, p)]
  if not p.is_dir():
    raise InputError(f'input is neither a file nor a directory: {p}')
  if _is_object_folder(p):
    return [(p.name, p / '000.png')]
  entries = sorted(c for c in p.iterdir() if _visible(c))
  objects = [(c.name, c / '000.png') for c in entries if c.is_dir() and _is_object_folder(c)]
  if objects:
    return objects
  images = [c for c in entries if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES]
  if not images:
    raise InputError(f'no input images in {p}: expected RGBA images ({", ".join(IMAGE_SUFFIXES)}), '
                     'an object folder with 000.png ... 015.png, or a folder of such object folders')
  stems = [c.stem for c in images]
  return [(c.stem if stems.count(c.stem) == 1 else c.name.replace('.', '_'), c) for c in images]


def image_files(spec: str) -> List[Path]:
  """The image files named by `spec` (comma-separated files and folders; a folder's images sorted by name).

  InputError for a folder without images or two inputs with the same name (they would write the same
  outputs); a missing file is left to the reader, which says so in one line."""
  files = []
  for part in (p.strip() for p in spec.split(',') if p.strip()):
    p = Path(part).expanduser()
    if p.is_dir():
      found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES
                     and not c.name.startswith('.'))
      if not found:
        raise InputError(f'{p}: no images in this folder ({", ".join(IMAGE_SUFFIXES)})')
      files.extend(found)
    else:
      files.append(p)
  names = [f.stem for f in files]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise InputError(f'two inputs would write the same output {dup[0]}.png: rename one')
  return files
