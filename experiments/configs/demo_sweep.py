"""Demo sweep: the TINY RANDOMLY INITIALISED model and random metric networks, on the two bundled GSO
objects (tests/fixtures/gso: bell and cream, CC-BY 4.0): checks the whole study pipeline on a CPU in minutes. The
numbers mean nothing, and study.json and the report say so.

  python -m experiments.diversity --config=experiments/configs/demo_sweep.py
  python -m experiments.report --config.results=results/demo_sweep
"""
import os

from experiments.diversity import StudySettings
from hv_jax import cli
from hv_jax.settings import config_dict

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config():
  c = config_dict(StudySettings)
  c.update(cli.load_config(os.path.join(_ROOT, 'configs', 'demo.py')))   # the demo's tiny random model, 2
  c.data.path = os.path.join(_ROOT, 'tests', 'fixtures', 'gso')          # instances, 10 steps, seed 0
  c.input = ''                    # (the demo's image: a study's inputs are data.path's)
  c.output_dir = 'results/demo_sweep'
  c.sweep.s1 = (0.0, 2.0)
  c.sweep.s2 = (0.0, 1.0)
  c.sweep.cfg = (2.0,)
  c.metrics.size = 128            # the demo model makes 64 px views; RAFT needs >= 128
  c.metrics.random_weights = True
  c.metrics.small_random_clip = True
  c.per_device_batch = 4          # the 4 HarmonyView settings of an (input, instance) in one call
  return c
