"""Heavy or optional dependencies, imported on first use: one function per dependency, each saying why.

Every other import of hv_jax sits at the top of its module. These stay out of `import hv_jax.<module>`
because one path of one command needs them and they are slow to import or not installed by default
(torch is imported by the converters only: convert/torch_io.py's `torch_module`):

  pyplot()          matplotlib (extras eval, experiments): the evaluation figure, the study report's plots
  clip_tokenizer()  transformers (extras eval): the CD score's CLIP tokenizer, ~3 s to import
  trimesh()         trimesh: mesh files and the mesh metrics, ~1 s to import
  ray_pyembree()    trimesh's embree ray tracer (embreex): the mesh metrics' depth renders
  xatlas()          xatlas: the UV atlas of a textured export (hv_jax.export)
  imageio()         imageio: the turntable GIF of the export preview (hv_jax.export)
  gradio()          gradio (extra app): the web app (hv_jax.app), with its analytics off
"""
from __future__ import annotations

import os

from hv_jax.errors import UserError


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (files only, no display needed)."""
  import matplotlib  # lazy: optional dependency (extras eval/experiments), figures only
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # lazy: see above; must follow matplotlib.use
  return plt


def clip_tokenizer():
  """transformers.CLIPTokenizer; RuntimeError saying what to install when transformers is missing."""
  try:
    from transformers import CLIPTokenizer  # lazy: optional heavy dependency (extras eval), CD score only
  except ImportError as e:
    raise RuntimeError('the CD score needs transformers for the CLIP tokenizer: pip install transformers') from e
  return CLIPTokenizer


def trimesh():
  """The trimesh module."""
  import trimesh  # lazy: heavy import, mesh files and the mesh metrics only
  return trimesh


def ray_pyembree():
  """trimesh's ray tracer on embree (embreex): the mesh metrics' depth renders."""
  from trimesh.ray import ray_pyembree  # lazy: as trimesh(), plus embree's native library
  return ray_pyembree


def xatlas():
  """The xatlas module (UV charts and packing, native library)."""
  import xatlas  # lazy: native extension, textured export only
  return xatlas


def imageio():
  """imageio.v2 (GIF writing)."""
  import imageio.v2 as imageio  # lazy: preview only
  return imageio


def gradio():
  """The gradio module, never reaching the internet (usage analytics and its version check off); UserError
  saying what to install when it is missing."""
  os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
  try:
    import gradio  # lazy: optional heavy dependency (extra app), the web app only
  except ImportError as e:
    raise UserError(f"the web app needs gradio: pip install -e '.[app]' ({e})") from None
  return gradio
