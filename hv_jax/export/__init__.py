"""Export that other tools open: GLB / OBJ writers, a texture baked from posed views, and a turntable preview.

  write_glb, write_obj, export_asset, to_y_up     (hv_jax.export.write; the files are y-up)
  bake_texture, BakeSettings, uv_atlas, simplify  (hv_jax.export.texture)
  render, turntable, write_preview                (hv_jax.export.preview)

docs/export.md describes the files, the baking method and its validation.
"""
from hv_jax.export.preview import render, turntable, write_preview
from hv_jax.export.texture import BakeSettings, bake_texture, sample_texture, simplify, uv_atlas
from hv_jax.export.write import export_asset, to_y_up, write_glb, write_obj

__all__ = ['BakeSettings', 'bake_texture', 'export_asset', 'render', 'sample_texture', 'simplify', 'to_y_up',
           'turntable', 'uv_atlas', 'write_glb', 'write_obj', 'write_preview']
