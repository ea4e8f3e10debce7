"""Chamfer distance and volume IoU of a mesh against a GSO ground-truth mesh (eval_mesh.py of the original).

  python -m hv_jax.evaluate_mesh --pred DIR/mesh.ply --gt gso-eval/bell/model.obj --name bell [--out m.json]

Prints `name<TAB>chamfer<TAB>iou` as the original does; conventions in hv_jax/metrics/geometry.py.
"""
import argparse
import json
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--pred', required=True, help='reconstructed mesh (.ply/.obj), used as it is')
  p.add_argument('--gt', required=True, help='ground-truth mesh (model.obj), normalised and rotated per object')
  p.add_argument('--name', required=True, help='object name (selects the GT rotation)')
  p.add_argument('--out', default='', help='also write the result as JSON here')
  p.add_argument('--pixel-offset', type=float, default=0.5,
                 help="depth rays at pixel + offset (0.5 = the original's rasterizer, 0 = pixel centres)")
  a = p.parse_args(argv)
  from hv_jax.metrics import geometry
  try:
    r = geometry.evaluate(a.pred, a.gt, a.name, pixel_offset=a.pixel_offset)
  except geometry.MeshError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f"{a.name}\t{r['chamfer']:.5f}\t{r['iou']:.5f}")
  if a.out:
    try:
      with open(a.out, 'w') as f:
        json.dump({'name': a.name, **r}, f, indent=1)
    except OSError as e:
      print(f'error: cannot write {a.out} ({e.strerror or e})', file=sys.stderr)
      return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
