"""Model dimensions of the SyncDreamer network, as frozen dataclasses (static under jit).

`ModelConfig.full()` is `configs/syncdreamer.yaml` of the original with OpenAI ViT-L/14 for the CLIP
tower; `ModelConfig.from_dict` reads the same structure back from JSON (the converter writes it next to
the params, and the parity fixtures' `config.json` "tiny" block has this layout).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Tuple


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
  def from_dict(cls, d: dict) -> 'CLIPModelConfig':
    fix = lambda src: {k: tuple(v) if isinstance(v, list) else v for k, v in src.items()}
    return cls(vision=CLIPConfig(**fix(d['vision'])), text=CLIPTextConfig(**fix(d['text'])))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
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

  @property
  def latent_size(self) -> int:
    return self.image_size // 8

  @classmethod
  def full(cls) -> 'ModelConfig':
    return cls()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_dict(cls, d: dict) -> 'ModelConfig':
    """Builds from our own `to_dict` output or from a parity `config.json` "tiny" block."""
    def sub(klass, src: Any, rename=None):
      if src is None:
        return klass()
      names = {f.name for f in dataclasses.fields(klass)}
      kw = {}
      for k, v in src.items():
        k = (rename or {}).get(k, k)
        if k in names:
          kw[k] = tuple(v) if isinstance(v, list) else v
      return klass(**kw)

    sv = d.get('volume', d.get('spatial_volume'))
    kw = dict(unet=sub(UNetConfig, d.get('unet')), volume=sub(VolumeConfig, sv),
              vae=sub(VAEConfig, d.get('vae')), clip=sub(CLIPConfig, d.get('clip')))
    for k in ('view_num', 'image_size', 'time_embed_dim', 'viewpoint_dim', 'target_elevation_deg', 'use_zero_123'):
      if k in d:
        kw[k] = d[k]
    if sv is not None and 'input_image_size' not in sv and 'image_size' in d:
      kw['volume'] = dataclasses.replace(kw['volume'], input_image_size=d['image_size'])
    return cls(**kw)

  @classmethod
  def from_json(cls, text: str) -> 'ModelConfig':
    return cls.from_dict(json.loads(text))
