"""OpenAI CLIP ViT image tower and SyncDreamer's CLIP image conditioning, channels-last.

Mirrors OpenAI `clip/model.py` (`VisionTransformer`, `ResidualAttentionBlock`, `CLIP.encode_image`) and
`ldm/modules/encoders/modules.py::FrozenCLIPImageEmbedder` (preprocess + encode -> [B, 1, embed_dim]).

Parameter tree = the PyTorch key below `...model.visual.` with numeric segments merged into the previous
name ('transformer.resblocks.3.ln_1.weight' -> transformer/resblocks_3/ln_1/scale). `attn/in_proj/kernel` is
torch's `in_proj_weight` transposed to [W, 3W] (columns ordered q, k, v); `class_embedding` [W],
`positional_embedding` [G*G+1, W] and `proj` [W, E] are top-level leaves of the tower.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hv_jax.models.config import CLIPConfig, CLIPModelConfig, CLIPTextConfig
from hv_jax.models.layers import LayerNorm, conv, dense


# ----------------------------------------------------------------------------------------------------
# Preprocessing (FrozenCLIPImageEmbedder.preprocess)
# ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] float32 matrix of torch's upsample_bicubic2d along one axis (align_corners=True).

  Reproduces ATen's float32 arithmetic: scale = (in-1)/(out-1), real = scale*dst, i0 = floor(real),
  t = clamp(real - i0, 0, 1), Keys cubic weights with A = -0.75 for taps i0-1..i0+2, each tap index
  clamped to [0, in-1] (border replication; clamped taps add up on the edge pixel).
  """
  a = np.float32(-0.75)
  one = np.float32(1)
  scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
  real = scale * np.arange(out_size, dtype=np.float32)
  i0 = np.floor(real)
  t = np.clip(real - i0, 0, 1).astype(np.float32)

  def cc1(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + one

  def cc2(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  w = np.stack([cc2(t + one), cc1(t), cc1(one - t), cc2((one - t) + one)], -1).astype(np.float32)
  idx = np.clip(i0.astype(np.int64)[:, None] + np.arange(-1, 3)[None], 0, in_size - 1)
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.reshape(-1)), w.reshape(-1))
  return m


def resize_bicubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.interpolate(mode='bicubic', align_corners=True)` (kornia.geometry.resize, antialias=False).

  x: [B, H, W, C] -> [B, size[0], size[1], C], float32, as two separable matmuls.
  """
  x = jnp.asarray(x, jnp.float32)
  my = jnp.asarray(bicubic_matrix(x.shape[1], size[0]))
  mx = jnp.asarray(bicubic_matrix(x.shape[2], size[1]))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,bhwc->bowc', my, x, precision=hi)
  return jnp.einsum('pw,bowc->bopc', mx, x, precision=hi)


def preprocess(x: jax.Array, config: CLIPConfig) -> jax.Array:
  """FrozenCLIPImageEmbedder.preprocess: [B, H, W, 3] in [-1, 1] -> [B, R, R, 3] CLIP-normalized.

  Bicubic resize to R = image_resolution (224) with align_corners=True, then (x+1)/2, then
  (x - mean) / std (kornia.enhance.normalize).
  """
  r = config.image_resolution
  x = resize_bicubic(x, (r, r))
  x = (x + 1.) / 2.
  return (x - jnp.asarray(config.mean, jnp.float32)) / jnp.asarray(config.std, jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Vision transformer (OpenAI clip/model.py)
# ----------------------------------------------------------------------------------------------------

def quick_gelu(x):
  """OpenAI CLIP QuickGELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention self-attention (batch-first here), fused q/k/v `in_proj`.

  causal=True is the text tower's `build_attention_mask` (-inf above the diagonal).
  """
  num_heads: int
  dtype: jnp.dtype | None = None
  causal: bool = False

  @nn.compact
  def __call__(self, x):
    b, l, w = x.shape
    h = self.num_heads
    qkv = dense(3 * w, name='in_proj', dtype=self.dtype)(x)
    q, k, v = jnp.split(qkv.reshape(b, l, 3, h, w // h), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, L, H, D]
    q = q * (w // h) ** -0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k)
    if self.causal:
      logits = jnp.where(jnp.tril(jnp.ones((l, l), bool)), logits, -jnp.inf)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    o = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(b, l, w)
    return dense(w, name='out_proj', dtype=self.dtype)(o)


class MLP(nn.Module):
  """ResidualAttentionBlock.mlp: c_fc (W -> ratio*W; OpenAI CLIP: 4), QuickGELU, c_proj (back to W)."""
  dtype: jnp.dtype | None = None
  ratio: int = 4

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    y = quick_gelu(dense(self.ratio * w, name='c_fc', dtype=self.dtype)(x))
    return dense(w, name='c_proj', dtype=self.dtype)(y)


class ResidualAttentionBlock(nn.Module):
  """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""
  num_heads: int
  dtype: jnp.dtype | None = None
  causal: bool = False
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    x = x + MultiheadAttention(self.num_heads, self.dtype, self.causal, name='attn')(LayerNorm(name='ln_1')(x))
    return x + MLP(self.dtype, self.mlp_ratio, name='mlp')(LayerNorm(name='ln_2')(x))


class Transformer(nn.Module):
  """OpenAI CLIP Transformer: `layers` ResidualAttentionBlocks named resblocks_i (causal for text)."""
  layers: int
  num_heads: int
  dtype: jnp.dtype | None = None
  causal: bool = False
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.num_heads, self.dtype, self.causal, self.mlp_ratio, name=f'resblocks_{i}')(x)
    return x


class CLIPVisionTower(nn.Module):
  """OpenAI CLIP `VisionTransformer` (= `CLIP.encode_image`): [B, R, R, 3] preprocessed -> [B, E].

  conv1 patchify (no bias, stride = patch) -> prepend class_embedding -> + positional_embedding ->
  ln_pre -> transformer -> ln_post(class token) -> @ proj. Output is float32 (encode_image(...).float()).
  """
  config: CLIPConfig
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, pixels):
    cfg = self.config
    w, p = cfg.vision_width, cfg.vision_patch_size
    g = cfg.image_resolution // p
    init = nn.initializers.normal(stddev=w ** -0.5)
    class_embedding = self.param('class_embedding', init, (w,), jnp.float32)
    positional_embedding = self.param('positional_embedding', init, (g * g + 1, w), jnp.float32)
    proj = self.param('proj', init, (w, cfg.embed_dim), jnp.float32)
    dtype = self.dtype or jnp.float32

    x = conv(w, p, stride=p, padding=0, use_bias=False, name='conv1', dtype=dtype)(pixels.astype(dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, w)  # [B, G*G, W], row-major patches as torch's reshape of NCHW
    cls = jnp.broadcast_to(class_embedding.astype(x.dtype), (b, 1, w))
    x = jnp.concatenate([cls, x], axis=1) + positional_embedding.astype(x.dtype)
    x = LayerNorm(name='ln_pre')(x)
    x = Transformer(cfg.vision_layers, cfg.vision_heads, self.dtype, mlp_ratio=cfg.vision_mlp_ratio,
                    name='transformer')(x)
    x = LayerNorm(name='ln_post')(x[:, 0, :])
    return (x @ proj.astype(x.dtype)).astype(jnp.float32)


def encode(params, x: jax.Array, config: CLIPConfig, dtype=None) -> jax.Array:
  """FrozenCLIPImageEmbedder.encode: [B, H, W, 3] in [-1, 1] -> [B, 1, embed_dim] float32.

  `params` is the tower's parameter tree (the contents of `variables['params']`). Jit with
  `config` (and `dtype`) static.
  """
  emb = CLIPVisionTower(config, dtype).apply({'params': params}, preprocess(x, config))
  return emb[:, None, :]


# ----------------------------------------------------------------------------------------------------
# Text transformer and the two-tower model (OpenAI clip/model.py CLIP.encode_text / encode_image)
# ----------------------------------------------------------------------------------------------------

class CLIPTextTower(nn.Module):
  """OpenAI `CLIP.encode_text`: token ids [B, L] (L = context_length) -> [B, E] float32.

  token_embedding + positional_embedding -> causal transformer -> ln_final -> the token at argmax(ids)
  (the end-of-text token has the largest id) @ text_projection. Because attention is causal, what follows
  the end-of-text token (zero padding in clip.tokenize) cannot change the result.
  """
  config: CLIPTextConfig
  embed_dim: int

  @nn.compact
  def __call__(self, ids):
    cfg = self.config
    w = cfg.width
    token_embedding = self.param('token_embedding', nn.initializers.normal(0.02), (cfg.vocab_size, w), jnp.float32)
    positional_embedding = self.param('positional_embedding', nn.initializers.normal(0.01),
                                      (cfg.context_length, w), jnp.float32)
    text_projection = self.param('text_projection', nn.initializers.normal(w ** -0.5), (w, self.embed_dim),
                                 jnp.float32)
    x = jnp.take(token_embedding, ids, axis=0) + positional_embedding[:ids.shape[1]]
    x = Transformer(cfg.layers, cfg.heads, causal=True, mlp_ratio=cfg.mlp_ratio, name='transformer')(x)
    x = LayerNorm(name='ln_final')(x)
    eot = jnp.take_along_axis(x, jnp.argmax(ids, axis=-1)[:, None, None], axis=1)[:, 0]
    return eot @ text_projection


class CLIPModel(nn.Module):
  """Both towers under `visual` and `text` (the OpenAI state-dict split: `visual.*` vs the rest)."""
  config: CLIPModelConfig

  def setup(self):
    self.visual = CLIPVisionTower(self.config.vision)
    self.text = CLIPTextTower(self.config.text, self.config.vision.embed_dim)

  def __call__(self, pixels, ids):
    return self.visual(pixels), self.text(ids)

  def encode_image(self, pixels):
    return self.visual(pixels)

  def encode_text(self, ids):
    return self.text(ids)


def encode_image(params, pixels: jax.Array, config: CLIPModelConfig) -> jax.Array:
  """`CLIP.encode_image` on CLIP-preprocessed [B, R, R, 3] pixels -> [B, E] (params of a CLIPModel)."""
  return CLIPModel(config).apply({'params': params}, pixels, method=CLIPModel.encode_image)


def encode_text(params, ids: jax.Array, config: CLIPModelConfig) -> jax.Array:
  """`CLIP.encode_text` on token ids [B, L] -> [B, E] (params of a CLIPModel)."""
  return CLIPModel(config).apply({'params': params}, ids, method=CLIPModel.encode_text)


def init_params(config: CLIPModelConfig, rng=None):
  """Random CLIPModel params (tests, benchmarks); jax.eval_shape of this gives the converter's targets."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  r = config.vision.image_resolution
  pixels = jnp.zeros((1, r, r, 3), jnp.float32)
  ids = jnp.zeros((1, config.text.context_length), jnp.int32)
  return CLIPModel(config).init(rng, pixels, ids)['params']
