"""Real validation of the NeuS stage: reconstruct GSO-eval objects from their 16 ground-truth views and
evaluate against the GT meshes (Chamfer, volume IoU, minutes per object).

  PYTHONPATH=. python benchmarks/neus_gso.py --gso PATH/gso-eval --out outputs/neus_gso [--objects bell,cream]
      [--no-alpha --extra=--config.matting=plain]

--no-alpha: the GT views are first written without their alpha (RGB composited on white, as generated views
come), so the masks are made by `matting` (docs/matting.md: plain against the original's white rule).

Each object runs `python -m hv_jax.reconstruct --config=configs/neus_fast.py` with --config.gt_mesh; finished
objects (metrics.json present) are skipped, so an interrupted validation resumes. Prints and writes
OUT/table.md (per object and the means; with mesh_floor set, also the metrics of the mesh before the floor).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rgb_copy(src: str, dst: str) -> str:
  """The 16 views of `src` composited on white, without alpha, in `dst` (written once)."""
  import numpy as np
  from PIL import Image
  os.makedirs(dst, exist_ok=True)
  for k in range(16):
    path = os.path.join(dst, f'{k:03d}.png')
    if not os.path.exists(path):
      rgba = np.asarray(Image.open(os.path.join(src, f'{k:03d}.png')).convert('RGBA')).astype(np.float32)
      a = rgba[..., 3:] / 255
      Image.fromarray(np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)).save(path)
  return dst


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--gso', required=True)
  p.add_argument('--out', default='outputs/neus_gso')
  p.add_argument('--objects', default='', help='comma list (default: every object folder with a model.obj)')
  p.add_argument('--config', default='configs/neus_fast.py')
  p.add_argument('--extra', default='', help='extra flags for hv_jax.reconstruct, space separated '
                                             '(--extra=--config.x=1: with the =, argparse takes it as a value)')
  p.add_argument('--no-alpha', action='store_true', help='reconstruct from RGB copies of the views (no alpha)')
  a = p.parse_args()
  names = a.objects.split(',') if a.objects else sorted(
      d for d in os.listdir(a.gso) if os.path.isfile(os.path.join(a.gso, d, 'model.obj')))
  for name in names:
    out = os.path.join(a.out, name)
    if os.path.exists(os.path.join(out, 'metrics.json')):
      continue
    t0 = time.time()
    views = rgb_copy(os.path.join(a.gso, name), os.path.join(a.out, '_rgb_views', name)) if a.no_alpha else \
        os.path.join(a.gso, name)
    cmd = [sys.executable, '-m', 'hv_jax.reconstruct', f'--config={a.config}',
           f'--config.input={views}', f'--config.output_dir={out}',
           f'--config.gt_mesh={os.path.join(a.gso, name, "model.obj")}', f'--config.gt_name={name}',
           '--config.progress=False'] + a.extra.split()
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    if r.returncode:
      print(f'{name}: failed ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})', flush=True)
      continue
    print(f'{name}: {time.time() - t0:.0f} s', flush=True)
  rows = []
  for name in names:
    metrics = os.path.join(a.out, name, 'metrics.json')
    if not os.path.exists(metrics):
      continue
    m = json.load(open(metrics))
    g, raw = m['geometry'], m.get('geometry_nofloor', m['geometry'])
    rows.append((name, g['chamfer'], g['iou'], raw['chamfer'], raw['iou'], m['seconds']['total'] / 60,
                 m['seconds']['train'] / 60))
    print(f'{name}\t{g["chamfer"]:.5f}\t{g["iou"]:.4f}\t{rows[-1][5]:.1f} min', flush=True)
  if not rows:
    return
  lines = ['| object | Chamfer | volume IoU | Chamfer, no floor | IoU, no floor | minutes (total) | minutes (training) |',
           '|---|---|---|---|---|---|---|']
  lines += ['| ' + ' | '.join([r[0]] + [f'{x:.4f}' if k % 2 == 0 else f'{x:.3f}' for k, x in enumerate(r[1:5])]
                              + [f'{x:.1f}' for x in r[5:]]) + ' |' for r in rows]
  mean = lambda k: sum(r[k] for r in rows) / len(rows)
  lines.append(f'| **mean of {len(rows)}** | **{mean(1):.4f}** | **{mean(2):.3f}** | {mean(3):.4f} | {mean(4):.3f} '
               f'| {mean(5):.1f} | {mean(6):.1f} |')
  table = '\n'.join(lines)
  print('\n' + table)
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'table.md'), 'w') as f:
    f.write(table + '\n')


if __name__ == '__main__':
  main()
