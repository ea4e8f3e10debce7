"""The SyncDreamer baseline on the GSO protocol: classifier-free guidance (Eq. 5), scale 2, 4 instances.

  python -m hv_jax.sample --config=configs/syncdreamer.py --config.input=PATH/gso-eval --config.checkpoint=checkpoints/syncdreamer
"""
from hv_jax.sampling.pipeline import SampleSettings
from hv_jax.settings import config_dict


def get_config():
  c = config_dict(SampleSettings)
  c.output_dir = 'outputs/gso_syncdreamer'
  c.guidance = 'cfg'
  c.cfg_scale = 2.0
  return c
