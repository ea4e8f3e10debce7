"""NeuS reconstruction with the original's settings (HarmonyView configs/neus.yaml + NeuSRenderer).

  python -m hv_jax.reconstruct --config=configs/neus.py --config.input=outputs/gso/bell/0.png --config.output_dir=out/bell

8-layer 256-wide SDF MLP with positional encoding, 64 + 64 samples per ray, 3584 random + 512 foreground rays
per step, 2000 AdamW steps (lr 5e-4, warm-up 100), mesh by marching cubes at 512^3. On a 2-core CPU this is
a day of compute (see benchmarks/neus_step.py); on a GPU it takes minutes. configs/neus_fast.py is the
CPU-feasible setting.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.input = ''                 # 256x4096 strip (16 views) or a folder 000.png ... 015.png
  c.output_dir = 'outputs/neus'
  c.seed = 6033
  c.progress = True
  c.overwrite = False          # a finished output (mesh.ply + metrics.json) is kept unless this is set
  # NeuSRenderer (hv_jax.neus.fields.NeuSConfig)
  c.neus = ml_collections.ConfigDict(dict(
      sdf=dict(kind='mlp', d_hidden=256, n_layers=8, multires=6),
      color=dict(d_feature=256, d_hidden=256, n_layers=4, multires_view=4, weight_norm=True),
      n_samples=64, n_importance=64, up_sample_steps=4, anneal_end=200,
      lambda_rgb_loss=0.5, lambda_mask_loss=1.0, lambda_eikonal_loss=0.1, clip_to_cube=False))
  # RendererTrainer / configure_optimizers (hv_jax.neus.train.TrainConfig, LoopConfig)
  c.train = ml_collections.ConfigDict(dict(
      base_lr=5e-4, total_steps=2000, warm_up_steps=100, use_warm_up=True, grid_lr_scale=1.0,
      decay_interval=1000,
      chunks=8))               # rays through the network in 8 sequential chunks of 512: same gradient, less memory
  c.batch_num = 3584           # train_batch_num
  c.fg_num = 512               # train_batch_fg_num
  c.save_every = 500           # checkpoint interval (steps); a rerun resumes from the last one
  c.log_every = 10
  # extract_mesh
  c.mesh_resolution = 512
  c.mesh_slab = 8              # x-planes of the SDF grid per jitted call (memory bound)
  c.vertex_colors = True
  c.mesh_floor = 'none'        # 'mirror_top': cut the unseen fill below the object at -top (hv_jax.neus.mesh)
  # optional evaluation against a GT mesh (hv_jax.metrics.geometry): metrics.json gets chamfer / iou
  c.gt_mesh = ''
  c.gt_name = ''               # GSO-eval object name, selects the GT rotation (default: the input's folder name)
  c.gt_rotation = ml_collections.config_dict.placeholder(float)   # degrees, for a GT mesh of another object
  return c


def get_config():
  return base_config()
