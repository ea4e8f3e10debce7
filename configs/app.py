"""The web app (python -m hv_jax.app): the demo by default, real weights with --config.checkpoint.

  python -m hv_jax.app --config=configs/app.py                     # tiny random model (a banner says so)
  python -m hv_jax.app --config=configs/app.py --config.checkpoint=checkpoints/syncdreamer.ckpt

A request starts with configs/image_to_3d.py's settings (block `image_to_3d`), or with checkpoint='random' from
configs/image_to_3d_demo.py's (block `demo`); the widgets start at them. Any field can be set, e.g.
--config.image_to_3d.neus.train.total_steps=400 or --config.demo.sample.sample_steps=4.
"""
import os

from hv_jax.app import AppSettings
from hv_jax.cli import load_config
from hv_jax.pipeline.image_to_3d import ImageTo3DSettings
from hv_jax.settings import config_dict

_HERE = os.path.dirname(os.path.abspath(__file__))


def _request(name):
  """A request block from a config of the command, without the fields the app sets."""
  c = load_config(os.path.join(_HERE, name))
  defaults = ImageTo3DSettings()
  c.input, c.output_dir, c.checkpoint = defaults.input, defaults.output_dir, defaults.checkpoint
  return c


def get_config():
  c = config_dict(AppSettings)
  c.output_dir = 'outputs/app'
  c.checkpoint = 'random'
  c.image_to_3d = _request('image_to_3d.py')
  c.demo = _request('image_to_3d_demo.py')
  return c
