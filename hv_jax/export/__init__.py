"""Export that other tools open: GLB / OBJ writers, a texture baked from posed views, and a turntable preview.

  hv_jax.export.write     write_glb, write_obj, export_asset, to_y_up (the files are y-up)
  hv_jax.export.texture   bake_texture, BakeSettings, uv_atlas, simplify, sample_texture
  hv_jax.export.preview   render, turntable, write_preview

docs/export.md describes the files, the baking method and its validation.
"""
