"""The paper's GSO protocol: view 000 of each GSO-eval object, elevation 30, 4 instances, HarmonyView s1=2, s2=1.

  python -m hv_jax.sample --config=configs/gso.py --config.input=PATH/gso-eval --config.checkpoint=checkpoints/syncdreamer

Note: the original generate.py defaults differ (cfg_scales 1 1, sample_num 2); the paper's numbers use these.
"""
from hv_jax.sampling.pipeline import SampleSettings
from hv_jax.settings import config_dict


def get_config():
  c = config_dict(SampleSettings)
  c.output_dir = 'outputs/gso_harmonyview'
  c.elevation = 30.0
  c.sample_num = 4
  c.guidance = 'harmonyview'
  c.s1, c.s2 = 2.0, 1.0
  c.sample_steps = 50
  return c
