"""Chamfer distance and volume IoU of a mesh against a GSO ground-truth mesh (eval_mesh.py of the original).

  python -m hv_jax.evaluate_mesh --pred DIR/mesh.ply --gt gso-eval/bell/model.obj --name bell [--out m.json]
  python -m hv_jax.evaluate_mesh --pred DIR/mesh.ply --gt other/model.obj --rotation 0 [--name label]

Prints `name<TAB>chamfer<TAB>iou` as the original does; conventions in hv_jax/metrics/geometry.py.
The GT rotation is chosen by --name, which must be one of the 30 GSO-eval objects (the original silently
uses 0 for any other name, so a typo such as 'Alarm' changes the result): for another GT mesh give the
rotation explicitly with --rotation DEG (0 if it needs none).
"""
import json
import math
import sys

from hv_jax import cli
from hv_jax.metrics import geometry


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m hv_jax.evaluate_mesh', description=__doc__.splitlines()[0])
  p.add_argument('--pred', required=True, help='reconstructed mesh (.ply/.obj), used as it is')
  p.add_argument('--gt', required=True, help='ground-truth mesh (model.obj), normalised and rotated per object')
  p.add_argument('--name', default='', help='GSO-eval object name (selects the GT rotation)')
  p.add_argument('--rotation', type=float, default=None,
                 help='GT rotation about +z in degrees, instead of the one of --name (0: the GT needs none)')
  p.add_argument('--out', default='', help='also write the result as JSON here')
  p.add_argument('--pixel-offset', type=float, default=0.5,
                 help="depth rays at pixel + offset (0.5 = the original's rasterizer, 0 = pixel centres)")
  a = p.parse_args(argv)

  def fail(msg):
    print(f'error: {msg}', file=sys.stderr)
    return 2
  for flag, v in (('--rotation', a.rotation), ('--pixel-offset', a.pixel_offset)):
    if v is not None and not math.isfinite(v):
      return fail(f'{flag} {v} is not a finite number')
  if a.rotation is None:
    if not a.name:
      return fail('pass --name OBJECT (a GSO-eval object: selects the GT rotation) or --rotation DEG')
    try:
      geometry.gt_rotation_angle(a.name, hint='pass --rotation 0 if the GT mesh needs no rotation')
    except geometry.UnknownObjectError as e:
      return fail(e)
  name = a.name or 'mesh'
  try:
    r = geometry.evaluate(a.pred, a.gt, name, pixel_offset=a.pixel_offset, rotation=a.rotation)
  except geometry.MeshError as e:
    return fail(e)
  print(f"{name}\t{r['chamfer']:.5f}\t{r['iou']:.5f}")
  if a.out:
    rotation = geometry.gt_rotation_angle(name) if a.rotation is None else a.rotation
    try:
      with open(a.out, 'w') as f:
        json.dump({'name': name, 'rotation_deg': rotation, **r}, f, indent=1, allow_nan=False)
    except OSError as e:
      return fail(f'cannot write {a.out} ({e.strerror or e})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
