"""Elevation estimation (hv_jax.elevation) on GSO-eval objects at known elevations (docs/elevation.md).

  PYTHONPATH=. python benchmarks/elevation_gso.py --gso PATH/gso-eval [--recon DIR] [--objects a,b]
      [--elevations -5,5,15,25,35] [--input-distance 1.5] [--distances 1.5] [--json results.json]

For every object folder of `--gso` with a GT mesh (model.obj): the mesh is normalised into the views' frame
(hv_jax.metrics.geometry.normalize_gt with the object's GT rotation), and the convention is checked first: its
silhouette at azimuth 0, elevation 30 (the 16-view camera, K of camera-16.pkl) against view 000's alpha (IoU).
Then the GT silhouette at azimuth 0 and each of `--elevations` (256 px; the views' focal length, or 0.8 x the
estimator's where the object would touch the frame) is the input mask, and the elevation is
estimated (a) from the GT mesh itself (checks the conventions end to end) and (b) from each reconstruction
`--recon`/<object>/{mesh.ply, mesh_nofloor.ply} that exists (e.g. neus_fast from the GT views; objects
without one are skipped and counted). Prints per object the absolute errors, then per mesh kind the median,
90th percentile and maximum absolute error and the seconds per estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

from hv_jax import digest, elevation, raycast
from hv_jax.metrics import geometry

RECON_FILES = ('mesh.ply', 'mesh_nofloor.ply')


def gt_mesh(gso: str, name: str):
  m = geometry.load_mesh(os.path.join(gso, name, 'model.obj'))
  return geometry.normalize_gt(m.vertices, geometry.gt_rotation_angle(name)), m.faces


def convention_iou(gso: str, name: str, v, f) -> float:
  """IoU of the GT mesh's silhouette at (azimuth 0, elevation 30) with view 000's alpha > 0.5."""
  alpha = np.asarray(Image.open(os.path.join(gso, name, '000.png')).convert('RGBA'))[..., 3] >= 128
  sil = raycast.silhouette(v, f, raycast.intrinsics(alpha.shape[0]), raycast.look_at_pose(0.0, 30.0),
                           alpha.shape[0])
  return float((sil & alpha).sum() / max((sil | alpha).sum(), 1))


def summary(errors, seconds) -> str:
  e = np.abs(np.asarray(errors, np.float64))
  if not len(e):
    return 'n=0'
  return (f'n={len(e)}  median {np.median(e):.2f}  p90 {np.percentile(e, 90):.2f}  max {e.max():.2f}  '
          f'mean {e.mean():.2f} deg  |  {np.mean(seconds):.2f} s/estimate')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--gso', required=True, help='the GSO-eval folder (<object>/000..015.png, model.obj)')
  p.add_argument('--recon', default='', help='folder of reconstructions <object>/mesh.ply (and mesh_nofloor.ply)')
  p.add_argument('--objects', default='', help='comma-separated object names (default: every one with a mesh)')
  p.add_argument('--elevations', default='-5,5,15,25,35')
  p.add_argument('--input-distance', type=float, default=raycast.DISTANCE,
                 help='camera distance of the input masks (the estimator always renders from 1.5): a photo '
                      'taken from farther away with a longer lens has less perspective')
  p.add_argument('--distances', default='1.5', help='camera distances the estimator searches (comma-separated)')
  p.add_argument('--json', default='', help='write every estimate here')
  a = p.parse_args(argv)
  elevations = [float(x) for x in a.elevations.split(',')]
  distances = [float(x) for x in a.distances.split(',')]
  names = [n for n in (a.objects.split(',') if a.objects else sorted(os.listdir(a.gso)))
           if os.path.isfile(os.path.join(a.gso, n, 'model.obj'))]
  kinds = ['gt'] + ([f'recon:{r}' for r in RECON_FILES] if a.recon else [])
  errors = {k: [] for k in kinds}
  seconds = {k: [] for k in kinds}
  records = []
  skipped = {k: [] for k in kinds}
  print(f'{len(names)} objects with a GT mesh; elevations {elevations}; input camera distance {a.input_distance}; '
        f'searched distances {distances}')
  print('object         kind                   conv IoU  ' + '  '.join(f'{e:>6g}' for e in elevations))
  for name in names:
    v, f = gt_mesh(a.gso, name)
    conv = convention_iou(a.gso, name, v, f)
    # the inputs: the views' camera, zoomed out where the object would leave the frame at some elevation
    # (cream, a cube, is cut by the 256 px frame at 35 deg) and always to another scale than the estimator's
    fit = elevation.render_intrinsics(v, f, 256, elevations)[0, 0]
    zoom = a.input_distance / raycast.DISTANCE        # another camera distance: the same size, less perspective
    K = raycast.intrinsics(256, min(raycast.FOCAL_256, 0.8 * fit) * zoom)
    inputs = [raycast.silhouette(v, f, K, raycast.look_at_pose(0.0, e, a.input_distance), 256) for e in elevations]
    meshes = {'gt': (v, f)}
    mesh_sha256 = {}       # which reconstruction each estimate is of (benchmarks/gso_records.py checks it)
    for r in RECON_FILES if a.recon else ():
      path = os.path.join(a.recon, name, r)
      if os.path.isfile(path):
        m = geometry.load_mesh(path)
        meshes[f'recon:{r}'] = (m.vertices, m.faces)
        mesh_sha256[f'recon:{r}'] = digest.file_sha256(path)
      else:
        skipped[f'recon:{r}'].append(name)
    for kind, (mv, mf) in meshes.items():
      row = []
      for e, mask in zip(elevations, inputs):
        t0 = time.perf_counter()
        est = elevation.estimate(mask, mv, mf, distances=distances)
        dt = time.perf_counter() - t0
        err = est.elevation_deg - e
        errors[kind].append(err)
        seconds[kind].append(dt)
        row.append(err)
        records.append({'object': name, 'kind': kind, 'true_deg': e, 'estimate_deg': est.elevation_deg,
                        'error_deg': err, 'iou': est.iou, 'second_best_deg': est.second_best_deg,
                        'second_best_iou': est.second_best_iou, 'distance': est.distance, 'seconds': dt,
                        'convention_iou': conv, 'mesh_sha256': mesh_sha256.get(kind)})    # None: the GT mesh
      print(f'{name:14s} {kind:22s} {conv:8.4f}  ' + '  '.join(f'{x:+6.2f}' for x in row), flush=True)
  print()
  for kind in kinds:
    extra = f'  ({len(skipped[kind])} objects without this mesh)' if skipped[kind] else ''
    n_obj = len({r['object'] for r in records if r['kind'] == kind})
    print(f'{kind:22s} {n_obj:2d} objects  {summary(errors[kind], seconds[kind])}{extra}')
  if a.json:
    with open(a.json, 'w') as fh:
      json.dump({'elevations': elevations, 'records': records}, fh, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
