"""Estimate the input view's elevation (degrees) from the image's mask and a mesh of the object; prints it.

  python -m hv_jax.estimate_elevation --config.input=photo.png --config.mesh=OUT/mesh.ply [--config.json_out=e.json]

The mesh must be in SyncDreamer's frame (a reconstruction of the 16 generated views, e.g. python -m
hv_jax.reconstruct's mesh.ply): it is rendered from azimuth 0 at every candidate elevation in [lo, hi] and the
silhouette that best matches the image's mask (after the sampler's crop framing) wins (hv_jax/elevation.py,
docs/elevation.md). The mask is the image's alpha, or a matte for a photo without one (`matting`, as
python -m hv_jax.matte). Prints the elevation in degrees on one line; json_out also gets every candidate's
IoU. Every setting: ElevationSettings below (--help lists them).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Tuple

import numpy as np
from absl import logging

from hv_jax import atomic, checks, cli, elevation, settings
from hv_jax.data import matting
from hv_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ElevationSettings:
  """Every setting of `python -m hv_jax.estimate_elevation`."""
  input: str = ''            # the input image (an RGBA cut-out, or a photo: matted by `matting`)
  mesh: str = ''             # the object's mesh in SyncDreamer's frame (.ply/.obj/.glb)
  matting: str = 'auto'      # auto | alpha | plain | rembg (hv_jax.data.matting)
  model: str = ''            # rembg model file (matting=rembg, or auto for photos without alpha)
  lo: float = -10.0          # lowest candidate elevation (degrees; SyncDreamer is trained on [-10, 40])
  hi: float = 40.0           # highest candidate elevation
  step: float = 1.0          # coarse candidate spacing (degrees)
  refine: bool = True        # search again at refine_step within one step of the best
  refine_step: float = 0.25  # degrees
  distances: Tuple[float, ...] = elevation.DISTANCES   # camera distances searched with the elevation (perspective)
  crop_size: int = elevation.CROP_SIZE   # framing of mask and silhouettes: longer side of the object in 256 px
  json_out: str = ''         # also write the estimate and every candidate's IoU here (JSON)

  def validate(self) -> None:
    for field, what in (('input', 'the input image'), ('mesh', 'the mesh file')):
      if not getattr(self, field):
        raise UserError(f'no {field}: set --config.{field}=PATH ({what})')
    checks.number(self, 'lo')
    checks.number(self, 'hi')
    checks.number(self, 'step', lo=0.0, lo_open=True)
    checks.number(self, 'refine_step', lo=0.0, lo_open=True)
    checks.numbers_of(self, 'distances', lo=0.0, lo_open=True)
    if not self.distances:
      raise UserError('--config.distances is empty: give at least one camera distance, e.g. (1.5,)')
    if self.hi < self.lo:
      raise UserError(f'--config.hi={self.hi}: must be >= --config.lo={self.lo}')
    checks.number(self, 'crop_size', lo=1, hi=elevation.SIZE, integer=True)
    matting.check_settings(self.matting, self.model, model_flag='model')


def run(s: ElevationSettings) -> elevation.Estimate:
  s.validate()
  candidates = np.arange(s.lo, s.hi + 1e-9, s.step)
  est = elevation.estimate_files(s.input, s.mesh, matting=s.matting, model=s.model or None,
                                 candidates=candidates, crop_size=s.crop_size, refine=s.refine,
                                 refine_step=s.refine_step, distances=s.distances)
  if s.json_out:
    try:
      atomic.write_json(s.json_out, {'settings': settings.as_json(s), **est.to_json()})
    except OSError as e:
      raise UserError(f'cannot write {s.json_out} ({e.strerror or e})') from None
  return est


def estimate_cli(s: ElevationSettings) -> int:
  est = run(s)
  note = (f'; next best {est.second_best_deg:g} deg (IoU {est.second_best_iou:.4f})'
          if est.second_best_deg is not None else '')
  logging.info('silhouette IoU %.4f at %g deg%s', est.iou, est.elevation_deg, note)
  print(f'{est.elevation_deg:g}')
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.INFO)
  return cli.main(argv, ElevationSettings, estimate_cli, prog='python -m hv_jax.estimate_elevation',
                  doc=__doc__, default=lambda: settings.config_dict(ElevationSettings))


if __name__ == '__main__':
  sys.exit(main())
