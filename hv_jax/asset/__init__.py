"""Export that other tools open: GLB / OBJ writers, a texture baked from posed views, and a turntable preview.

  write_glb, write_obj, export_asset       (hv_jax.asset.write)
  bake_texture, BakeSettings, uv_atlas     (hv_jax.asset.texture)
  render, write_preview                    (hv_jax.asset.preview)

docs/export.md describes the files, the baking method and its validation.
"""
from hv_jax.asset.preview import render, turntable, write_preview
from hv_jax.asset.texture import BakeSettings, bake_texture, sample_texture, simplify, uv_atlas
from hv_jax.asset.write import export_asset, write_glb, write_obj

__all__ = ['BakeSettings', 'bake_texture', 'export_asset', 'render', 'sample_texture', 'simplify', 'turntable',
           'uv_atlas', 'write_glb', 'write_obj', 'write_preview']
