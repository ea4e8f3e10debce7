"""HarmonyView sampling: one RGBA image (or GSO-eval objects) -> 16 views per instance.

  python -m hv_jax.sample --config=configs/demo.py                       # tiny random model, a few minutes on CPU
  python -m hv_jax.sample --config=configs/gso.py --config.input=gso-eval --config.checkpoint=checkpoints/syncdreamer

Every config field can be overridden (`--config.s1=1.5`, `--config.sample_num=8`). The logic lives in
`hv_jax.sampling.pipeline.run`; this file only parses flags (hv_jax.cli: any mistake is one line) and hands
the library the converter of a `.ckpt` checkpoint (`convert_ckpt`).
"""
from absl import logging

from hv_jax import cli
from hv_jax.sampling import pipeline

_CONFIG = cli.define_config('Sampling config file (configs/*.py).')


def convert_ckpt(ckpt: str, out: str, model_config) -> None:
  """The first-use conversion of a .ckpt (pipeline.CkptConverter): convert.syncdreamer.convert_for_sampler."""
  try:   # lazy: convert/ is in the repository checkout, not installed with hv_jax; only a .ckpt needs it
    from convert import syncdreamer
  except ModuleNotFoundError as e:
    if (e.name or '').split('.')[0] != 'convert':
      raise
    raise cli.no_checkout(f'converting {ckpt} on first use') from None
  syncdreamer.convert_for_sampler(ckpt, out, model_config)


def main(config) -> int:
  manifests = pipeline.run(config, convert_ckpt=convert_ckpt)
  for name in manifests:
    logging.info('wrote %s/%s', config.output_dir, name)
  print(f'done: {len(manifests)} input(s) in {config.output_dir}')
  return 0


def run_main():
  logging.set_verbosity(logging.INFO)
  cli.run(main, _CONFIG, 'pass --config=configs/gso.py (or configs/demo.py)')


if __name__ == '__main__':
  run_main()
