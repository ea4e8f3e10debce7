"""Validation of the texture bake: does a texture baked from the 16 views re-render them better than the
mesh's vertex colours?

  PYTHONPATH=. python benchmarks/texture_gso.py --gso PATH/gso-eval --recon DIR [--objects soap,teapot]
      [--size 1024] [--max-faces 20000] [--out table.md] [--preview-dir DIR]

For every object with a finished reconstruction (DIR/<obj>/mesh.ply with vertex colours, e.g. from
benchmarks/neus_gso.py): the GT views (RGBA composited on white, masks = GT alpha, which the default
BakeSettings(mask_threshold=0) does not use; cameras = the 16-view set hv_jax.models.cameras.default_cameras)
are baked onto the reconstructed mesh (hv_jax.export.texture.bake_texture), then the textured mesh and the
vertex-coloured mesh are rendered at the same 16 cameras on white (hv_jax.export.preview.render, no lighting) and
compared with the views: PSNR = 10 log10(1 / MSE) over all pixels and channels of a view, averaged over the
16 views (the gso-eval README's convention). Both renders and the bake
use pixel_offset 0 (the NeuS ray convention the mesh was fitted under). Prints a markdown table (per object,
mean, and how many objects were available) and writes it to --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hv_jax import digest, optional  # noqa: E402
from hv_jax.export import preview, texture  # noqa: E402
from hv_jax.models.cameras import default_cameras  # noqa: E402


MESH_LINE = 'mesh.ply sha256:'     # benchmarks/gso_records.py checks a row against its reconstruction by this


def load_views(folder: str):
  """rgb [16, 256, 256, 3] composited on white and mask [16, 256, 256] (alpha), float in [0, 1]."""
  rgba = np.stack([np.asarray(Image.open(os.path.join(folder, f'{k:03d}.png')).convert('RGBA')) for k in range(16)])
  rgba = rgba.astype(np.float64) / 255
  a = rgba[..., 3]
  return rgba[..., :3] * a[..., None] + (1 - a[..., None]), a


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
  """Mean over views of 10 log10(1 / MSE) (per view, all pixels and channels)."""
  mse = ((pred - gt) ** 2).reshape(len(gt), -1).mean(-1)
  return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def evaluate(name: str, gso: str, recon: str, size: int, max_faces: int, preview_dir: str = ''):
  rgb, mask = load_views(os.path.join(gso, name))
  Ks, poses, _ = default_cameras(16, 256)
  path = os.path.join(recon, name, 'mesh.ply')
  mesh = optional.trimesh().load(path, process=False)
  v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
  vc = np.asarray(mesh.visual.vertex_colors)[:, :3]
  t0 = time.time()
  stats = {}
  v2, f2, uv, tex = texture.bake_texture(v, f, rgb, mask, Ks, poses, size=size, vertex_colors=vc,
                                       settings=texture.BakeSettings(max_faces=max_faces), stats=stats)
  bake_s = time.time() - t0
  textured = np.stack([preview.render(v2, f2, Ks[i], poses[i], 256, 256, uv=uv, texture=tex) for i in range(16)])
  coloured = np.stack([preview.render(v, f, Ks[i], poses[i], 256, 256, vertex_colors=vc) for i in range(16)])
  row = {'object': name, 'faces': len(f), 'faces_textured': len(f2), 'psnr_vertex': psnr(coloured, rgb),
         'psnr_texture': psnr(textured, rgb), 'bake_s': bake_s, 'seconds': stats['seconds'],
         'texels_seen': stats['texels_seen'] / max(stats['texels'], 1), 'mesh_sha256': digest.file_sha256(path)}
  if preview_dir:
    row['preview'] = preview.write_preview(os.path.join(preview_dir, name), v2, f2, uv=uv, texture=tex)
  return row


def table(rows, available: int, total: int, command: str) -> str:
  lines = [f'`{command}`', '',
           f'{len(rows)} objects baked ({available} with a finished reconstruction of {total} in the GSO folder).', '',
           '| object | faces (NeuS) | faces (textured) | PSNR vertex colours | PSNR texture | gain dB | bake s '
           '(atlas / views) | texels seen |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    s = r['seconds']
    lines.append(f"| {r['object']} | {r['faces']} | {r['faces_textured']} | {r['psnr_vertex']:.2f} | "
                 f"{r['psnr_texture']:.2f} | {r['psnr_texture'] - r['psnr_vertex']:+.2f} | {r['bake_s']:.1f} "
                 f"({s['atlas']:.1f} / {s['views']:.1f}) | {100 * r['texels_seen']:.0f}% |")
  if rows:
    m = lambda k: np.mean([r[k] for r in rows])  # noqa: E731
    lines.append(f"| **mean** | | | {m('psnr_vertex'):.2f} | {m('psnr_texture'):.2f} | "
                 f"{m('psnr_texture') - m('psnr_vertex'):+.2f} | {m('bake_s'):.1f} | |")
  lines += [''] + [f"{MESH_LINE} {r['object']} {r['mesh_sha256']}" for r in rows]   # the mesh each row is of
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--gso', required=True)
  p.add_argument('--recon', required=True, help='folder of <obj>/mesh.ply reconstructions')
  p.add_argument('--objects', default='', help='comma-separated (default: every finished reconstruction)')
  p.add_argument('--size', type=int, default=1024)
  p.add_argument('--max-faces', type=int, default=texture.BakeSettings().max_faces)
  p.add_argument('--out', default='')
  p.add_argument('--preview-dir', default='')
  a = p.parse_args(argv)
  names = sorted(d for d in os.listdir(a.gso) if os.path.isfile(os.path.join(a.gso, d, '000.png')))
  available = [n for n in names if os.path.isfile(os.path.join(a.recon, n, 'mesh.ply'))]
  chosen = [n for n in a.objects.split(',') if n] or available
  missing = [n for n in chosen if n not in available]
  if missing:
    sys.exit(f'error: no finished reconstruction (mesh.ply) for {", ".join(missing)} in {a.recon}')
  rows = []
  for n in chosen:
    r = evaluate(n, a.gso, a.recon, a.size, a.max_faces, a.preview_dir)
    print(f"{n}: PSNR vertex {r['psnr_vertex']:.2f}, texture {r['psnr_texture']:.2f}, bake {r['bake_s']:.1f} s "
          f"{r['seconds']}", flush=True)
    rows.append(r)
  command = 'PYTHONPATH=. python benchmarks/texture_gso.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  text = table(rows, len(available), len(names), command)
  print(text)
  if a.out:
    from hv_jax import atomic
    atomic.write_text(a.out, text)


if __name__ == '__main__':
  main()
