"""NeuS fields of HarmonyView (`renderer/neus_networks.py`): SDF network, colour network, single variance.

Plain param dicts and pure functions, features on the last axis, every function jit-able and
differentiable (the eikonal term differentiates the SDF gradient, i.e. second order).

Param tree (`init_params` / convert/neus.py's `convert_state_dict` build the same one):

  {'sdf':   {'lin0': {'g': [out], 'v': [in, out], 'bias': [out]}, ..., 'lin8': ...},
   'color': {'lin0': ..., ..., 'lin4': ...},
   'variance': []}

With weight norm (the original: `torch.nn.utils.weight_norm(nn.Linear)`, dim=0) a layer keeps the two
parameters `g` (torch `weight_g` [out, 1] -> [out]) and `v` (torch `weight_v` [out, in] -> transposed
[in, out]) and uses w = v * (g / ||v||), the norm taken per output unit (over the input axis), exactly as
`torch._weight_norm`. Without weight norm a layer is {'kernel': [in, out], 'bias': [out]}.

PyTorch details reproduced here:
- positional encoding `get_embedder(multires)`: [x, sin(x f0), cos(x f0), sin(x f1), ...], f_k = 2**k;
- SDF skip connection at `skip_in`: concat(h, embedded input) / sqrt(2) *before* that layer;
- `nn.Softplus(beta=100)` incl. its threshold (beta*x > 20 -> identity), so the gradient matches too;
- `F.normalize`: x / max(||x||, 1e-12);
- matmuls at HIGHEST precision (the original runs true float32; no TF32/bf16 passes on accelerators).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hv_jax import settings

Params = Dict[str, Any]
PRECISION = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class SDFConfig:
  """`SDFNetwork(...)` as NeuSRenderer builds it."""
  d_in: int = 3
  d_out: int = 257
  d_hidden: int = 256
  n_layers: int = 8
  skip_in: Tuple[int, ...] = (4,)
  multires: int = 6
  bias: float = 0.5
  scale: float = 1.0
  geometric_init: bool = True
  weight_norm: bool = True
  inside_outside: bool = False

  @property
  def input_ch(self) -> int:
    return embed_dim(self.multires, self.d_in)

  @property
  def num_linear(self) -> int:
    return self.n_layers + 1

  def layer_shapes(self) -> Tuple[Tuple[int, int], ...]:
    """(in, out) of lin0..lin{n_layers}; a layer feeding a skip layer outputs d_hidden - input_ch."""
    dims = [self.input_ch] + [self.d_hidden] * self.n_layers + [self.d_out]
    shapes = []
    for l in range(self.num_linear):
      out = dims[l + 1] - dims[0] if (l + 1) in self.skip_in else dims[l + 1]
      if out <= 0:
        raise ValueError(f'SDFConfig: d_hidden={self.d_hidden} leaves no room for the {dims[0]}-wide skip input')
      shapes.append((dims[l], out))
    return tuple(shapes)


@dataclasses.dataclass(frozen=True)
class GridSDFConfig:
  """A fast SDF field for CPU training (configs/neus_fast.py; not in the original).

  Dense multi-resolution feature grids over the cube [-bound, bound]^3 (trilinear, `features` channels per
  level, all levels in one table [sum r^3, features] under params['sdf']['grids']; the dense analogue of the original's unused SDFHashGridNetwork), concatenated with xyz, then a
  small softplus(beta=100) MLP to [sdf, features]. The SDF is parameterised as |x| - radius + MLP output
  (last layer starts near zero), so training starts from a sphere with |grad sdf| = 1, as geometric init.
  """
  resolutions: Tuple[int, ...] = (32, 64, 128)
  features: int = 4
  bound: float = 0.6
  d_hidden: int = 64
  n_layers: int = 2
  d_out: int = 16
  radius: float = 0.5
  grid_init: float = 1e-4

  @property
  def input_ch(self) -> int:
    return 3 + self.features * len(self.resolutions)

  def layer_shapes(self) -> Tuple[Tuple[int, int], ...]:
    dims = [self.input_ch] + [self.d_hidden] * self.n_layers + [self.d_out]
    return tuple((dims[l], dims[l + 1]) for l in range(len(dims) - 1))


@dataclasses.dataclass(frozen=True)
class ColorConfig:
  """`RenderingNetwork(...)` as NeuSRenderer builds it (use_view_dir=True, the only used mode)."""
  d_feature: int = 256
  d_in: int = 9
  d_out: int = 3
  d_hidden: int = 256
  n_layers: int = 4
  weight_norm: bool = True
  multires_view: int = 4
  squeeze_out: bool = True

  @property
  def num_linear(self) -> int:
    return self.n_layers + 1

  def layer_shapes(self) -> Tuple[Tuple[int, int], ...]:
    d0 = self.d_in + self.d_feature
    if self.multires_view > 0:
      d0 += embed_dim(self.multires_view, 3) - 3
    dims = [d0] + [self.d_hidden] * self.n_layers + [self.d_out]
    return tuple((dims[l], dims[l + 1]) for l in range(self.num_linear))


@dataclasses.dataclass(frozen=True)
class NeuSConfig:
  """NeuSRenderer constants and loss weights; defaults = configs/neus.yaml of HarmonyView.

  `use_mask`: NeuSRenderer's own flag (RendererTrainer never passes its `use_mask` on, so it is always
  True in the original); the mask loss is on when `use_mask and lambda_mask_loss > 0`.
  """
  sdf: Any = SDFConfig()          # SDFConfig (the original) or GridSDFConfig (neus_fast)
  color: ColorConfig = ColorConfig()
  variance_init: float = 0.3
  n_samples: int = 64
  n_importance: int = 64
  up_sample_steps: int = 4
  anneal_end: int = 200
  default_radius: float = math.sqrt(3) / 2
  default_side_length: float = 0.6
  lambda_rgb_loss: float = 0.5
  lambda_mask_loss: float = 1.0
  lambda_eikonal_loss: float = 0.1
  rgb_loss: str = 'soft_l1'
  use_mask: bool = True
  clip_to_cube: bool = False      # neus_fast: sample only inside sphere AND cube (the original: sphere only)

  @classmethod
  def from_dict(cls, d: dict, *, path: str = '', root: str = '') -> 'NeuSConfig':
    """Reads `to_dict` output, a config's `neus` block or the parity `config.json` "neus" block, strictly
    (`hv_jax.settings.from_dict`: a key that is no field raises SettingsError naming it). `sdf.kind` picks
    the field: 'mlp' (SDFConfig, also when absent) or 'grid' (GridSDFConfig). `path` / `root`: where the
    block sits in a bigger settings dict (ReconstructSettings' `neus`), for the messages."""
    root = root or 'NeuSConfig'
    where = f'{path}.sdf' if path else 'sdf'
    if not isinstance(d, dict):
      return settings.from_dict(cls, d, path=path, root=root)       # the one message for a non-dict
    d = dict(d)
    sdf = d.pop('sdf', None)
    config = settings.from_dict(cls, d, path=path, root=root)
    if sdf is None:
      return config
    if not isinstance(sdf, dict):
      raise settings.SettingsError(f"{root}: '{where}' must be a dict of SDF fields, got {sdf!r}")
    sdf = dict(sdf)
    kind = sdf.pop('kind', 'mlp')
    kinds = {'mlp': SDFConfig, 'grid': GridSDFConfig}
    if kind not in kinds:
      raise settings.SettingsError(f"{root}: {where}.kind={kind!r}: use 'mlp' or 'grid'")
    return dataclasses.replace(config, sdf=settings.from_dict(kinds[kind], sdf, path=where, root=root))

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['sdf']['kind'] = 'grid' if isinstance(self.sdf, GridSDFConfig) else 'mlp'
    return d


# ------------------------------------------------------------------------------------------ primitives
def embed_dim(multires: int, input_dims: int = 3) -> int:
  return input_dims * (1 + 2 * multires) if multires > 0 else input_dims


def positional_encoding(x, multires: int):
  """`get_embedder(multires)` of the original (include_input, log sampling, sin then cos per band)."""
  if multires <= 0:
    return x
  parts = [x]
  for k in range(multires):
    f = float(2.0 ** k)
    parts += [jnp.sin(x * f), jnp.cos(x * f)]
  return jnp.concatenate(parts, -1)


def softplus(x, beta: float = 100.0, threshold: float = 20.0):
  """torch.nn.Softplus(beta, threshold): log1p(exp(beta x)) / beta, identity where beta x > threshold."""
  bx = x * beta
  soft = jnp.log1p(jnp.exp(jnp.minimum(bx, threshold))) / beta
  return jnp.where(bx > threshold, x, soft)


def normalize(x, eps: float = 1e-12):
  """torch.nn.functional.normalize(x, dim=-1)."""
  n = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(n, eps)


def layer_weight(p: Params):
  """Effective [in, out] kernel of a (weight-normed) linear layer."""
  if 'v' in p:
    v = p['v']
    norm = jnp.sqrt(jnp.sum(v * v, axis=0))
    return v * (p['g'] / norm)
  return p['kernel']


def linear(p: Params, x):
  return jnp.matmul(x, layer_weight(p), precision=PRECISION) + p['bias']


# ------------------------------------------------------------------------------------------------- SDF
def sdf_forward(p: Params, x, cfg: SDFConfig, sdf_only: bool = False):
  """SDFNetwork.forward: [..., 3] -> [..., d_out] (column 0 the SDF, 1: the feature vector).

  `sdf_only` returns just [..., 1] and evaluates only that column of the last layer (SDFNetwork.sdf).
  """
  if isinstance(cfg, GridSDFConfig):
    return grid_sdf_forward(p, x, cfg, sdf_only)
  inputs = positional_encoding(x * cfg.scale, cfg.multires)
  h = inputs
  n = cfg.num_linear
  for l in range(n):
    lp = p[f'lin{l}']
    if l in cfg.skip_in:
      h = jnp.concatenate([h, inputs], -1) / np.sqrt(2)
    if sdf_only and l == n - 1:
      lp = {k: v[..., :1] for k, v in lp.items()}
    h = linear(lp, h)
    if l < n - 1:
      h = softplus(h, 100.0)
  return h


def sdf(p: Params, x, cfg: SDFConfig):
  """SDF values [...] (no trailing axis)."""
  return sdf_forward(p, x, cfg, sdf_only=True)[..., 0]


def sdf_and_gradient(p: Params, x, cfg: SDFConfig):
  """(SDFNetwork.forward(x) [..., d_out], d sdf / d x [..., 3]) from one forward and one VJP.

  Differentiable: under an outer jax.grad this is the original's `create_graph=True` gradient.
  """
  out, vjp = jax.vjp(lambda y: sdf_forward(p, y, cfg), x)
  ct = jnp.zeros_like(out).at[..., 0].set(1.0)
  (grad,) = vjp(ct)
  return out, grad


_CORNERS = np.array([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], np.int32)   # [8, 3]


def _corners(x, r: int, bound: float):
  """Flat indices [..., 8] of the 8 cell corners around x in an r^3 grid over [-bound, bound]^3 (corner
  aligned, coordinates clamped to the cube) and their trilinear weights [..., 8]."""
  u = jnp.clip((x + bound) / (2 * bound) * (r - 1), 0.0, r - 1.0)
  i0 = jnp.minimum(jnp.floor(jax.lax.stop_gradient(u)), r - 2).astype(jnp.int32)
  f = u - i0
  c = i0[..., None, :] + _CORNERS                                        # [..., 8, 3]
  idx = (c[..., 0] * r + c[..., 1]) * r + c[..., 2]
  w3 = jnp.where(_CORNERS == 1, f[..., None, :], 1.0 - f[..., None, :])  # [..., 8, 3]
  return idx, w3[..., 0] * w3[..., 1] * w3[..., 2]


def multires_trilinear(table, resolutions, x, bound: float):
  """Trilinear lookups at x [..., 3] in len(resolutions) grids stored back to back in one table
  [sum r^3, F] (level l's r^3 rows flattened x-major) -> [..., L*F], as ONE gather (and one scatter-add in
  the backward pass: XLA:CPU pays per op far more than per element)."""
  idx, w, offset = [], [], 0
  for r in resolutions:
    i, ww = _corners(x, r, bound)
    idx.append(i + offset)
    w.append(ww)
    offset += r ** 3
  idx = jnp.concatenate(idx, -1)                                         # [..., 8L]
  w = jnp.concatenate(w, -1)
  vals = jnp.take(table, idx, axis=0) * w[..., None]                     # [..., 8L, F]
  shape = vals.shape[:-2] + (len(resolutions), 8, vals.shape[-1])
  return jnp.sum(vals.reshape(shape), -2).reshape(shape[:-3] + (-1,))   # level-major [..., L*F]


def grid_sdf_forward(p: Params, x, cfg: GridSDFConfig, sdf_only: bool = False):
  """GridSDFConfig field: [..., 3] -> [..., d_out] (column 0 the SDF)."""
  feats = multires_trilinear(p['grids'], cfg.resolutions, x, cfg.bound)
  h = jnp.concatenate([x, feats], -1)
  n = len(cfg.layer_shapes())
  for l in range(n):
    lp = p[f'lin{l}']
    if sdf_only and l == n - 1:
      lp = {k: v[..., :1] for k, v in lp.items()}
    h = linear(lp, h)
    if l < n - 1:
      h = softplus(h, 100.0)
  prior = jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12) - cfg.radius
  return jnp.concatenate([h[..., :1] + prior, h[..., 1:]], -1)


# ---------------------------------------------------------------------------------------------- colour
def color_forward(p: Params, points, normals, view_dirs, features, cfg: ColorConfig):
  """RenderingNetwork.forward(points, normals, view_dirs, feature_vectors) -> [..., 3]."""
  view_dirs = normalize(view_dirs)
  normals = normalize(normals)
  reflective = jnp.sum(view_dirs * normals, -1, keepdims=True) * normals * 2 - view_dirs
  reflective = positional_encoding(reflective, cfg.multires_view)
  h = jnp.concatenate([points, reflective, normals, features], -1)
  n = cfg.num_linear
  for l in range(n):
    h = linear(p[f'lin{l}'], h)
    if l < n - 1:
      h = jax.nn.relu(h)
  if cfg.squeeze_out:
    h = jax.nn.sigmoid(h)
  return h


# -------------------------------------------------------------------------------------------- variance
def inv_s(variance):
  """SingleVarianceNetwork: exp(10 * variance), clipped to [1e-6, 1e6] as compute_sdf_alpha does."""
  return jnp.clip(jnp.exp(variance * 10.0), 1e-6, 1e6)


# ------------------------------------------------------------------------------------------------ init
def _torch_linear_default(key, fan_in: int, fan_out: int):
  """nn.Linear's default init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for weight and bias."""
  kw, kb = jax.random.split(key)
  bound = 1.0 / math.sqrt(fan_in)
  w = jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)
  b = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)
  return w, b


def _wrap(w, b, weight_norm: bool) -> Params:
  """weight_norm() at construction: v = w, g = ||w|| per output unit (so w is unchanged)."""
  if weight_norm:
    return {'g': jnp.sqrt(jnp.sum(w * w, axis=0)), 'v': w, 'bias': b}
  return {'kernel': w, 'bias': b}


def init_sdf_params(key, cfg: SDFConfig) -> Params:
  """SDFNetwork.__init__ with geometric init (same formulas as the original; JAX random draws)."""
  shapes = cfg.layer_shapes()
  keys = jax.random.split(key, len(shapes))
  d0 = cfg.input_ch
  out = {}
  for l, ((fi, fo), k) in enumerate(zip(shapes, keys)):
    if not cfg.geometric_init:
      w, b = _torch_linear_default(k, fi, fo)
    elif l == len(shapes) - 1:
      mean = np.sqrt(np.pi) / np.sqrt(fi)
      sign = -1.0 if cfg.inside_outside else 1.0
      w = sign * mean + 0.0001 * jax.random.normal(k, (fi, fo), jnp.float32)
      b = jnp.full((fo,), -sign * cfg.bias, jnp.float32)
    else:
      std = np.sqrt(2) / np.sqrt(fo)
      w = std * jax.random.normal(k, (fi, fo), jnp.float32)
      b = jnp.zeros((fo,), jnp.float32)
      if cfg.multires > 0 and l == 0:
        w = w.at[3:, :].set(0.0)                  # only the raw xyz inputs start non-zero
      elif cfg.multires > 0 and l in cfg.skip_in:
        w = w.at[-(d0 - 3):, :].set(0.0)          # the re-injected encoding (but its xyz) starts at zero
    out[f'lin{l}'] = _wrap(w.astype(jnp.float32), b, cfg.weight_norm)
  return out


def init_grid_sdf_params(key, cfg: GridSDFConfig) -> Params:
  """Grids U(+-grid_init) (instant-ngp's init), hidden layers torch-default, last layer 1e-4 * normal, bias 0."""
  shapes = cfg.layer_shapes()
  keys = jax.random.split(key, len(shapes) + len(cfg.resolutions))
  rows = sum(r ** 3 for r in cfg.resolutions)
  out = {'grids': jax.random.uniform(keys[-1], (rows, cfg.features), jnp.float32, -cfg.grid_init, cfg.grid_init)}
  for l, (fi, fo) in enumerate(shapes):
    if l == len(shapes) - 1:
      w, b = 1e-4 * jax.random.normal(keys[l], (fi, fo), jnp.float32), jnp.zeros((fo,), jnp.float32)
    else:
      w, b = _torch_linear_default(keys[l], fi, fo)
    out[f'lin{l}'] = {'kernel': w, 'bias': b}
  return out


def init_color_params(key, cfg: ColorConfig) -> Params:
  """RenderingNetwork.__init__: default nn.Linear init, then weight norm."""
  shapes = cfg.layer_shapes()
  keys = jax.random.split(key, len(shapes))
  out = {}
  for l, ((fi, fo), k) in enumerate(zip(shapes, keys)):
    w, b = _torch_linear_default(k, fi, fo)
    out[f'lin{l}'] = _wrap(w, b, cfg.weight_norm)
  return out


@functools.partial(jax.jit, static_argnames='cfg')
def init_params(key, cfg: NeuSConfig) -> Params:
  """Fresh NeuSRenderer params for training from scratch (geometric init: SDF ~ |x| - bias)."""
  ks, kc = jax.random.split(key)
  sdf_init = init_grid_sdf_params if isinstance(cfg.sdf, GridSDFConfig) else init_sdf_params
  return {'sdf': sdf_init(ks, cfg.sdf), 'color': init_color_params(kc, cfg.color),
          'variance': jnp.asarray(cfg.variance_init, jnp.float32)}
