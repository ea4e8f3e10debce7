"""From a photo to a 3D asset in one command: cut-out, elevation, N instances, the best one, NeuS, GLB.

  python -m hv_jax.image_to_3d --config=configs/image_to_3d_demo.py     # tiny random model, minutes on a CPU
  python -m hv_jax.image_to_3d --config=configs/image_to_3d.py --config.input=photo.jpg \
      --config.checkpoint=checkpoints/syncdreamer.ckpt

Writes OUTPUT/<input name>/: input_rgba.png (the cut-out the model saw), rounds/e<elevation>/ (the instances,
their scores, the chosen views, the NeuS run), elevation.json ('auto'), mesh.glb, mesh.obj + mesh.mtl + texture,
turntable.gif, preview.png and report.json. A rerun skips what is done; a killed run resumes at its stage.
Every setting: `hv_jax.pipeline.image_to_3d.ImageTo3DSettings` (--help lists them); the stages are described
there.
"""
import sys

from absl import logging

from hv_jax import cli
from hv_jax.pipeline import image_to_3d
from hv_jax.sample import convert_ckpt


def body(s: image_to_3d.ImageTo3DSettings) -> int:
  reports = image_to_3d.run(s, convert_ckpt=convert_ckpt)
  for name, r in reports.items():
    el = r['elevation']
    print(f"done: {s.output_dir}/{name}/mesh.glb (elevation {el['used_deg']:.1f} deg"
          f"{' estimated' if el['mode'] == 'auto' else ''}, instance {r['rounds'][-1]['chosen']} of "
          f"{len(r['rounds'][-1]['scores'])}) in {r['seconds']['total']:.0f} s")
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.WARNING)
  return cli.main(argv, image_to_3d.ImageTo3DSettings, body, prog='python -m hv_jax.image_to_3d', doc=__doc__,
                  missing_hint='pass --config=configs/image_to_3d.py (or configs/image_to_3d_demo.py)')


if __name__ == '__main__':
  sys.exit(main())
