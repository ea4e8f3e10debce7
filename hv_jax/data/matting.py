"""Foreground matting: any photo -> the object's mask (alpha), for the sampler's input and for NeuS's views.

  matte(rgb [H, W, 3] uint8, method, **options) -> alpha [H, W] float32 in [0, 1]

Methods (`METHODS`):
  alpha  the image's own alpha channel (what the original expects: an RGBA cut-out).
  plain  a classical matte for an object on a plain or smoothly varying background (studio and product
         photos, renders, generated images on white): a smooth background model fitted to the image border
         (per channel, the lowest polynomial order from constant to cubic that fits it; robust to the object
         touching the border), the background grown from the border over pixels that fit that model (so
         light parts of the object that do not touch the border stay foreground; optionally refined with
         OpenCV's GrabCut, refine='grabcut', which measured worse on every background kind of
         docs/matting.md), the largest component kept with its holes filled, then a soft edge by unmixing
         against the background model. Computed at <= `WORK_SIZE` px and brought back to full size.
  rembg  the rembg package (onnxruntime) with a model file the user gives (u2net.onnx, isnet-general-use.onnx,
         birefnet-general.onnx, ...): nothing is downloaded here (`rembg_session`).
  auto   alpha if the image has a usable one, else rembg if a model file is given, else plain (`resolve`).

`load_photo` reads any image file as uint8 RGB (+ alpha if it has one): EXIF orientation applied as viewers
do, grey, palette, CMYK, 16-bit and float images converted, huge images downscaled first. Every problem is a
`MattingError` (a UserError: one line); a usable but doubtful result (several objects, the object filling the
frame) is a logged warning. Validation on GSO views over four background kinds: docs/matting.md
(benchmarks/matting.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from absl import logging
from PIL import Image, ImageOps
from scipy import ndimage

from hv_jax.errors import UserError

METHODS = ('auto', 'alpha', 'plain', 'rembg')
WORK_SIZE = 512          # plain: the longer side (px) the mask is computed at
MAX_SIDE = 4096          # load_photo: larger images are downscaled to this longer side first
MAX_BACKGROUND_NOISE = 0.12   # plain: a border residual sigma (RGB norm, [0, 1] units) above this is not plain
REMBG_FILES = ('u2net.onnx', 'u2netp.onnx', 'silueta.onnx', 'isnet-general-use.onnx', 'birefnet-general.onnx',
               'birefnet-general-lite.onnx', 'bria-rmbg.onnx')
REMBG_HINT = ('rembg keeps its model files in ~/.u2net (or $U2NET_HOME); download one there yourself, e.g. '
              + ', '.join(REMBG_FILES[:2] + REMBG_FILES[3:5]) + ', and pass its path')


class MattingError(UserError):
  """A photo or matting problem the user can fix; the message is one line."""


# ----------------------------------------------------------------------------- reading photos

@dataclasses.dataclass
class Photo:
  rgb: np.ndarray                  # [H, W, 3] uint8
  alpha: Optional[np.ndarray]      # [H, W] uint8, or None when the file has no alpha channel
  notes: Tuple[str, ...] = ()      # what was done on reading (EXIF rotation, mode conversion, downscale)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
  """16/32-bit integer or float pixel values -> uint8 (16-bit: the high byte, rounded; float: [0, 1] or 0..255)."""
  if arr.dtype == np.uint8:
    return arr
  a = arr.astype(np.float64)
  if np.issubdtype(arr.dtype, np.floating):
    a = a * 255.0 if np.nanmax(a) <= 1.0 else a
  elif a.max(initial=0) > 255:
    a = a / 257.0          # 0..65535 -> 0..255
  return np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)


def _decode(img: Image.Image, notes: list) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  mode = img.mode
  if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):        # grey, 16-bit or float
    g = _to_uint8(np.asarray(img))
    notes.append(f'{mode} grey image converted to 8-bit RGB')
    return np.repeat(g[..., None], 3, -1), None
  if mode == 'CMYK':
    notes.append('CMYK image converted to RGB')
    return np.asarray(img.convert('RGB')), None
  has_alpha = mode in ('RGBA', 'RGBa', 'LA', 'La', 'PA') or (mode in ('P', 'L', 'RGB', '1') and 'transparency' in img.info)
  if has_alpha:
    rgba = np.asarray(img.convert('RGBA'))
    return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
  if mode != 'RGB':
    notes.append(f'{mode} image converted to RGB')
  return np.asarray(img.convert('RGB')), None


def load_photo(path, max_side: int = MAX_SIDE) -> Photo:
  """Any image file -> Photo. MattingError (one line) when it is missing or cannot be read as an image."""
  p = Path(path)
  if not p.exists():
    raise MattingError(f'input image not found: {p}')
  if p.is_dir():
    raise MattingError(f'input image is a directory, not an image file: {p}')
  notes = []
  try:
    with Image.open(p) as im:
      if im.format == 'JPEG' and max(im.size) > max_side:
        im.draft('RGB', (max_side, max_side))       # decode a JPEG at a reduced scale directly
      im.load()
      orientation = im.getexif().get(0x0112, 1)
      img = ImageOps.exif_transpose(im) if orientation not in (0, 1) else im.copy()
      if orientation not in (0, 1):
        notes.append(f'rotated by its EXIF orientation ({orientation})')
  except Image.DecompressionBombError as e:
    raise MattingError(f'{p}: image too large to open safely ({e})')
  except Image.UnidentifiedImageError:
    raise MattingError(f'{p} is not an image PIL can read')
  except Exception as e:   # truncated or corrupt data: PIL raises OSError, SyntaxError, ValueError ...
    raise MattingError(f'{p}: cannot read the image ({type(e).__name__}: {e})')
  try:
    rgb, alpha = _decode(img, notes)
  except (ValueError, OSError) as e:
    raise MattingError(f'{p}: cannot convert image mode {img.mode} to RGB ({e})')
  if max(rgb.shape[:2]) > max_side:
    s = max_side / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
    notes.append(f'downscaled from {rgb.shape[1]}x{rgb.shape[0]} to {size[0]}x{size[1]}')
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    if alpha is not None:
      alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.LANCZOS))
  if min(rgb.shape[:2]) < 8:
    raise MattingError(f'{p}: image is only {rgb.shape[1]}x{rgb.shape[0]} pixels')
  return Photo(np.ascontiguousarray(rgb), alpha, tuple(notes))


def usable_alpha(alpha: Optional[np.ndarray]) -> bool:
  """An alpha channel that is a mask: some pixels transparent and some opaque."""
  return alpha is not None and int(alpha.min()) < 128 and int(alpha.max()) >= 128


# ----------------------------------------------------------------------------- plain backgrounds

def _resize(a: np.ndarray, size: Tuple[int, int], resample=Image.Resampling.BILINEAR) -> np.ndarray:
  """[H, W] float32 or [H, W, 3] uint8 -> (w, h) `size`."""
  if a.dtype == np.uint8:
    return np.asarray(Image.fromarray(a).resize(size, resample))
  return np.asarray(Image.fromarray(a.astype(np.float32), mode='F').resize(size, resample))


ORDERS = (1, 3, 6, 10)    # constant, linear, quadratic, cubic: the number of basis terms of each


def _poly_basis(h: int, w: int) -> np.ndarray:
  """[h, w, 10] cubic basis (1, x, y, x^2, xy, y^2, x^3, x^2 y, x y^2, y^3) over x, y in [-1, 1]: a linear
  gradient times a radial vignette is cubic; the first ORDERS[k] terms are the lower orders."""
  y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing='ij')
  return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y, x ** 3, x * x * y, x * y * y, y ** 3],
                  -1).astype(np.float64)


def _border(h: int, w: int, width: int) -> np.ndarray:
  m = np.zeros((h, w), bool)
  m[:width], m[-width:], m[:, :width], m[:, -width:] = True, True, True, True
  return m


def _robust_fit(a: np.ndarray, b: np.ndarray):
  """Least squares of b on a that ignores outliers: trimmed fits on the best-fitting 60% first (the object
  may cover the rest of the border), then refits on the points within 3 noise sigmas. (coef, sigma, keep)."""
  keep = np.ones(len(b), bool)
  for _ in range(3):
    coef, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
    r = np.linalg.norm(b - a @ coef, axis=-1)
    keep = r <= np.quantile(r, 0.6)
  for _ in range(4):
    coef, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
    r = np.linalg.norm(b - a @ coef, axis=-1)
    sigma = max(1.5 * float(np.median(r[keep])), 1.0 / 255)
    new = r < 3 * sigma + 2.0 / 255
    if new.sum() < 16:
      break
    keep = new
  coef, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
  r = np.linalg.norm(b - a @ coef, axis=-1)
  return coef, max(1.5 * float(np.median(r[keep])), 1.0 / 255), keep


def background_model(img: np.ndarray, border: int):
  """A smooth background fitted to the border band: the lowest polynomial order (constant, linear, quadratic,
  cubic per channel) that fits about as well as the best, so a plain background is not extrapolated into the
  image from the parts of the border the object leaves free. Robust to the object touching the border.

  img: [h, w, 3] float in [0, 1]. Returns (bg [h, w, 3], residual [h, w] = |img - bg|, noise sigma, the
  fraction of the border that fits the model)."""
  h, w = img.shape[:2]
  basis = _poly_basis(h, w)
  band = _border(h, w, border)
  a, b = basis[band], img[band].astype(np.float64)
  fits = [_robust_fit(a[:, :n], b) for n in ORDERS]
  best = min(f[1] for f in fits)
  k = next(k for k, f in enumerate(fits) if f[1] <= 1.25 * best + 0.5 / 255)
  coef, sigma, _ = fits[k]
  bg = basis[..., :ORDERS[k]] @ coef
  resid = np.linalg.norm(img - bg, axis=-1)
  fit = float((resid[band] < 3 * sigma + 2.0 / 255).mean())
  return bg, resid, sigma, fit


def _grow_from_border(candidates: np.ndarray) -> np.ndarray:
  """The connected regions of `candidates` that touch the image border."""
  lab, _ = ndimage.label(candidates)
  touching = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
  return np.isin(lab, touching[touching > 0])


def _largest_component(mask: np.ndarray) -> Tuple[np.ndarray, int, float]:
  """(the largest 8-connected component, how many components, the second's area / the largest's)."""
  lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
  if n <= 1:
    return mask, n, 0.0
  areas = np.bincount(lab.ravel())[1:]
  order = np.argsort(areas)[::-1]
  return lab == order[0] + 1, n, float(areas[order[1]] / areas[order[0]])


def matte_plain(rgb: np.ndarray, *, refine: str = 'none', work_size: int = WORK_SIZE, threshold: float = 4.0,
                name: str = 'image') -> np.ndarray:
  """The `plain` method (module docstring). refine: 'none' (the default: the border flood and the soft edge)
  or 'grabcut' (OpenCV's GrabCut from that labelling; lower IoU on every background kind of docs/matting.md);
  threshold: how many noise sigmas from the background model a pixel may be and still count as background."""
  if refine not in ('grabcut', 'none'):
    raise ValueError(f"refine must be 'grabcut' or 'none', got {refine!r}")
  H, W = rgb.shape[:2]
  s = min(1.0, work_size / max(H, W))
  h, w = max(8, round(H * s)), max(8, round(W * s))
  small = _resize(rgb, (w, h), Image.Resampling.LANCZOS) if (h, w) != (H, W) else rgb
  img = small.astype(np.float64) / 255.0
  border = max(2, round(0.02 * min(h, w)))
  # the background is modelled and grown on a 3x3 box-filtered image: sensor noise / 3, edges moved < 1 px
  # (the soft edge below unmixes the unfiltered pixels)
  smooth = ndimage.uniform_filter(img, size=(3, 3, 1))
  bg, resid, sigma, fit = background_model(smooth, border)
  if fit < 0.4 or sigma > MAX_BACKGROUND_NOISE:
    why = (f'only {fit:.0%} of the border fits a smooth background: the object fills the frame?' if fit < 0.4 else
           f'the border varies by {sigma * 255 / np.sqrt(3):.0f} grey levels around a smooth background')
    raise MattingError(f'{name}: no plain background found ({why}): use matting=rembg with a model file, or '
                       'pass an RGBA cut-out')
  # 1. the background grown from the border over pixels that fit the model (light object parts enclosed by
  # the object stay foreground)
  t = threshold * sigma + 3.0 / 255
  bg_mask = _grow_from_border(resid < t)
  fg = ~bg_mask
  if fg.sum() < 16:
    raise MattingError(f'{name}: no foreground found (the whole image fits the background); is there an object '
                       'on it? Use matting=rembg with a model file, or pass an RGBA cut-out')
  # 2. GrabCut from that labelling: sure background far from the object, sure foreground clearly off the
  # background model inside it, the band between them left to the colour models
  if refine == 'grabcut':
    fg = _grabcut(small, fg, resid > 3 * t) | (fg & (resid > 6 * t))
  # 3. one object, no holes
  fg, n, second = _largest_component(fg)
  if n > 1 and second > 0.1:
    logging.warning('%s: %d separate objects found; kept the largest (the next is %.0f%% of its area)',
                    name, n, 100 * second)
  fg = ndimage.binary_fill_holes(fg)
  if fg[0].any() and fg[-1].any() and fg[:, 0].any() and fg[:, -1].any():
    logging.warning('%s: the object touches all four borders (it fills the frame or the background was not '
                    'plain); check the cut-out', name)
  # 4. the soft edge: in a 2-px band around the boundary, the fraction of the object in each pixel, from how
  # far it is from the background model relative to the object next to it (linear unmixing, known background)
  alpha = soft_edge(fg, img, bg, t)
  if (h, w) != (H, W):
    alpha = np.clip(_resize(alpha, (W, H)), 0.0, 1.0)
  return alpha.astype(np.float32)


def soft_edge(fg: np.ndarray, img: np.ndarray, bg: np.ndarray, t: float, width: int = 2) -> np.ndarray:
  """Binary mask -> alpha: 1 inside, 0 outside, and in the band of `width` px on each side of the boundary
  the object's fraction of the pixel, by unmixing against the known background: with F the colour of the
  nearest interior object pixel and B the background model, alpha = <I - B, F - B> / |F - B|^2 (exact for
  I = alpha F + (1 - alpha) B). Where F is too close to B to tell (a light object part on a light
  background), the binary mask stays."""
  inner = ndimage.binary_erosion(fg, iterations=width)
  alpha = fg.astype(np.float64)
  if not inner.any():
    return alpha
  band = ndimage.binary_dilation(fg, iterations=width) & ~inner
  _, (iy, ix) = ndimage.distance_transform_edt(~inner, return_indices=True)
  d = img[iy, ix] - bg
  den = (d * d).sum(-1)
  unmixed = ((img - bg) * d).sum(-1) / np.maximum(den, 1e-12)
  ok = band & (den > (2 * t) ** 2)
  alpha[ok] = np.clip(unmixed[ok], 0.0, 1.0)
  return alpha


def _grabcut(img8: np.ndarray, fg: np.ndarray, sure_fg: np.ndarray, iterations: int = 3) -> np.ndarray:
  try:
    import cv2  # lazy: opencv-python-headless (extra matting), the plain method's refinement only
  except ImportError as e:
    raise MattingError(f"refine='grabcut' needs OpenCV: pip install -e '.[matting]' ({e})")
  r = max(2, round(0.015 * min(fg.shape)))
  near = ndimage.binary_dilation(fg, iterations=r)
  inner = ndimage.binary_erosion(fg, iterations=r)
  mask = np.full(fg.shape, cv2.GC_BGD, np.uint8)
  mask[near] = cv2.GC_PR_BGD
  mask[fg] = cv2.GC_PR_FGD
  mask[inner | (sure_fg & fg)] = cv2.GC_FGD
  if not (mask == cv2.GC_BGD).any() or not ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).any():
    return fg
  bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
  cv2.grabCut(np.ascontiguousarray(img8[..., ::-1]), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
  out = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
  return out if out.sum() > 0.2 * fg.sum() else fg      # a collapsed cut keeps the flood's answer


# ----------------------------------------------------------------------------- rembg

def _model_file(model: str, prefix: str = '') -> Path:
  """The rembg model file `model` as a Path; MattingError (starting with `prefix`) if it is missing or empty."""
  p = Path(model).expanduser()
  if not p.is_file():
    raise MattingError(f'{prefix}rembg model file not found: {p} ({REMBG_HINT})')
  if p.stat().st_size == 0:
    raise MattingError(f'{prefix}rembg model file is empty: {p} ({REMBG_HINT})')
  return p


def rembg_session(model: str):
  """A rembg session on the model file `model`, with nothing downloaded.

  A file named as one of rembg's models (u2net.onnx, isnet-general-use.onnx, birefnet-general.onnx, ...)
  gets that model's own pre- and post-processing (its rembg session class); any other name runs as u2net
  (320 px input, ImageNet normalisation: rembg's u2net_custom). The session class is subclassed so that it
  loads this file instead of fetching its own (rembg's classes download on construction)."""
  if not model:
    raise MattingError(f'the rembg method needs a model file: set --config.matting_model=FILE '
                       f'(hv_jax.matte: --config.model=FILE); {REMBG_HINT}')
  p = _model_file(model)
  try:
    import onnxruntime  # lazy: optional dependency (extra matting)
    from rembg.sessions import sessions_class  # lazy: as above
  except ImportError as e:
    raise MattingError(f"the rembg method needs the rembg package: pip install -e '.[matting]' ({e})")
  named = {cls.name(): cls for cls in sessions_class}
  base = named.get(p.stem, named['u2net'])
  path = str(p.resolve())
  local = type(f'Local{base.__name__}', (base,), {'download_models': classmethod(lambda cls, *a, **k: path)})
  try:
    try:
      return local(base.name(), onnxruntime.SessionOptions(), providers=['CPUExecutionProvider'])
    except TypeError:      # rembg versions differ in how a session takes its providers
      return local(base.name(), onnxruntime.SessionOptions())
  except Exception as e:   # onnxruntime: not an ONNX model, truncated file, wrong graph
    raise MattingError(f'{p}: not a usable rembg model ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                       f'{REMBG_HINT}')


def matte_rembg(rgb: np.ndarray, session) -> np.ndarray:
  """The session's predicted mask at the image's size, float32 in [0, 1]."""
  try:
    masks = session.predict(Image.fromarray(rgb))
  except Exception as e:
    raise MattingError(f'rembg failed on the image ({type(e).__name__}: {str(e).splitlines()[0][:200]})')
  m = np.asarray(masks[0].convert('L'), np.float32) / 255.0
  if m.shape != rgb.shape[:2]:
    m = _resize(m, (rgb.shape[1], rgb.shape[0]))
  return np.nan_to_num(np.clip(m, 0.0, 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- one API

def check_settings(method: str, model: str, *, methods: Tuple[str, ...] = METHODS, method_flag: str = 'matting',
                   model_flag: str = 'matting_model') -> None:
  """A command's matting settings, checked before any work: a known method; a model file for 'rembg'; a model
  file only where it can be used ('rembg', or 'auto' for images without a usable alpha: never silently ignored),
  and then an existing, non-empty file. MattingError names the flags."""
  if method not in methods:
    raise MattingError(f'--config.{method_flag}={method!r}: unknown matting method {method!r}: use one of '
                       f'{", ".join(methods)}')
  if method == 'rembg' and not model:
    raise MattingError(f'--config.{method_flag}=rembg needs a model file: set --config.{model_flag}=FILE; '
                       f'{REMBG_HINT}')
  if not model:
    return
  if method not in ('auto', 'rembg'):
    raise MattingError(f'--config.{model_flag}={model} is never used with --config.{method_flag}={method}: set '
                       f'--config.{method_flag}=rembg (or auto), or no --config.{model_flag}')
  _model_file(model, f'--config.{model_flag}: ')


def resolve(method: str, alpha: Optional[np.ndarray], model: Optional[str]) -> str:
  """The method `auto` stands for, given the image's alpha and the configured rembg model."""
  if method not in METHODS:
    raise MattingError(f'unknown matting method {method!r}: use one of {", ".join(METHODS)}')
  if method != 'auto':
    return method
  if usable_alpha(alpha):
    return 'alpha'
  return 'rembg' if model else 'plain'


def matte(rgb: np.ndarray, method: str = 'auto', *, alpha: Optional[np.ndarray] = None, model: Optional[str] = None,
          session=None, name: str = 'image', **plain_options) -> np.ndarray:
  """rgb [H, W, 3] uint8 -> alpha [H, W] float32 in [0, 1].

  alpha: the image's own alpha channel (uint8 [H, W]) for the `alpha` / `auto` methods; model: the rembg
  model file (or a ready `session` from `rembg_session`); plain_options: `matte_plain`'s keywords."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f'matte: want a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}')
  method = resolve(method, alpha, model or session)
  if method == 'alpha':
    if alpha is None:
      raise MattingError(f'{name} has no alpha channel: use matting=plain or rembg, or pass an RGBA cut-out')
    if not usable_alpha(alpha):
      raise MattingError(f'{name}: the alpha channel is not a mask (it is '
                         f"{'fully transparent' if alpha.max() < 128 else 'fully opaque'}): use matting=plain or rembg")
    return np.asarray(alpha, np.float32) / 255.0
  if method == 'plain':
    return matte_plain(rgb, name=name, **plain_options)
  out = matte_rembg(rgb, session if session is not None else rembg_session(model))
  if (out > 0.5).sum() < 16:
    raise MattingError(f'{name}: no foreground found by the rembg model')
  return out


def cutout(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """[H, W, 4] uint8 RGBA of the image with `alpha` (float [0, 1]) as its alpha channel."""
  a = np.clip(np.round(np.asarray(alpha, np.float32) * 255.0), 0, 255).astype(np.uint8)
  return np.concatenate([rgb, a[..., None]], -1)
