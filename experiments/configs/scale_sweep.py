"""A guidance-scale sweep on the GSO evaluation set with the real SyncDreamer weights.

  python -m experiments.diversity --config=experiments/configs/scale_sweep.py \
      --config.data.path=PATH/gso-eval --config.checkpoint=checkpoints/syncdreamer \
      --config.metrics.clip=clip-vit-large-patch14/ --config.metrics.lpips_vgg=vgg16-397923af.pth \
      --config.metrics.raft=raft-things.pth

HarmonyView's (s1, s2) grid around the paper's default (2, 1), the CFG baseline (SyncDreamer, Eq. 5) at
three scales, 4 instances per input as in the paper: 30 inputs x 4 x 19 settings = 2280 units. Every field
of the sampler's settings (hv_jax.sampling.pipeline.SampleSettings) is here too; the study's own are
experiments.diversity.StudySettings' data, sweep and metrics blocks (their defaults are this sweep's grid).
"""
from experiments.diversity import StudySettings
from hv_jax.settings import config_dict


def get_config():
  c = config_dict(StudySettings)
  c.output_dir = 'results/scale_sweep'
  c.sample_num = 4
  c.sample_steps = 50
  return c
