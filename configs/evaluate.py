"""The paper's GSO evaluation of the views configs/gso.py samples: 4 instances per object, every metric.

  python -m hv_jax.evaluate --config=configs/evaluate.py --config.gt=PATH/gso-eval \
      --config.clip=clip-vit-large-patch14/ --config.lpips_vgg=vgg16-397923af.pth --config.raft=raft-things.pth \
      [--config.meshes=outputs/gso_neus]

SSIM as HarmonyView's 2023 evaluation computed it (torchmetrics before PR #2721: the map without its 5-pixel
border); the CD score, PSNR, SSIM, LPIPS and E_flow as the original scripts (docs/metrics.md). For the
SyncDreamer baseline: --config.pred=outputs/gso_syncdreamer --config.out=results/gso_syncdreamer.
"""
from hv_jax.evaluate import EvaluateSettings
from hv_jax.settings import config_dict


def get_config():
  c = config_dict(EvaluateSettings)
  c.pred = 'outputs/gso_harmonyview'    # configs/gso.py's output_dir
  c.out = 'results/gso_harmonyview'
  c.num_samples = 4
  c.ssim_border = 'crop'
  return c
