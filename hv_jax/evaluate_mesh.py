"""Chamfer distance and volume IoU of a mesh against a GSO ground-truth mesh (eval_mesh.py of the original).

  python -m hv_jax.evaluate_mesh --config.pred=DIR/mesh.ply --config.gt=gso-eval/bell/model.obj --config.name=bell \
      [--config.out=m.json]
  python -m hv_jax.evaluate_mesh --config.pred=DIR/mesh.ply --config.gt=other/model.obj --config.rotation=0 \
      [--config.name=label]

Prints `name<TAB>chamfer<TAB>iou` as the original does; conventions in hv_jax/metrics/geometry.py.
The GT rotation is chosen by `name`, which must be one of the 30 GSO-eval objects (the original silently
uses 0 for any other name, so a typo such as 'Alarm' changes the result): for another GT mesh give the
rotation explicitly with --config.rotation=DEG (0 if it needs none). Every setting: MeshEvalSettings below
(--help lists them).
"""
import dataclasses
import json
import sys
from typing import Optional

from hv_jax import checks, cli
from hv_jax import settings as settings_lib
from hv_jax.errors import UserError
from hv_jax.metrics import geometry


@dataclasses.dataclass(frozen=True)
class MeshEvalSettings:
  """Every setting of `python -m hv_jax.evaluate_mesh`."""
  pred: str = ''                     # reconstructed mesh (.ply/.obj), used as it is
  gt: str = ''                       # ground-truth mesh (model.obj), normalised and rotated per object
  name: str = ''                     # GSO-eval object name (selects the GT rotation)
  rotation: Optional[float] = None   # GT rotation about +z in degrees, instead of the one of `name` (0: none)
  out: str = ''                      # also write the result as JSON here
  pixel_offset: float = 0.5          # depth rays at pixel + offset (0.5 = the original's rasterizer, 0 = centres)

  def validate(self) -> None:
    for field, what in (('pred', 'the reconstructed mesh'), ('gt', 'the ground-truth mesh')):
      if not getattr(self, field):
        raise UserError(f'no {field}: set --config.{field}=PATH ({what})')
    if self.rotation is not None:
      checks.number(self, 'rotation')
    checks.number(self, 'pixel_offset')


def evaluate_mesh(s: MeshEvalSettings) -> int:
  s.validate()
  if s.rotation is None:
    if not s.name:
      raise UserError('set --config.name=OBJECT (a GSO-eval object: selects the GT rotation) or '
                      '--config.rotation=DEG')
    try:
      geometry.gt_rotation_angle(s.name, hint='set --config.rotation=0 if the GT mesh needs no rotation')
    except geometry.UnknownObjectError as e:
      raise UserError(str(e)) from None
  name = s.name or 'mesh'
  try:
    r = geometry.evaluate(s.pred, s.gt, name, pixel_offset=s.pixel_offset, rotation=s.rotation)
  except geometry.MeshError as e:
    raise UserError(str(e)) from None
  print(f"{name}\t{r['chamfer']:.5f}\t{r['iou']:.5f}")
  if s.out:
    rotation = geometry.gt_rotation_angle(name) if s.rotation is None else s.rotation
    try:
      with open(s.out, 'w') as f:
        json.dump({'name': name, 'rotation_deg': rotation, **r}, f, indent=1, allow_nan=False)
    except OSError as e:
      raise UserError(f'cannot write {s.out} ({e.strerror or e})') from None
  return 0


def main(argv=None) -> int:
  return cli.main(argv, MeshEvalSettings, evaluate_mesh, prog='python -m hv_jax.evaluate_mesh', doc=__doc__,
                  default=lambda: settings_lib.config_dict(MeshEvalSettings))


if __name__ == '__main__':
  sys.exit(main())
