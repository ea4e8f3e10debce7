"""A photo to a textured mesh with the real model (the paper's pipeline; hv_jax.pipeline.image_to_3d).

  python -m hv_jax.image_to_3d --config=configs/image_to_3d.py --config.input=photo.jpg \
      --config.checkpoint=checkpoints/syncdreamer.ckpt

Sampling as configs/gso.py (HarmonyView s1=2, s2=1, 50 DDIM steps, 4 instances); elevation estimated
('auto'); NeuS as configs/neus_fast.py on a CPU (minutes) and as configs/neus.py (the original's field and
2000 steps) on a GPU or TPU; any field can be set, e.g. --config.neus.train.total_steps=400; a texture baked
from the chosen views.
"""
import os

import jax

from hv_jax.cli import load_config
from hv_jax.pipeline.image_to_3d import ImageTo3DSettings
from hv_jax.settings import config_dict

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  c = config_dict(ImageTo3DSettings)
  c.output_dir = 'outputs/image_to_3d'
  neus = load_config(os.path.join(_HERE, 'neus_fast.py' if jax.default_backend() == 'cpu' else 'neus.py'))
  neus.input, neus.output_dir, neus.overwrite = '', ImageTo3DSettings().neus.output_dir, False
  c.neus = neus
  return c
