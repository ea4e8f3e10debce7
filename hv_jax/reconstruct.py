"""NeuS reconstruction: 16 views (a sampler strip or a GSO-eval folder) -> DIR/mesh.ply + mesh.glb + metrics.json.

  python -m hv_jax.reconstruct --config=configs/neus_fast.py --config.input=PATH --config.output_dir=DIR
  python -m hv_jax.reconstruct --config=configs/neus.py ...        # the original's settings (GPU-sized)

Add --config.gt_mesh=model.obj (and --config.gt_name=OBJ) to get Chamfer / volume IoU in metrics.json. The
GT rotation is chosen by gt_name (default: the input folder's name, or the folder holding the input strip),
which must be one of the 30 GSO-eval objects; for another GT mesh set --config.gt_rotation=DEG (0: none).
--config.texture=True also bakes a texture from the input views (DIR/mesh.glb textured, DIR/mesh.obj + mesh.mtl +
mesh_texture.png; docs/export.md). Every setting: `hv_jax.neus.pipeline.ReconstructSettings` (--help lists them). The logic lives in
`hv_jax.neus.pipeline.run`; this file only reads the settings (hv_jax.cli: any mistake is one line).
"""
import sys

from absl import logging

from hv_jax import cli
from hv_jax.neus import pipeline


def reconstruct(s: pipeline.ReconstructSettings) -> int:
  m = pipeline.run(s)
  geo = m.get('geometry')
  extra = f", chamfer {geo['chamfer']:.5f}, IoU {geo['iou']:.4f}" if geo else ''
  files = 'mesh.ply, mesh.glb' + (', mesh.obj' if s.texture else '')
  print(f"done: {s.output_dir}/{{{files}}} ({m['mesh']['faces']} faces) in {m['seconds']['total']:.0f} s{extra}")
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.WARNING)
  return cli.main(argv, pipeline.ReconstructSettings, reconstruct, prog='python -m hv_jax.reconstruct', doc=__doc__,
                  missing_hint='pass --config=configs/neus_fast.py (or configs/neus.py)')


if __name__ == '__main__':
  sys.exit(main())
