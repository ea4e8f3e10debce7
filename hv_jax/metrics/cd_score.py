"""The CD score (HarmonyView §4): diversity of the generated views over their semantic variance, with CLIP.

Exactly as the original `eval_CD_score.py` + `gso_nvs_statistics.run_CD_stastics` compute it:

- Each of the 16 views of an instance is CLIP-preprocessed (`clip.load`'s torchvision transform: PIL bicubic
  resize of the shorter side to R, centre crop R, /255, CLIP mean/std) and encoded with `encode_image`.
- The reference is generated view 0. D = Σ_i (1 − cos(f_0, f_i)) over the 16 views (a sum, view 0 adds 0).
- S_var = statistics.variance (sample variance, n − 1) of 100·max(cos(f_text, f_i), 0) over the 16 views,
  f_text = encode_text("An image of <name>"), <name> = the object's folder name with '_' → ' ' and digits
  removed (`prompt_for`).
- The reported score is a ratio of means over every (object, instance): mean(D) / mean(S_var). The original
  reads D and S_var back from a log rounded to 5 decimals; `rounded=True` reproduces that.

`variant='per_instance'` is the formula written for one generated set, D_k / S_var,k, averaged over sets —
a mean of ratios, which weighs every instance equally (the script's ratio of means weighs instances with a
large semantic variance more). Report which one you use; the paper's numbers come from the script.
"""
from __future__ import annotations

import functools
import re
import statistics
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from hv_jax import optional
from hv_jax.data.views import NUM_VIEWS
from hv_jax.models import clip
from hv_jax.models.config import CLIPModelConfig


def prompt_for(name: str) -> str:
  """eval_CD_score.py's text: 'An image of ' + folder name with '_' -> ' ' and every digit removed."""
  return 'An image of ' + re.sub(r'\d', '', name.replace('_', ' '))


def tokenize(prompt: str, tokenizer, context_length: int = 77) -> np.ndarray:
  """`clip.tokenize([prompt])`: [1, L] int32 = [start-of-text] + BPE tokens + [end-of-text], zero padded.

  `tokenizer` is a transformers CLIPTokenizer (its ids equal OpenAI's simple tokenizer's); its own special
  tokens give the start/end ids. Too long a prompt is an error, as in clip.tokenize(truncate=False).
  """
  ids = tokenizer(prompt, add_special_tokens=True)['input_ids']
  if len(ids) > context_length:
    raise ValueError(f'prompt {prompt!r} is {len(ids)} tokens, longer than the context length {context_length}')
  out = np.zeros((1, context_length), np.int32)
  out[0, :len(ids)] = ids
  return out


def load_tokenizer(path: str):
  """transformers CLIPTokenizer from a folder with vocab.json + merges.txt (a Hugging Face CLIP download)."""
  CLIPTokenizer = optional.clip_tokenizer()
  try:
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)
  except Exception as e:  # noqa: BLE001  (transformers raises OSError/ValueError/... for missing files)
    raise RuntimeError(f'no CLIP tokenizer files (vocab.json, merges.txt) in {path}: download '
                       f'openai/clip-vit-large-patch14 from Hugging Face and point the tokenizer there') from e


def preprocess(views_u8: np.ndarray, resolution: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """clip.load's transform on uint8 RGB views [..., H, W, 3] -> float32 [..., R, R, 3], channels-last.

  Resize(R, BICUBIC) on a PIL image scales the shorter side to R (PIL's antialiased bicubic on uint8, which
  rounds between its two passes: done with PIL itself to be exact), CenterCrop(R) takes the centre
  (torchvision's rounding), ToTensor divides by 255, Normalize uses CLIP's mean/std. Host-side.
  """
  views_u8 = np.asarray(views_u8)
  if views_u8.dtype != np.uint8 or views_u8.ndim < 3 or views_u8.shape[-1] != 3:
    raise ValueError(f'views must be uint8 RGB [..., H, W, 3], got {views_u8.dtype} {views_u8.shape}')
  lead, (h, w) = views_u8.shape[:-3], views_u8.shape[-3:-1]
  if h <= w:
    size = (int(resolution * w / h), resolution)   # PIL size is (width, height)
  else:
    size = (resolution, int(resolution * h / w))
  top = int(round((size[1] - resolution) / 2.0))
  left = int(round((size[0] - resolution) / 2.0))
  flat = views_u8.reshape((-1, h, w, 3))
  out = np.empty((flat.shape[0], resolution, resolution, 3), np.float32)
  for i, v in enumerate(flat):
    img = np.asarray(Image.fromarray(v).resize(size, Image.BICUBIC))
    out[i] = img[top:top + resolution, left:left + resolution].astype(np.float32) / 255.
  out = (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return out.reshape(lead + out.shape[1:])


def _cos(a, b):
  """torch.nn.functional.cosine_similarity (eps 1e-8 on the norms' product)."""
  num = jnp.sum(a * b, -1)
  return num / jnp.sqrt(jnp.maximum(jnp.sum(a * a, -1) * jnp.sum(b * b, -1), 1e-16))


def view_terms(image_features: jax.Array, text_features: jax.Array):
  """Per-view terms of the script: image [..., 16, E], text [E] ->
  (neg_cos [..., 16] = 1 − cos(f_0, f_i), text_sim [..., 16] = 100·max(cos(f_text, f_i), 0))."""
  neg_cos = 1. - _cos(image_features[..., :1, :], image_features)
  text_sim = jnp.maximum(_cos(text_features, image_features), 0.) * 100.
  return neg_cos, text_sim


def instance_terms(neg_cos: np.ndarray, text_sim: np.ndarray):
  """(D, S_var) per instance in float64 as the script's Python floats: D = Σ neg_cos,
  S_var = statistics.variance(text_sim) (sample variance)."""
  neg_cos = np.asarray(neg_cos, np.float64)
  text_sim = np.asarray(text_sim, np.float64)
  d = neg_cos.sum(-1)
  s = np.array([statistics.variance(row.tolist()) for row in text_sim.reshape(-1, text_sim.shape[-1])])
  return d, s.reshape(text_sim.shape[:-1])


def cd_score(d, s_var, *, variant: str = 'script', rounded: bool = False) -> float:
  """Aggregate over all (object, instance) rows. 'script': mean(D) / mean(S_var) (run_CD_stastics);
  'per_instance': mean(D / S_var). rounded=True first rounds D, S_var to 5 decimals as the log does."""
  d = np.asarray(d, np.float64).ravel()
  s = np.asarray(s_var, np.float64).ravel()
  if rounded:
    d = np.array([float(f'{x:.5f}') for x in d])
    s = np.array([float(f'{x:.5f}') for x in s])
  if variant == 'script':
    return float(d.mean() / s.mean())
  if variant == 'per_instance':
    return float(np.mean(d / s))
  raise ValueError(f"variant must be 'script' or 'per_instance', got {variant!r}")


@functools.partial(jax.jit, static_argnums=(3,))
def features(params, pixels: jax.Array, ids: jax.Array, config: CLIPModelConfig):
  """CLIP features of preprocessed views [..., R, R, 3] (all views of all instances in one call) and of
  the prompt ids [1, L] -> (image [..., E], text [E])."""
  lead = pixels.shape[:-3]
  img = clip.encode_image(params, pixels.reshape((-1,) + pixels.shape[-3:]), config)
  txt = clip.encode_text(params, ids, config)[0]
  return img.reshape(lead + img.shape[-1:]), txt


def evaluate_object(params, config: CLIPModelConfig, views_u8: np.ndarray, ids: np.ndarray) -> dict:
  """All instances of one object: views_u8 [N, 16, H, W, 3] uint8 -> per-instance D, S_var and the terms."""
  views_u8 = np.asarray(views_u8)
  if views_u8.ndim != 5 or views_u8.shape[1] != NUM_VIEWS:
    raise ValueError(f'expected [instances, {NUM_VIEWS}, H, W, 3] views, got {views_u8.shape}')
  ids = np.asarray(ids)
  if ids.shape != (1, config.text.context_length) or ids.min() < 0 or ids.max() >= config.text.vocab_size:
    raise ValueError(f'token ids must be [1, {config.text.context_length}] in [0, {config.text.vocab_size}): '
                     f'got shape {ids.shape}, range [{ids.min()}, {ids.max()}] (tokenizer of another CLIP?)')
  v = config.vision
  pixels = preprocess(views_u8, v.image_resolution, v.mean, v.std)
  img, txt = features(params, jnp.asarray(pixels), jnp.asarray(ids), config)
  neg_cos, text_sim = jax.device_get(view_terms(img, txt))
  d, s = instance_terms(neg_cos, text_sim)
  return {'D': d, 'S_var': s, 'neg_cos': neg_cos, 'text_sim': text_sim}
