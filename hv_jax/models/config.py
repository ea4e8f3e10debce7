"""Model dimensions of the SyncDreamer network, as frozen dataclasses (static under jit).

`ModelConfig.full()` is `configs/syncdreamer.yaml` of the original with OpenAI ViT-L/14 for the CLIP
tower; `ModelConfig.tiny()` the demo model at the parity fixtures' dimensions. `ModelConfig.from_dict`
reads our own `to_dict` back (the converter writes it next to the params) and the original's layout (the
parity fixtures' `config.json` "tiny" block), strictly: an unknown key is an error (`hv_jax.settings`).

How the network is lowered to XLA (`ModelConfig.conv_impl`, `attn_impl`) is part of the config, so it is part
of every jit cache key; it never changes the params (see `Lowering`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Tuple

from hv_jax import settings


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  in_channels: int = 8
  out_channels: int = 4
  model_channels: int = 320
  attention_resolutions: Tuple[int, ...] = (4, 2, 1)
  num_res_blocks: int = 2
  channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
  num_heads: int = 8
  transformer_depth: int = 1
  context_dim: int = 768
  volume_dims: Tuple[int, ...] = (64, 128, 256, 512)
  depth_attn_heads: int = 4  # DepthTransformer(ch, 4, d // 2): hard-coded in sync_dreamer_attention.py


@dataclasses.dataclass(frozen=True)
class VolumeConfig:
  time_dim: int = 256
  view_dim: int = 4
  input_image_size: int = 256
  frustum_volume_depth: int = 48
  spatial_volume_size: int = 32
  spatial_volume_length: float = 0.5
  frustum_volume_length: float = 0.86603  # sqrt(3)/2 rounded as in the original
  default_origin_depth: float = 1.5
  target_encoder_run_dim: int = 16
  target_encoder_output_dim: int = 16
  spatial_net_dims: Tuple[int, ...] = (64, 128, 256, 512)
  frustum_net_dims: Tuple[int, ...] = (64, 128, 256, 512)
  frustum_net_in_dim: int = 64


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  embed_dim: int = 4
  z_channels: int = 4
  in_channels: int = 3
  out_ch: int = 3
  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  scale_factor: float = 0.18215


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  embed_dim: int = 768
  image_resolution: int = 224
  vision_layers: int = 24
  vision_width: int = 1024
  vision_patch_size: int = 14
  mean: Tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
  std: Tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
  vision_head_width: int = 64  # OpenAI CLIP: heads = width // 64 (other widths for small test towers)
  vision_mlp_ratio: int = 4    # OpenAI CLIP: MLP width 4 * width

  @property
  def vision_heads(self) -> int:
    return self.vision_width // self.vision_head_width


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """OpenAI CLIP text transformer (ViT-L/14 defaults); heads = width // head_width as in clip.build_model."""
  vocab_size: int = 49408
  context_length: int = 77
  width: int = 768
  layers: int = 12
  head_width: int = 64
  mlp_ratio: int = 4

  @property
  def heads(self) -> int:
    return self.width // self.head_width


@dataclasses.dataclass(frozen=True)
class CLIPModelConfig:
  """The two-tower CLIP of the CD score (eval_CD_score.py loads OpenAI ViT-L/14). Both towers project to
  `vision.embed_dim`."""
  vision: CLIPConfig = CLIPConfig()
  text: CLIPTextConfig = CLIPTextConfig()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict, *, path: str = '', root: str = '') -> 'CLIPModelConfig':
    """Strict: an unknown key is a SettingsError naming it (`hv_jax.settings.from_dict`)."""
    return settings.from_dict(cls, d, path=path, root=root)


CONV_IMPLS = ('tuned', 'xla')
ATTN_IMPLS = ('fast', 'reference')
# What conv_impl / attn_impl = 'auto' resolve to, per jax backend (jax.default_backend()). Measured
# (benchmarks/unet.py --impl all, docs/speed.md, "The lowering"): CPU on 2 cores and an H200 GPU, where the tuned
# lowering is as fast at full size and faster on the tiny model. TPU is not measured: XLA's native convolutions
# and the literal attention there until a measurement says otherwise.
BACKEND_LOWERING = {'cpu': ('tuned', 'fast'), 'gpu': ('tuned', 'fast'), 'tpu': ('xla', 'reference')}
# The lowering fields of ModelConfig and the values each takes ('auto': BACKEND_LOWERING).
LOWERING_FIELDS = {'conv_impl': ('auto',) + CONV_IMPLS, 'attn_impl': ('auto',) + ATTN_IMPLS}


@dataclasses.dataclass(frozen=True)
class Lowering:
  """How the layers become XLA ops: a speed choice with the same params and the same sums (float32 rounding
  order aside). Flax modules take it as a static field, so it is part of every jit cache key.

  conv: 'tuned' - the rewrites XLA:CPU runs faster: 1x1 convs as one matmul over channels; 3x3 stride-1 convs
                  on maps of <= im2col_max_pixels pixels as im2col (9 shifted copies on channels) + one matmul;
                  a 3x3 conv of a nearest-2x-upsampled map as four 2x2 convs on the small map, one per output
                  phase (4/9 of the FLOPs, no upsampled copy); 3-d convs as ONE 2-d conv with the depth taps on
                  channels and the output depths folded into the batch; ConvTranspose3d(k3, s2, p1, op1) as 8
                  output-phase convs on the undilated input.
        'xla'   - every conv one `lax.conv_general_dilated` (the literal formulation, XLA's native convs).
  attn: 'fast'      - scale folded into q, softmax attention one batch row at a time (lax.map), depth
                      attention with to_k folded into q and to_v applied after the sum over depth.
        'reference' - the literal formulation (hv_jax.models.unet._attention, DepthAttention).
  """
  conv: str = 'tuned'
  attn: str = 'fast'
  im2col_max_pixels: int = 16

  def __post_init__(self):
    if self.conv not in CONV_IMPLS:
      raise ValueError(f'unknown conv lowering {self.conv!r}: use one of {CONV_IMPLS}')
    if self.attn not in ATTN_IMPLS:
      raise ValueError(f'unknown attention lowering {self.attn!r}: use one of {ATTN_IMPLS}')


TUNED = Lowering()                                  # the CPU default; the default of every module's field
LITERAL = Lowering(conv='xla', attn='reference')    # XLA's native convs and the literal attention


# The original's config layout (configs/syncdreamer.yaml's names: the parity sets' config.json "tiny" block,
# written by tools/make_parity_set.py) calls the volume block `spatial_volume` and has keys that are no
# ModelConfig field. Each is named here with the reason, and with the value the port implies where it fixes
# or derives one (a constant, or a function of the config read); another value there is an error.
ANY = None
ORIGINAL_KEYS = {
    'latent_size': ('derived: image_size // 8', lambda c: c.latent_size),
    'unet.image_size': ("the UNet's input size, derived: the latent size image_size // 8", lambda c: c.latent_size),
    'unet.use_spatial_transformer': ('SyncDreamer always uses the spatial transformer; the port has only that path',
                                     True),
    'unet.use_checkpoint': ("torch gradient checkpointing, a memory knob (SyncDreamer(remat=...) here)", ANY),
    'unet.legacy': ('legacy=False (dim_head = channels // num_heads) is the only mode here', False),
    'volume.spatial_net_input_dim': (("derived: view_num x target_encoder_output_dim (the views' features "
                                      'stacked on channels)'),
                                     lambda c: c.view_num * c.volume.target_encoder_output_dim),
    'vae.double_z': ('the encoder always outputs mean and log-variance', True),
    'vae.resolution': ("the VAE's image size = image_size (convs do not depend on it)", lambda c: c.image_size),
    'vae.attn_resolutions': ("SyncDreamer's VAE has no attention outside its middle block", []),
    'vae.dropout': ('inactive at inference', ANY),
    **{f'clip.{k}': ("the original CLIP's text tower, which SyncDreamer never runs (the image tower only)", ANY)
       for k in ('context_length', 'vocab_size', 'transformer_width', 'transformer_heads', 'transformer_layers')},
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The SyncDreamer network: dimensions, and how it is lowered to XLA.

  conv_impl: 'auto' | 'tuned' | 'xla' and attn_impl: 'auto' | 'fast' | 'reference' choose the `Lowering`
  (same params and maths, see there). 'auto' resolves per backend when the model is built
  (`SyncDreamer.setup` -> `lowering()`, BACKEND_LOWERING): on CPU the tuned lowerings (im2col for small maps,
  phase-split transposed and upsampling convs, depth-folded 3-d convs, fast attention), also on GPU (as fast
  as the native convs at full size on an H200, 1.8x faster on the tiny model); on TPU XLA's native
  convolutions and the literal attention (not measured there; docs/speed.md). They are fields, not globals, so the
  compiled functions of one lowering are never handed to another; `architecture()` is the config without
  them (what a checkpoint and a run's settings record).
  """
  view_num: int = 16
  image_size: int = 256
  time_embed_dim: int = 256
  viewpoint_dim: int = 4
  target_elevation_deg: float = 30.0
  # UNetWrapper(use_zero_123=True): the input-latent concat's first 4 channels are divided by the VAE
  # scale factor before entering the UNet (a Zero123 habit; the trained weights expect it).
  use_zero_123: bool = True
  unet: UNetConfig = UNetConfig()
  volume: VolumeConfig = VolumeConfig()
  vae: VAEConfig = VAEConfig()
  clip: CLIPConfig = CLIPConfig()
  conv_impl: str = 'auto'
  attn_impl: str = 'auto'

  def __post_init__(self):
    for field, values in LOWERING_FIELDS.items():
      if getattr(self, field) not in values:
        raise ValueError(f'ModelConfig.{field}={getattr(self, field)!r}: use one of {values}')

  @property
  def latent_size(self) -> int:
    return self.image_size // 8

  @classmethod
  def full(cls) -> 'ModelConfig':
    """The published SyncDreamer (configs/syncdreamer.yaml, OpenAI ViT-L/14 image tower)."""
    return cls()

  @classmethod
  def tiny(cls) -> 'ModelConfig':
    """The demo model: SyncDreamer's architecture at the parity fixtures' tiny dimensions (64 px images).

    The same dims as the fixtures' config.json "tiny" block (tools/make_parity_set.py's TINY_*), which the
    converter tests check against this.
    """
    return cls(
        image_size=64,
        unet=UNetConfig(model_channels=32, channel_mult=(1, 1, 2, 2), num_heads=4, volume_dims=(8, 16, 24, 32)),
        volume=VolumeConfig(input_image_size=64, frustum_volume_depth=16, spatial_volume_size=8,
                            spatial_net_dims=(8, 16, 24, 32), frustum_net_dims=(8, 16, 24, 32), frustum_net_in_dim=8),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
        clip=CLIPConfig(vision_layers=2, vision_width=128, vision_patch_size=32))

  def lowering(self, backend: str | None = None) -> Lowering:
    """The Lowering this config asks for, 'auto' resolved for `backend` (default: jax.default_backend())."""
    conv, attn = self.conv_impl, self.attn_impl
    if 'auto' in (conv, attn):
      if backend is None:
        import jax
        backend = jax.default_backend()
      auto_conv, auto_attn = BACKEND_LOWERING.get(backend, BACKEND_LOWERING['gpu'])
      conv = auto_conv if conv == 'auto' else conv
      attn = auto_attn if attn == 'auto' else attn
    return Lowering(conv=conv, attn=attn)

  def with_lowering(self, conv_impl: str = 'auto', attn_impl: str = 'auto') -> 'ModelConfig':
    return dataclasses.replace(self, conv_impl=conv_impl, attn_impl=attn_impl)

  def architecture(self) -> 'ModelConfig':
    """This config with the lowering left to the backend: what the params depend on (a lowering never
    changes a checkpoint), compared when a config meets a checkpoint and recorded in a run's settings."""
    return self.with_lowering()

  def to_dict(self) -> dict:
    """Every field, except a lowering left at 'auto' (so files written before those fields read the same)."""
    d = dataclasses.asdict(self)
    for k in ('conv_impl', 'attn_impl'):
      if d[k] == 'auto':
        del d[k]
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_dict(cls, d: dict, *, path: str = '', root: str = '') -> 'ModelConfig':
    """Builds from our own `to_dict` output or from the original's layout (a parity `config.json` "tiny"
    block: `spatial_volume` for `volume`, and the ORIGINAL_KEYS checked and set aside). Strict: any other key
    that is not a field raises `hv_jax.settings.SettingsError` naming it. A volume block without
    `input_image_size` takes `image_size`. `path` / `root`: where the block sits in a bigger settings dict."""
    block_path, block_root = path, root      # (`path` names the ORIGINAL_KEYS below)
    if not isinstance(d, dict):
      raise settings.SettingsError(f'ModelConfig: expected a dict, got {type(d).__name__}')
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    if 'spatial_volume' in d:
      if 'volume' in d:
        raise settings.SettingsError("ModelConfig: both 'volume' and 'spatial_volume' (the original's name for it)")
      d['volume'] = d.pop('spatial_volume')
    original = {}
    for path in ORIGINAL_KEYS:
      block, _, key = path.rpartition('.')
      src = d.get(block) if block else d
      if isinstance(src, dict) and key in src:
        original[path] = src.pop(key)
    if 'image_size' in d and isinstance(d.get('volume', {}), dict):
      d.setdefault('volume', {}).setdefault('input_image_size', d['image_size'])
    config = settings.from_dict(cls, d, path=block_path, root=block_root)
    for path, value in original.items():
      reason, implied = ORIGINAL_KEYS[path]
      if implied is ANY:
        continue
      implied = implied(config) if callable(implied) else implied
      if _plain(value) != _plain(implied):
        raise settings.SettingsError(f"ModelConfig: '{path}'={value!r} is not supported ({reason}; here "
                                     f'{implied!r})')
    return config

  @classmethod
  def from_json(cls, text: str) -> 'ModelConfig':
    return cls.from_dict(json.loads(text))


def _plain(v):
  return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v
