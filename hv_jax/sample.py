"""HarmonyView sampling: one RGBA image (or GSO-eval objects) -> 16 views per instance.

  python -m hv_jax.sample --config=configs/demo.py                       # tiny random model, a few minutes on CPU
  python -m hv_jax.sample --config=configs/gso.py --config.input=gso-eval --config.checkpoint=checkpoints/syncdreamer

Every config field can be overridden (`--config.s1=1.5`, `--config.sample_num=8`). The logic lives in
`hv_jax.sampling.pipeline.run`; this file only parses flags and turns user errors into one line.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Sampling config file (configs/*.py).', lock_config=True)


def main(argv):
  del argv
  from hv_jax.sampling import pipeline
  config = _CONFIG.value
  if config is None:
    print('error: pass --config=configs/gso.py (or configs/demo.py)', file=sys.stderr)
    return 2
  try:
    manifests = pipeline.run(config)
  except pipeline.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for name in manifests:
    logging.info('wrote %s/%s', config.output_dir, name)
  print(f'done: {len(manifests)} input(s) in {config.output_dir}')
  return 0


def run_main():
  logging.set_verbosity(logging.INFO)
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == '__main__':
  run_main()
