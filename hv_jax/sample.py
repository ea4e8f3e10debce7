"""HarmonyView sampling: one RGBA image (or GSO-eval objects) -> 16 views per instance.

  python -m hv_jax.sample --config=configs/demo.py                       # tiny random model, a few minutes on CPU
  python -m hv_jax.sample --config=configs/gso.py --config.input=gso-eval --config.checkpoint=checkpoints/syncdreamer

Every setting (`hv_jax.sampling.pipeline.SampleSettings`, --help lists them) can be overridden
(`--config.s1=1.5`, `--config.sample_num=8`). The logic lives in `hv_jax.sampling.pipeline.run`; this file
only reads the settings (hv_jax.cli: any mistake is one line) and hands the library the converter of a
`.ckpt` checkpoint (`convert_ckpt`).
"""
import sys

from absl import logging

from hv_jax import cli
from hv_jax.sampling import pipeline


def convert_ckpt(ckpt: str, out: str, model_config) -> None:
  """The first-use conversion of a .ckpt (pipeline.CkptConverter): convert.syncdreamer.convert_for_sampler."""
  try:   # lazy: convert/ is in the repository checkout, not installed with hv_jax; only a .ckpt needs it
    from convert import syncdreamer
  except ModuleNotFoundError as e:
    if (e.name or '').split('.')[0] != 'convert':
      raise
    raise cli.no_checkout(f'converting {ckpt} on first use') from None
  syncdreamer.convert_for_sampler(ckpt, out, model_config)


def sample(s: pipeline.SampleSettings) -> int:
  manifests = pipeline.run(s, convert_ckpt=convert_ckpt)
  for name in manifests:
    logging.info('wrote %s/%s', s.output_dir, name)
  print(f'done: {len(manifests)} input(s) in {s.output_dir}')
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.INFO)
  return cli.main(argv, pipeline.SampleSettings, sample, prog='python -m hv_jax.sample', doc=__doc__,
                  missing_hint='pass --config=configs/gso.py (or configs/demo.py)')


if __name__ == '__main__':
  sys.exit(main())
