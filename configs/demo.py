"""Demo: a TINY RANDOMLY INITIALISED model of SyncDreamer's architecture on the bundled GSO view (bell).

  python -m hv_jax.sample --config=configs/demo.py

Runs end to end (CLIP, VAE, volumes, HarmonyView guidance, DDIM, decode) in a few minutes on 2 CPU cores.
The weights are random, so the 16 views are noise-like: this checks the pipeline, not the method. The log
and every manifest say so. For real results use configs/gso.py with converted weights.
"""
import os

import hv_jax
from hv_jax.sampling.pipeline import SampleSettings
from hv_jax.settings import config_dict

_DEMO = os.path.join(os.path.dirname(os.path.abspath(hv_jax.__file__)), 'assets', 'demo', 'bell')


def get_config():
  c = config_dict(SampleSettings)
  c.input = _DEMO
  c.output_dir = 'outputs/demo'
  c.checkpoint = 'random'
  c.model = 'tiny'
  c.sample_num = 2
  c.sample_steps = 10
  c.seed = 0
  return c
