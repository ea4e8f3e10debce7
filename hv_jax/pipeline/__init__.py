"""Multi-stage runs built from the library's stages (image_to_3d: a photo to a textured mesh)."""
