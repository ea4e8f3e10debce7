"""Convert CLIP weights (OpenAI checkpoint or Hugging Face `CLIPModel`) to the Flax two-tower `CLIPModel`.

  OpenAI layout:  ViT-L-14.pt (TorchScript archive or state_dict): `visual.*`, `transformer.*`,
                  `token_embedding.weight`, `positional_embedding`, `ln_final.*`, `text_projection`, `logit_scale`.
  Hugging Face:   a `save_pretrained` folder (config.json + model.safetensors or pytorch_model.bin):
                  `vision_model.*`, `text_model.*`, `visual_projection.weight`, `text_projection.weight`.

Hugging Face keys are first renamed onto the OpenAI layout (q/k/v projections packed into `in_proj` as
torch.nn.MultiheadAttention stores them; projections transposed), then both go through the one mapping of
`convert.names`. The architecture is read from the checkpoint (as `clip.build_model` does) or from
config.json. Every key is accounted for: unexpected, missing and mis-shaped keys are listed by name.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from flax import traverse_util

from convert.torch_io import ConversionError, Report, convert_tensors, load_state_dict, to_numpy
from hv_jax.models import clip
from hv_jax.models.config import CLIPConfig, CLIPModelConfig, CLIPTextConfig

PREFIXES = (('visual.', ('visual',)), ('', ('text',)))

_UNUSED = (
    (r'^logit_scale$', 'contrastive temperature: the CD score uses cosine similarities only'),
    (r'^(input_resolution|context_length|vocab_size)$', 'OpenAI archive metadata (read from shapes instead)'),
    (r'(^|\.)position_ids$', 'Hugging Face index buffer (0..L-1), implied by the positional embedding'),
)


def _allowed(key: str) -> Optional[str]:
  for pattern, reason in _UNUSED:
    if re.search(pattern, key):
      return reason
  return None


# ----------------------------------------------------------------------------- architecture from weights

def config_from_openai(sd) -> 'CLIPModelConfig':
  """`clip.build_model` (ViT variant): every dimension from tensor shapes."""
  need = ['visual.conv1.weight', 'visual.positional_embedding', 'visual.proj', 'token_embedding.weight',
          'positional_embedding', 'ln_final.weight', 'text_projection']
  missing = [k for k in need if k not in sd]
  if missing:
    raise ConversionError('not an OpenAI CLIP ViT checkpoint: missing ' + ', '.join(missing))
  count = lambda prefix: len({k.split('.')[len(prefix.split('.')) - 1] for k in sd if k.startswith(prefix)})
  vw, _, patch, _ = tuple(sd['visual.conv1.weight'].shape)
  grid = int(round((sd['visual.positional_embedding'].shape[0] - 1) ** 0.5))
  tw = int(sd['ln_final.weight'].shape[0])
  ratio = lambda prefix, w: int(sd[prefix + '0.mlp.c_fc.weight'].shape[0]) // w if prefix + '0.mlp.c_fc.weight' in sd \
      else 4
  vision = CLIPConfig(embed_dim=int(sd['text_projection'].shape[1]), image_resolution=patch * grid,
                      vision_layers=count('visual.transformer.resblocks.'), vision_width=vw, vision_patch_size=patch,
                      vision_mlp_ratio=ratio('visual.transformer.resblocks.', vw))
  text = CLIPTextConfig(vocab_size=int(sd['token_embedding.weight'].shape[0]),
                        context_length=int(sd['positional_embedding'].shape[0]),
                        width=tw, layers=count('transformer.resblocks.'), mlp_ratio=ratio('transformer.resblocks.', tw))
  return CLIPModelConfig(vision=vision, text=text)


def config_from_hf(cfg: dict) -> 'CLIPModelConfig':
  """A transformers `CLIPConfig` dict; refuses what the OpenAI architecture cannot express."""
  v, t = cfg.get('vision_config', {}), cfg.get('text_config', {})
  bad = [f'{side}.{k}={c.get(k)!r}' for side, c in (('vision_config', v), ('text_config', t))
         for k, ok in (('hidden_act', 'quick_gelu'), ('layer_norm_eps', 1e-5)) if c.get(k, ok) != ok]
  if bad:
    raise ConversionError('CLIP config not supported (the OpenAI architecture uses QuickGELU and LayerNorm '
                          'eps 1e-5): ' + ', '.join(bad))
  g = lambda c, k, d: int(c.get(k, d))
  vw, tw = g(v, 'hidden_size', 768), g(t, 'hidden_size', 512)
  vm, tm = g(v, 'intermediate_size', 4 * vw), g(t, 'intermediate_size', 4 * tw)
  if vm % vw or tm % tw:
    raise ConversionError(f'CLIP config not supported: intermediate_size ({vm}, {tm}) is not a multiple of '
                          f'hidden_size ({vw}, {tw})')
  vision = CLIPConfig(embed_dim=g(cfg, 'projection_dim', 512), image_resolution=g(v, 'image_size', 224),
                      vision_layers=g(v, 'num_hidden_layers', 12), vision_width=vw,
                      vision_patch_size=g(v, 'patch_size', 32),
                      vision_head_width=vw // g(v, 'num_attention_heads', 12), vision_mlp_ratio=vm // vw)
  text = CLIPTextConfig(vocab_size=g(t, 'vocab_size', 49408), context_length=g(t, 'max_position_embeddings', 77),
                        width=tw, layers=g(t, 'num_hidden_layers', 12),
                        head_width=tw // g(t, 'num_attention_heads', 8), mlp_ratio=tm // tw)
  return CLIPModelConfig(vision=vision, text=text)


# ----------------------------------------------------------------------------- Hugging Face -> OpenAI names

_HF_RENAMES = (
    (r'^vision_model\.embeddings\.class_embedding$', 'visual.class_embedding'),
    (r'^vision_model\.embeddings\.patch_embedding\.weight$', 'visual.conv1.weight'),
    (r'^vision_model\.embeddings\.position_embedding\.weight$', 'visual.positional_embedding'),
    (r'^vision_model\.pre_layrnorm\.', 'visual.ln_pre.'),
    (r'^vision_model\.post_layernorm\.', 'visual.ln_post.'),
    (r'^vision_model\.encoder\.layers\.', 'visual.transformer.resblocks.'),
    (r'^text_model\.embeddings\.token_embedding\.weight$', 'token_embedding'),
    (r'^text_model\.embeddings\.position_embedding\.weight$', 'positional_embedding'),
    (r'^text_model\.encoder\.layers\.', 'transformer.resblocks.'),
    (r'^text_model\.final_layer_norm\.', 'ln_final.'),
    (r'\.self_attn\.out_proj\.', '.attn.out_proj.'),
    (r'\.layer_norm1\.', '.ln_1.'),
    (r'\.layer_norm2\.', '.ln_2.'),
    (r'\.mlp\.fc1\.', '.mlp.c_fc.'),
    (r'\.mlp\.fc2\.', '.mlp.c_proj.'),
)
_QKV = re.compile(r'^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$')


def openai_names_from_hf(sd: Dict[str, object], report: Report) -> Dict[str, np.ndarray]:
  """Renames a Hugging Face CLIPModel state dict onto the OpenAI layout (numpy arrays).

  q/k/v projections are packed into `attn.in_proj_weight/bias` (rows q, k, v); a layer that lacks one of
  them is reported missing by its Hugging Face name. `visual_projection`/`text_projection` Linear weights
  [E, W] become the OpenAI [W, E] matrices.
  """
  out: Dict[str, np.ndarray] = {}
  qkv: Dict[Tuple[str, str], Dict[str, np.ndarray]] = {}
  for key, tensor in sd.items():
    m = _QKV.match(key)
    if m:
      qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = to_numpy(tensor)
      continue
    if key == 'visual_projection.weight':
      out['visual.proj'] = to_numpy(tensor).T
      continue
    if key == 'text_projection.weight':
      out['text_projection'] = to_numpy(tensor).T
      continue
    new = key
    for pattern, repl in _HF_RENAMES:
      new = re.sub(pattern, repl, new)
    out[new] = to_numpy(tensor)
  for (layer, kind), parts in sorted(qkv.items()):
    lost = [f'{layer}.self_attn.{p}_proj.{kind}' for p in 'qkv' if p not in parts]
    if lost:
      report.missing.extend(lost)
      continue
    if len({a.shape for a in parts.values()}) != 1:
      report.misshaped.append((f'{layer}.self_attn.q/k/v_proj.{kind}', 'in_proj',
                               tuple(parts['q'].shape), tuple(parts['k'].shape)))
      continue
    base = layer
    for pattern, repl in _HF_RENAMES[:10]:
      base = re.sub(pattern, repl, base)
    out[f'{base}.attn.in_proj_{kind}'] = np.concatenate([parts['q'], parts['k'], parts['v']], 0)
  return out


# ----------------------------------------------------------------------------- conversion

def target_shapes(config) -> Dict[Tuple[str, ...], Tuple[tuple, object]]:
  flat = traverse_util.flatten_dict(jax.eval_shape(lambda: clip.init_params(config)))
  return {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}


def convert_openai_layout(sd: Dict[str, object], config, report: Optional[Report] = None):
  """OpenAI-layout state dict -> (nested params, Report); ConversionError lists every problem by name."""
  report = report or Report()
  targets = target_shapes(config)
  items = (('token_embedding' if k == 'token_embedding.weight' else k, v) for k, v in sd.items())
  flat = convert_tensors(items, targets, report, prefixes=PREFIXES, allowed=_allowed)
  misshaped = {m[1] for m in report.misshaped}
  report.missing += ['/'.join(p) for p in targets if p not in flat and '/'.join(p) not in misshaped]
  if not report.ok:
    raise ConversionError(f'CLIP weights do not match the architecture ({len(report.unmapped)} unexpected, '
                          f'{len(report.missing)} missing, {len(report.misshaped)} mis-shaped keys):\n'
                          + report.problems())
  return traverse_util.unflatten_dict(flat), report


def convert_hf(sd: Dict[str, object], hf_config: dict):
  """Hugging Face CLIPModel state dict + its config dict -> (params, CLIPModelConfig, Report)."""
  config = config_from_hf(hf_config)
  report = Report()
  params, report = convert_openai_layout(openai_names_from_hf(sd, report), config, report)
  return params, config, report


def convert_openai(sd: Dict[str, object]):
  """OpenAI CLIP state dict -> (params, CLIPModelConfig, Report)."""
  config = config_from_openai(sd)
  params, report = convert_openai_layout(sd, config)
  return params, config, report


def load(path: str):
  """A Hugging Face `save_pretrained` folder or an OpenAI `.pt` file -> (params, CLIPModelConfig, Report)."""
  if os.path.isdir(path):
    cfg_path = os.path.join(path, 'config.json')
    if not os.path.isfile(cfg_path):
      raise ConversionError(f'{path} is not a Hugging Face CLIPModel folder: no config.json')
    try:
      hf_config = json.load(open(cfg_path))
    except ValueError as e:
      raise ConversionError(f'{cfg_path} is not valid JSON: {e}') from e
    st = os.path.join(path, 'model.safetensors')
    if os.path.isfile(st):
      try:
        from safetensors.numpy import load_file  # lazy: optional dependency (extras eval/test), HF folders only
        sd = load_file(st)
      except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for bad files)
        raise ConversionError(f'{st} is not a readable safetensors file (truncated or corrupt?): {e}') from e
    else:
      sd = load_state_dict(os.path.join(path, 'pytorch_model.bin'), what='CLIP weights')
    return convert_hf(sd, hf_config)
  return convert_openai(load_state_dict(path, what='CLIP checkpoint'))
