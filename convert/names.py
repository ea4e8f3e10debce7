"""PyTorch SyncDreamer key -> Flax param path + layout transform: the one mapping table.

A key is mapped in three readable steps:

1. PREFIXES: the PyTorch sub-model prefix picks the Flax sub-tree.
2. The rest of the key is split at '.', and every numeric segment (a ModuleList / Sequential index)
   is merged into the name before it: `input_blocks.1.0.in_layers.2.weight` ->
   `input_blocks_1_0/in_layers_2/weight` (the Flax modules are named that way on purpose).
3. LEAVES: the last segment and the tensor rank choose the Flax leaf name and the layout transform.

Keys that are legitimately unused are matched by ALLOW_UNUSED (each with its reason) and printed by the
converter; every other key must map onto exactly one Flax leaf of the right shape.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Optional, Tuple

import numpy as np

# (PyTorch prefix, Flax sub-tree). Longest prefix first. '' = the model root.
PREFIXES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ('model.diffusion_model.', ('unet',)),                 # DepthWiseAttention UNet
    ('clip_image_encoder.model.visual.', ('clip',)),       # OpenAI CLIP ViT image tower (in the .ckpt)
    ('first_stage_model.', ('vae',)),                      # AutoencoderKL
    ('spatial_volume.', ('spatial_volume',)),              # SpatialVolumeNet
    ('', ()),                                              # time_embed_0/2, cc_projection, poses, Ks, azimuth
)

# A separate OpenAI CLIP file (ViT-L-14.pt) holds the tower under `visual.`.
CLIP_FILE_PREFIXES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (('visual.', ('clip',)),)

# Layout transforms (PyTorch array -> Flax array).
TRANSFORMS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'identity': lambda a: a,
    'linear': lambda a: a.T,                                   # Linear [out, in]          -> [in, out]
    'conv2d': lambda a: a.transpose(2, 3, 1, 0),               # Conv2d [O, I, H, W]       -> [H, W, I, O]
    'conv3d': lambda a: a.transpose(2, 3, 4, 1, 0),            # Conv3d [O, I, D, H, W]    -> [D, H, W, I, O]
    'conv_transpose3d': lambda a: a.transpose(2, 3, 4, 0, 1),  # ConvT3d [I, O, D, H, W]   -> [D, H, W, I, O]
}
TRANSFORM_SHAPES: Dict[str, Callable[[tuple], tuple]] = {
    'identity': lambda s: tuple(s),
    'linear': lambda s: (s[1], s[0]),
    'conv2d': lambda s: (s[2], s[3], s[1], s[0]),
    'conv3d': lambda s: (s[2], s[3], s[4], s[1], s[0]),
    'conv_transpose3d': lambda s: (s[2], s[3], s[4], s[0], s[1]),
}

# ConvTranspose3d modules of the 3D U-Nets (torch stores their weights [in, out, k, k, k]).
CONV_TRANSPOSE = re.compile(r'^spatial_volume\.(spatial_volume_feats\.conv[789]|frustum_volume_feats\.up[012])'
                            r'\.conv\.weight$')

# Leaves whose names and layouts are kept as they are.
PLAIN_LEAVES = ('class_embedding', 'positional_embedding', 'proj', 'poses', 'Ks', 'azimuth', 'token_embedding',
                'text_projection')

# (regex over the full PyTorch key, reason). Matching keys are reported, never converted.
ALLOW_UNUSED: Tuple[Tuple[str, str], ...] = (
    (r'^(betas|alphas|alphas_cumprod|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|posterior_variance'
     r'|posterior_log_variance_clipped)$',
     'schedule buffer: recomputed by hv_jax.sampling.schedule (betas/alphas_cumprod are checked equal)'),
    (r'^clip_image_encoder\.model\.(positional_embedding|text_projection|logit_scale|token_embedding\.weight'
     r'|ln_final\.(weight|bias))$',
     'CLIP text side: SyncDreamer deletes the text transformer and never uses these'),
    (r'^(transformer\.|token_embedding\.|positional_embedding$|text_projection$|logit_scale$|ln_final\.'
     r'|input_resolution$|context_length$|vocab_size$)',
     'CLIP text side / metadata of the separate OpenAI CLIP file: unused by the image tower'),
    (r'^model_ema\.', 'EMA copy of the UNet: sampling uses model.diffusion_model, as the original'),
    (r'^first_stage_model\.loss\.', 'autoencoder training loss (LPIPS/discriminator): unused at inference'),
    (r'^cond_stage_model\.', 'unused conditioning stage of LDM configs'),
)


def allowed_unused(key: str) -> Optional[str]:
  for pattern, reason in ALLOW_UNUSED:
    if re.search(pattern, key):
      return reason
  return None


def _merge_indices(parts):
  out = []
  for p in parts:
    if p.isdigit() and out:
      out[-1] = f'{out[-1]}_{p}'
    else:
      out.append(p)
  return out


def map_key(key: str, ndim: int, prefixes=PREFIXES) -> Optional[Tuple[Tuple[str, ...], str]]:
  """Returns (flax path, transform name) for a PyTorch key, or None if no prefix claims it."""
  for prefix, root in prefixes:
    if key.startswith(prefix):
      break
  else:
    return None
  parts = _merge_indices(key[len(prefix):].split('.'))
  *mods, leaf = parts
  if leaf in PLAIN_LEAVES:
    return tuple(root) + tuple(mods) + (leaf,), 'identity'
  if leaf == 'in_proj_weight':                                  # nn.MultiheadAttention packed q, k, v
    return tuple(root) + tuple(mods) + ('in_proj', 'kernel'), 'linear'
  if leaf == 'in_proj_bias':
    return tuple(root) + tuple(mods) + ('in_proj', 'bias'), 'identity'
  if leaf == 'bias':
    return tuple(root) + tuple(mods) + ('bias',), 'identity'
  if leaf == 'weight':
    if ndim == 1:                                               # GroupNorm / LayerNorm affine
      return tuple(root) + tuple(mods) + ('scale',), 'identity'
    if CONV_TRANSPOSE.match(key):
      transform = 'conv_transpose3d'
    else:
      transform = {2: 'linear', 4: 'conv2d', 5: 'conv3d'}.get(ndim)
      if transform is None:
        return None
    return tuple(root) + tuple(mods) + ('kernel',), transform
  return None
