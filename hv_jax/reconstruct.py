"""NeuS reconstruction: 16 views (a sampler strip or a GSO-eval folder) -> DIR/mesh.ply + DIR/metrics.json.

  python -m hv_jax.reconstruct --config=configs/neus_fast.py --config.input=PATH --config.output_dir=DIR
  python -m hv_jax.reconstruct --config=configs/neus.py ...        # the original's settings (GPU-sized)

Add --config.gt_mesh=model.obj (and --config.gt_name=OBJ) to get Chamfer / volume IoU in metrics.json.
The logic lives in `hv_jax.neus.pipeline.run`; this file parses flags and turns user errors into one line.
"""
import sys

from absl import app, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Reconstruction config (configs/neus*.py).',
                                          lock_config=True)


def main(argv):
  del argv
  from hv_jax.neus import pipeline
  config = _CONFIG.value
  if config is None:
    print('error: pass --config=configs/neus_fast.py (or configs/neus.py)', file=sys.stderr)
    return 2
  try:
    m = pipeline.run(config)
  except pipeline.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  geo = m.get('geometry')
  extra = f", chamfer {geo['chamfer']:.5f}, IoU {geo['iou']:.4f}" if geo else ''
  print(f"done: {config.output_dir}/mesh.ply ({m['mesh']['faces']} faces) in {m['seconds']['total']:.0f} s{extra}")
  return 0


def run_main():
  logging.set_verbosity(logging.WARNING)
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == '__main__':
  run_main()
