"""A guidance-scale sweep on the GSO evaluation set with the real SyncDreamer weights.

  python -m experiments.diversity --config=experiments/configs/scale_sweep.py \
      --config.data.path=PATH/gso-eval --config.checkpoint=checkpoints/syncdreamer \
      --config.metrics.clip=clip-vit-large-patch14/ --config.metrics.lpips_vgg=vgg16-397923af.pth \
      --config.metrics.raft=raft-things.pth

HarmonyView's (s1, s2) grid around the paper's default (2, 1), the CFG baseline (SyncDreamer, Eq. 5) at
three scales, 4 instances per input as in the paper: 30 inputs x 4 x 19 settings = 2280 units. Every field
of configs/common.py (the sampler's) is here too; the study-only fields are below.
"""
import ml_collections

from configs.common import base_config


def study_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the study-only fields to a sampling config."""
  c.data = ml_collections.ConfigDict()
  c.data.source = 'gso'           # 'gso': a GSO eval folder read through the TFDS builder; 'images': own images
  c.data.path = ''                # the GSO eval folder (TFDS manual_dir) or the image folder
  c.data.tfds_dir = ''            # where TFDS writes the prepared dataset ('' = OUTPUT/tfds)
  c.data.max_inputs = 0           # first N inputs by name (0 = all)
  c.sweep = ml_collections.ConfigDict()
  c.sweep.s1 = (0.0, 1.0, 2.0, 3.0)     # Eq. 9 consistency scales
  c.sweep.s2 = (0.0, 0.5, 1.0, 2.0)     # Eq. 9 diversity scales
  c.sweep.cfg = (1.0, 2.0, 3.0)         # Eq. 5 (SyncDreamer) scales
  c.sweep.none = False                  # also the unguided eps(x; c)
  c.metrics = ml_collections.ConfigDict()
  c.metrics.names = 'cd_score,psnr_ssim,lpips,e_flow'
  c.metrics.size = 0              # views are compared at this size (0 = the model's; RAFT needs >= 128)
  c.metrics.ssim_border = 'crop'  # as hv_jax.evaluate (torchmetrics before PR #2721)
  c.metrics.random_weights = False
  c.metrics.small_random_clip = False   # with random_weights: a small CLIP instead of ViT-L/14's shape
  c.metrics.clip = ''             # Hugging Face openai/clip-vit-large-patch14 folder or OpenAI ViT-L-14.pt
  c.metrics.clip_tokenizer = ''
  c.metrics.lpips_vgg = ''
  c.metrics.lpips_lin = ''
  c.metrics.raft = ''
  c.coordinator_address = ''      # with distributed=True: host:port of process 0 ('' = from the environment)
  c.num_processes = 0
  c.process_id = -1
  return c


def get_config():
  c = study_fields(base_config())
  c.output_dir = 'results/scale_sweep'
  c.sample_num = 4
  c.sample_steps = 50
  return c
