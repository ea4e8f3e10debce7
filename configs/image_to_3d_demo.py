"""Demo of the whole photo-to-asset chain with a TINY RANDOMLY INITIALISED model, on a bundled JPEG photo.

  python -m hv_jax.image_to_3d --config=configs/image_to_3d_demo.py

A plain JPEG (GSO `bell` on a grey studio background, no alpha) -> plain matte and crop -> elevation 'auto'
(sample at 30, reconstruct, estimate, resample if it moved) -> 2 instances of 10 DDIM steps -> scores ->
NeuS (configs/neus_fast.py, shortened to 150 steps and a 128^3 mesh) -> textured mesh.glb, mesh.obj,
turntable.gif. The weights are random, so the views are noise-like and the mesh is a blob: this checks the
pipeline, not the method, and the log and report.json say so. Minutes on 2 CPU cores.
"""
import os

import hv_jax
from hv_jax.cli import load_config
from hv_jax.pipeline.image_to_3d import ImageTo3DSettings
from hv_jax.settings import config_dict

_HERE = os.path.dirname(os.path.abspath(__file__))
_PHOTO = os.path.join(os.path.dirname(os.path.abspath(hv_jax.__file__)), 'assets', 'demo', 'bell_photo.jpg')


def get_config():
  c = config_dict(ImageTo3DSettings)
  c.input = _PHOTO
  c.output_dir = 'outputs/image_to_3d_demo'
  c.checkpoint = 'random'
  c.sample.model = 'tiny'
  c.sample.sample_num = 2
  c.sample.sample_steps = 10
  c.sample.seed = 0
  neus = load_config(os.path.join(_HERE, 'neus_fast.py'))
  neus.input, neus.output_dir, neus.overwrite = '', ImageTo3DSettings().neus.output_dir, False
  neus.train.total_steps = 150
  neus.train.decay_interval = 150
  neus.save_every = 50
  neus.mesh_resolution = 128
  # the random model's views are noise on no background: the original's white rule keeps every non-white
  # pixel, where the plain matte may find no object at all
  neus.matting = 'white'
  c.neus = neus
  c.texture_size = 512
  return c
