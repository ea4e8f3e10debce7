"""Fields shared by the sampling configs (`python -m hv_jax.sample --config=configs/<name>.py`).

Original CLI flag -> config field: --input/--output/--elevation -> input/output_dir/elevation;
--sample_num -> sample_num; --crop_size -> crop_size; --sample_steps -> sample_steps;
--cfg_scales A B with --decomposed_sampling -> guidance='harmonyview', s1=A, s2=B;
--cfg_scales A without it -> guidance='cfg', cfg_scale=A; --seed -> seed; yaml batch_view_num -> batch_view_num.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.input = ''                  # RGBA image, GSO-eval object folder (view 000 is the input), or a folder of them
  c.output_dir = 'outputs/sample'
  c.checkpoint = ''             # converted orbax dir, the original .ckpt (converted on first use), or 'random'
  c.checkpoint_cache = ''       # where a .ckpt is converted to (default: <ckpt>.hv_jax beside it)
  c.model = ''                  # model dims: '' = from the checkpoint, 'full', 'tiny', or a JSON path
  c.elevation = 30.0            # input-view elevation in degrees (trained range [-10, 40])
  c.crop_size = -1              # object rescaled to crop_size inside 256x256; -1 keeps the image (original)
  c.sample_num = 4              # instances per input
  c.seed = 6033                 # the original's default seed
  c.guidance = 'harmonyview'    # 'harmonyview' (Eq. 9) | 'cfg' (Eq. 5) | 'none'
  c.s1 = 2.0                    # Eq. 9 consistency scale (paper default)
  c.s2 = 1.0                    # Eq. 9 diversity scale (paper default)
  c.cfg_scale = 2.0             # Eq. 5 scale, used when guidance='cfg'
  c.uc2_concat_scale = 4.0      # original quirk: uc2 branch sees 4 * input latent; 1.0 switches it off
  c.sample_steps = 50           # DDIM steps (the original's schedule runs counts dividing 1000: ..., 25, 40, 50, 100)
  c.ddim_spacing = 'uniform'    # 'uniform': the original's timesteps; 'uniform_exact': any count in [1, 999]
  c.eta = 1.0                   # DDIM eta (the original samples with eta = 1)
  c.latent = 'sample'           # input latent: 'sample' (posterior draw, original) or 'mode'
  c.dtype = 'float32'           # UNet compute dtype: 'float32' | 'bfloat16'
  c.batch_view_num = 4          # views (x instances) per UNet call, each call evaluating all guidance branches of
                                # those views (4 views x 3 branches = 12 rows); sequential chunks; 0 = all at once.
                                # 4 is the original yaml's value; speed and memory per value: docs/speed.md.
  c.decode_chunk = 4            # views per VAE-decoder call
  c.remat = False               # rematerialise UNet blocks (less memory, more compute)
  c.per_device_batch = 1        # instances per device per call
  c.distributed = False         # call jax.distributed.initialize() (TPU pods, multi-host GPU)
  c.progress = True
  return c
