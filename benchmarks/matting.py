"""Mask IoU of the matting methods on GSO views composited onto four kinds of background (docs/matting.md).

  PYTHONPATH=. python benchmarks/matting.py --gso PATH/gso-eval [--views 000,004,008] [--rembg-model FILE]
      [--json results.json]

For every object folder of `--gso` (16 RGBA views each, GT alpha known) and each of `--views`, the view's RGB
is composited with its GT alpha onto (a) white, (b) a random plain colour, (c) a smooth two-colour gradient
with vignetting and sensor noise, (d) a real photograph (scikit-image's bundled `skimage.data` images,
randomly cropped), and every method mattes the composite without seeing the alpha. Prints the mean and
minimum IoU of (matte > 0.5) against (GT alpha > 0.5) per method and background kind, and seconds per image.
The backgrounds are drawn from a fixed seed, so reruns composite the same images.

A second table is NeuS's case (hv_jax.reconstruct on views without alpha): all 16 views of every object on
white, masked by `plain` and by the original's rule (foreground unless all three channels > 0.99).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

from hv_jax.data import matting

KINDS = ('white', 'plain colour', 'gradient+vignette+noise', 'photograph')
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'colorwheel',
          'retina', 'motorcycle_left', 'logo')


def photographs():
  """RGB uint8 photographs bundled with scikit-image (no download): the ones that exist in this version."""
  from skimage import data
  out = []
  for name in PHOTOS:
    try:
      img = np.asarray(getattr(data, name)())
    except Exception:  # noqa: BLE001  (an image that needs a download in this scikit-image version)
      continue
    if img.ndim == 3 and img.shape[-1] >= 3 and min(img.shape[:2]) >= 256:
      out.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
  if not out:
    raise SystemExit('no scikit-image photograph available')
  return out


def background(kind: str, size: int, rng: np.random.Generator, photos) -> np.ndarray:
  """[size, size, 3] float32 in [0, 255]."""
  if kind == 'white':
    return np.full((size, size, 3), 255.0, np.float32)
  if kind == 'plain colour':
    return np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)).astype(np.float32)
  if kind == 'gradient+vignette+noise':
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * np.pi)
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing='ij')
    t = np.clip((x * np.cos(theta) + y * np.sin(theta)) / 2 + 0.5, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    img = img * (1 - rng.uniform(0.2, 0.45) * (x * x + y * y)[..., None] / 2)     # vignetting
    img = img + rng.normal(0, rng.uniform(2, 5), img.shape)                       # sensor noise
    return np.clip(img, 0, 255).astype(np.float32)
  photo = photos[rng.integers(len(photos))]
  h, w = photo.shape[:2]
  side = int(rng.integers(256, min(h, w) + 1))
  y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
  crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(crop, np.float32)


def composite(rgba: np.ndarray, bg: np.ndarray) -> np.ndarray:
  a = rgba[..., 3:].astype(np.float32) / 255.0
  return np.clip(np.round(rgba[..., :3] * a + bg * (1 - a)), 0, 255).astype(np.uint8)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
  p, g = pred > 0.5, gt > 0.5
  union = (p | g).sum()
  return float((p & g).sum() / union) if union else 1.0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--gso', required=True, help='the GSO-eval folder (object folders of 000.png ... 015.png)')
  p.add_argument('--views', default='000,004,008')
  p.add_argument('--rembg-model', default='', help='also run rembg with this model file')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--json', default='', help='write every per-image IoU here')
  a = p.parse_args(argv)
  objects = sorted(d for d in os.listdir(a.gso) if os.path.isfile(os.path.join(a.gso, d, '000.png')))
  methods = {'plain': dict(method='plain'), 'plain + GrabCut': dict(method='plain', refine='grabcut')}
  if a.rembg_model:
    methods['rembg'] = dict(method='rembg', session=matting.rembg_session(a.rembg_model))
  rng = np.random.default_rng(a.seed)
  photos = photographs()
  rows = []
  for obj in objects:
    for view in a.views.split(','):
      rgba = np.asarray(Image.open(os.path.join(a.gso, obj, f'{view}.png')).convert('RGBA'))
      gt = rgba[..., 3].astype(np.float32) / 255.0
      for kind in KINDS:
        img = composite(rgba, background(kind, rgba.shape[0], rng, photos))
        for name, kw in methods.items():
          t0 = time.perf_counter()
          try:
            alpha = matting.matte(img, name=f'{obj}/{view}', **kw)
            err = None
          except matting.MattingError as e:
            alpha, err = np.zeros_like(gt), str(e)
          rows.append({'object': obj, 'view': view, 'background': kind, 'method': name, 'iou': iou(alpha, gt),
                       'seconds': time.perf_counter() - t0, 'error': err})
    print(f'{obj}: done', file=sys.stderr, flush=True)
  print(f'\n{len(objects)} objects x {len(a.views.split(","))} views; IoU of (matte > 0.5) vs (GT alpha > 0.5)\n')
  print('| method | background | mean IoU | min IoU | refused | s / image |')
  print('|---|---|---|---|---|---|')
  for name in methods:
    for kind in KINDS:
      r = [x for x in rows if x['method'] == name and x['background'] == kind]
      ious = np.array([x['iou'] for x in r])
      print(f"| {name} | {kind} | {ious.mean():.4f} | {ious.min():.4f} | {sum(x['error'] is not None for x in r)} "
            f"| {np.median([x['seconds'] for x in r]):.3f} |")
  # NeuS: the 16 views of every object on white, as the sampler writes them
  neus = {'plain': [], "the original's white rule": []}
  for obj in objects:
    for k in range(16):
      rgba = np.asarray(Image.open(os.path.join(a.gso, obj, f'{k:03d}.png')).convert('RGBA'))
      gt = rgba[..., 3].astype(np.float32) / 255.0
      img = composite(rgba, background('white', rgba.shape[0], rng, photos))
      neus['plain'].append(iou(matting.matte(img, 'plain'), gt))
      neus["the original's white rule"].append(iou((~np.all(img / 255.0 > 0.99, -1)).astype(np.float32), gt))
  print(f'\nNeuS masks: {len(objects)} objects x 16 views on white (no alpha)\n')
  print('| mask | mean IoU | min IoU |')
  print('|---|---|---|')
  for name, v in neus.items():
    print(f'| {name} | {np.mean(v):.4f} | {np.min(v):.4f} |')
  if a.json:
    with open(a.json, 'w') as f:
      json.dump({'composites': rows, 'neus_masks': neus}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
