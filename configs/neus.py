"""NeuS reconstruction with the original's settings (HarmonyView configs/neus.yaml + NeuSRenderer).

  python -m hv_jax.reconstruct --config=configs/neus.py --config.input=outputs/gso/bell/0.png --config.output_dir=out/bell

8-layer 256-wide SDF MLP with positional encoding, 64 + 64 samples per ray, 3584 random + 512 foreground rays
per step, 2000 AdamW steps (lr 5e-4, warm-up 100), mesh by marching cubes at 512^3: the defaults of
hv_jax.neus.pipeline.ReconstructSettings. On a 2-core CPU this is a day of compute (see benchmarks/neus_step.py);
on a GPU it takes minutes. configs/neus_fast.py is the CPU-feasible setting.
"""
from hv_jax.neus.pipeline import ReconstructSettings
from hv_jax.settings import config_dict


def get_config():
  c = config_dict(ReconstructSettings)
  c.output_dir = 'outputs/neus'
  c.train.chunks = 8         # rays through the network in 8 sequential chunks of 512: same gradient, less memory
  return c
