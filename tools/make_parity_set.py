"""Write a parity fixture set by running the ORIGINAL PyTorch code (HarmonyView / SyncDreamer, NeuS, CD score).

The set has exactly the layout of tests/fixtures/parity (config.json, fixtures.npz with every key,
syncdreamer_tiny.ckpt, neus_ref.ckpt, cd_clip_tiny/), so the parity tests run on it with
`HV_PARITY_DIR=<set>`. Nothing of the original is copied into this project: it is imported from the
checkout given with --ref (the HarmonyView repo: ldm/, renderer/, meta_info/) and --clip-ref (a folder
holding OpenAI CLIP's `clip/` package; only clip/model.py is used). Modules the evaluated code paths never
use (pytorch_lightning, skimage, cv2, torchvision, taming, tinycudann, omegaconf, ...) are stubbed.

Needs a Python with torch (CPU build), einops, kornia, numpy, pillow, transformers (for the CD group), e.g.

  python3 -m venv /work/refvenv && /work/refvenv/bin/pip install torch==2.13.0 einops kornia pillow transformers
  /work/refvenv/bin/python tools/make_parity_set.py --ref /tmp/ref --clip-ref /tmp/ref --out /work/parity_sets/s1 \\
      --seed 1 --batch 2 --elevations 5 35 --steps 5 --step-index 3

Settings (all recorded in config.json): --seed (weights, inputs and every random draw), --batch, --elevations
(degrees, one per batch item, cycled), --steps (DDIM steps run), --step-index (the tested step; default
steps // 2), --s1/--s2 (HarmonyView scales), --cfg (CFG scale), --cd-samples, --neus-train-step.

What each key means is in tests/fixtures/parity/README.md. Beyond the bundled set's keys, a set made here
also holds `neus_train_z_vals` (the depths render(is_train=True) integrated over; lets the train chain be
compared on the reference's own sample positions), and its `observed_tolerances` hold the original's own
float32 rounding spread on every part the tests bound with it: each part re-run in float64 on the float32
run's own inputs, max|f32 - f64| (`<key>_f32_vs_f64`; UNet branches `<key>_f32_vs_f64_same_inputs`).
--observed-only recomputes just those for an existing set (same code as a full run).

Reproducibility: each group (SyncDreamer, NeuS, CD) draws from its own seeded stream, torch runs on 2
threads; the same command on the same machine gives the same set. torch's float32 results depend on the CPU
(MKL's inverse, the vector width of its kernels), so a set made on another CPU differs in the last bits.

Replay (--replay DIR): load DIR's weights, settings and every *input* key (images, recorded noises, rays, ...)
and recompute every output key with the original code, then print max|new - DIR| per key. On the bundled set
this checks that each key here means what it means there (the bundled set's weights were drawn by another
script, make_parity_fixtures.py, whose random stream is not reproduced here; with --replay the weights are
the bundled ones, so the outputs must agree to float32 noise).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import pathlib
import shutil
import statistics
import sys
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUNDLED = ROOT / 'tests' / 'fixtures' / 'parity'

# ----------------------------------------------------------------------------------------- settings
TINY_UNET = dict(volume_dims=[8, 16, 24, 32], image_size=8, in_channels=8, out_channels=4, model_channels=32,
                 attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 1, 2, 2], num_heads=4,
                 use_spatial_transformer=True, transformer_depth=1, context_dim=768, use_checkpoint=True,
                 legacy=False)
TINY_VOLUME = dict(time_dim=256, view_dim=4, input_image_size=64, frustum_volume_depth=16, spatial_volume_size=8,
                   spatial_volume_length=0.5, frustum_volume_length=0.86603, default_origin_depth=1.5,
                   target_encoder_run_dim=16, target_encoder_output_dim=16, spatial_net_dims=[8, 16, 24, 32],
                   frustum_net_dims=[8, 16, 24, 32], frustum_net_in_dim=8, spatial_net_input_dim=256)
TINY_VAE = dict(embed_dim=4, double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
TINY_CLIP = dict(embed_dim=768, image_resolution=224, vision_layers=2, vision_width=128, vision_patch_size=32,
                 context_length=77, vocab_size=64, transformer_width=64, transformer_heads=1, transformer_layers=1)
N_POINTS, N_RAYS, UP_N_IMPORTANCE = 256, 32, 16
TIME_EMBED_T = [1, 500, 999]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--ref', required=True, help='checkout of byeongjun-park/HarmonyView (ldm/, renderer/, meta_info/)')
  p.add_argument('--clip-ref', default=None, help='folder holding OpenAI CLIP\'s clip/ package (default: --ref)')
  p.add_argument('--out', required=True, help='output folder (created; must not exist unless --force)')
  p.add_argument('--force', action='store_true', help='replace --out if it exists')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--elevations', type=float, nargs='+', default=[30.0], help='input elevations in degrees')
  p.add_argument('--steps', type=int, default=4, help='DDIM steps run (the recorded trajectory)')
  p.add_argument('--step-index', type=int, default=None, help='tested DDIM index (default steps // 2)')
  p.add_argument('--s1', type=float, default=2.0)
  p.add_argument('--s2', type=float, default=1.0)
  p.add_argument('--cfg', type=float, default=2.0)
  p.add_argument('--cd-samples', type=int, default=2)
  p.add_argument('--neus-train-step', type=int, default=50)
  p.add_argument('--no-cd', action='store_true', help='skip the CD-score group (cd_* keys, cd_clip_tiny/)')
  p.add_argument('--no-f64', action='store_true', help='skip the float64 re-runs (observed_tolerances)')
  p.add_argument('--observed-only', action='store_true',
                 help='only (re)compute the float64 spreads of the set at --out (its weights and fixtures) and '
                      'write them to its config.json observed_tolerances')
  p.add_argument('--replay', default=None,
                 help='an existing set: reuse its weights, settings and input keys, recompute every output '
                      'and print max|new - old| per key')
  return p.parse_args(argv)


# ------------------------------------------------------------------------------- importing the original
def _stub(name, **attrs):
  m = types.ModuleType(name)
  m.__dict__.update(attrs)
  sys.modules[name] = m
  return m


def import_original(ref: str, clip_ref: str):
  """Import the original's modules with stubs for what the evaluated paths never touch."""
  import torch
  try:                       # before the stubs: transformers probes torchvision & co. when it is imported
    import transformers  # noqa: F401
  except Exception:  # noqa: BLE001
    pass
  for name in ('cv2', 'skimage', 'matplotlib', 'tinycudann', 'raymarching', 'taming', 'taming.modules',
               'taming.modules.vqvae', 'torchvision'):
    _stub(name)
  _stub('skimage.io', imread=None, imsave=None)
  _stub('matplotlib.pyplot')
  _stub('taming.modules.vqvae.quantize', VectorQuantizer2=None)
  _stub('torchvision.transforms', Compose=None, Resize=None, CenterCrop=None, ToTensor=None, Normalize=None)
  sys.modules['torchvision'].transforms = sys.modules['torchvision.transforms']
  _stub('pytorch_lightning', LightningModule=torch.nn.Module)
  _stub('omegaconf', OmegaConf=object)
  _stub('omegaconf.listconfig', ListConfig=type('ListConfig', (list,), {}))
  _stub('renderer.ngp_renderer', NGPNetwork=None)
  # OpenAI CLIP: only clip/model.py (CLIP); `clip.load` builds the tiny random CLIP instead of reading weights.
  clip_pkg = _stub('clip')
  clip_pkg.__path__ = [os.path.join(clip_ref, 'clip')]
  spec = importlib.util.spec_from_file_location('clip.model', os.path.join(clip_ref, 'clip', 'model.py'))
  clip_model = importlib.util.module_from_spec(spec)
  sys.modules['clip.model'] = clip_model
  spec.loader.exec_module(clip_model)
  clip_pkg.model = clip_model
  clip_pkg.load = lambda name=None, device='cpu', jit=False: (clip_model.CLIP(**TINY_CLIP).float(), None)
  if 'transformers' not in sys.modules:   # ldm.modules.encoders.modules imports classes it never uses here
    _stub('transformers', T5Tokenizer=None, T5EncoderModel=None, CLIPTokenizer=None, CLIPTextModel=None,
          CLIPVisionModel=None)
  sys.path.insert(0, ref)
  mods = types.SimpleNamespace()
  import ldm.models.diffusion.sync_dreamer as sd
  import ldm.models.diffusion.sync_dreamer_network as net
  import ldm.models.diffusion.sync_dreamer_utils as utils
  import ldm.modules.diffusionmodules.util as dutil
  import renderer.renderer as rr
  mods.sd, mods.net, mods.utils, mods.dutil, mods.rr = sd, net, utils, dutil, rr
  return mods


# ------------------------------------------------------------------------------------------- randomness
class Tape:
  """Records (or replays) every torch.randn / randn_like / rand draw made inside `with tape.on(kind):`."""

  def __init__(self, torch, gen):
    self.torch, self.gen = torch, gen
    self.log = []

  @contextlib.contextmanager
  def on(self, replay=None):
    torch = self.torch
    orig = torch.randn, torch.randn_like, torch.rand
    queue = list(replay) if replay is not None else None
    self.log = []

    def draw(shape, fn):
      shape = tuple(int(s) for s in (shape[0] if len(shape) == 1 and isinstance(shape[0], (list, tuple, torch.Size))
                                     else shape))
      if queue is not None:
        v = torch.as_tensor(np.asarray(queue.pop(0), np.float32)).reshape(shape)
      else:
        v = fn(shape)
      self.log.append(v.clone())
      return v

    dt = lambda k: k.get('dtype') or torch.float32
    torch.randn = lambda *s, **k: draw(s, lambda sh: orig[0](sh, generator=self.gen)).to(dt(k))
    torch.randn_like = lambda x, **k: draw((x.shape,), lambda sh: orig[0](sh, generator=self.gen)).to(x.dtype)
    torch.rand = lambda *s, **k: draw(s, lambda sh: orig[2](sh, generator=self.gen)).to(dt(k))
    try:
      yield self
    finally:
      torch.randn, torch.randn_like, torch.rand = orig
    if queue:
      raise RuntimeError(f'{len(queue)} replayed draws were not used')


def rerandomize(torch, module, gen):
  """Every parameter redrawn (the tiny model must not have zero-init convs or identity projections):
  matrices/kernels N(0, clamp(1/sqrt(fan_in), 0.02, 0.2)) (a stride-2 ConvTranspose3d kernel: fan_in
  C_in*27/8, the inputs one output sees), norm weights 1 + N(0, 0.1), biases N(0, 0.05), embeddings N(0, 0.1)."""
  transposed = {name + '.weight' for name, m in module.named_modules() if isinstance(m, torch.nn.ConvTranspose3d)}
  with torch.no_grad():
    for name, p in module.named_parameters():
      leaf = name.rsplit('.', 1)[-1]
      if p.ndim == 0:
        p.copy_(p + 0.1 * torch.randn((), generator=gen))
      elif leaf.endswith('bias'):
        p.copy_(0.05 * torch.randn(p.shape, generator=gen))
      elif 'embedding' in leaf:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        fan_in = p[0].numel() if name not in transposed else p.shape[0] * p[0, 0].numel() / 8
        std = min(max(1 / math.sqrt(fan_in), 0.02), 0.2)
        p.copy_(std * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------------------------------- the model
def build_syncdreamer(torch, m, ref: str):
  """SyncMultiviewDiffusion of configs/syncdreamer.yaml with the tiny overrides (README of the fixture set)."""
  sd = m.sd

  def init_first_stage(self):
    cfg = dict(TINY_VAE)
    embed_dim = cfg.pop('embed_dim')
    self.first_stage_scale_factor = 0.18215
    self.first_stage_model = sd.instantiate_from_config({
        'target': 'ldm.models.autoencoder.AutoencoderKL',
        'params': {'embed_dim': embed_dim, 'monitor': 'val/rec_loss', 'ddconfig': cfg,
                   'lossconfig': {'target': 'torch.nn.Identity'}}})
    self.first_stage_model = sd.disable_training_module(self.first_stage_model)

  orig_init_first_stage = sd.SyncMultiviewDiffusion._init_first_stage
  sd.SyncMultiviewDiffusion._init_first_stage = init_first_stage
  cwd = os.getcwd()
  os.chdir(ref)                                   # meta_info/camera-16.pkl is read relative to the repo
  try:
    model = sd.SyncMultiviewDiffusion(
        unet_config={'target': 'ldm.models.diffusion.sync_dreamer_attention.DepthWiseAttention',
                     'params': dict(TINY_UNET)},
        scheduler_config=None, view_num=16, image_size=64, cfg_scale=2.0, output_num=8, batch_view_num=4,
        finetune_unet=False, finetune_projection=False, drop_conditions=False, clip_image_encoder_path='tiny',
        sample_type='ddim', sample_steps=50)
  finally:
    os.chdir(cwd)
    sd.SyncMultiviewDiffusion._init_first_stage = orig_init_first_stage
  # SpatialVolumeNet hard-codes the 3-D nets' dims (64..512) and input_image_size 256: rebuild it tiny.
  v = TINY_VOLUME
  svn = sd.SpatialVolumeNet(v['time_dim'], v['view_dim'], 16, input_image_size=v['input_image_size'],
                            frustum_volume_depth=v['frustum_volume_depth'],
                            spatial_volume_size=v['spatial_volume_size'],
                            spatial_volume_length=v['spatial_volume_length'],
                            frustum_volume_length=v['frustum_volume_length'])
  svn.target_encoder = m.net.NoisyTargetViewEncoder(v['time_dim'], v['view_dim'], run_dim=v['target_encoder_run_dim'],
                                                    output_dim=v['target_encoder_output_dim'])
  svn.spatial_volume_feats = m.net.SpatialTime3DNet(input_dim=v['spatial_net_input_dim'], time_dim=v['time_dim'],
                                                    dims=tuple(v['spatial_net_dims']))
  svn.frustum_volume_feats = m.net.FrustumTV3DNet(v['frustum_net_in_dim'], v['time_dim'], v['view_dim'],
                                                  dims=tuple(v['frustum_net_dims']))
  model.spatial_volume = svn
  model.device = torch.device('cpu')        # a LightningModule property the sampler reads
  return model.eval()


def build_neus(torch, m):
  return m.rr.NeuSRenderer(4096, 4096, lambda_eikonal_loss=0.1, lambda_rgb_loss=0.5, lambda_mask_loss=1.0,
                           rgb_loss='soft_l1', coarse_sn=64, fine_sn=64)


def perturb_neus(torch, renderer, gen):
  """Geometric init, then every tensor perturbed: a sphere-like SDF that is not exactly the init, still with
  a surface the rays cross (at 0.1 x std on weight_v the SDF is positive everywhere in the cube and every
  render is empty; at 0.05 the rays' masks average 0.6-0.8)."""
  with torch.no_grad():
    for name, p in renderer.named_parameters():
      if name.endswith('variance'):
        p.copy_(p + 0.1 + 0.1 * torch.rand((), generator=gen))
      elif name.endswith('weight_v'):
        p.copy_(p + 0.05 * p.std() * torch.randn(p.shape, generator=gen))
      elif name.endswith('weight_g'):
        p.copy_(p * (1 + 0.05 * torch.randn(p.shape, generator=gen)))
      else:
        p.copy_(p + 0.01 * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------------------------------- inputs
def smooth_image(rng, b, size, channels=3, waves=12):
  """Smooth random images in [-1, 1] (sums of random low-frequency sinusoids, tanh-squashed)."""
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing='ij')
  out = np.zeros((b, size, size, channels))
  for i in range(b):
    for c in range(channels):
      acc = np.zeros((size, size))
      for _ in range(waves):
        fx, fy = rng.uniform(0.5, 6, 2)
        acc += rng.normal() * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
      out[i, ..., c] = np.tanh(acc / np.sqrt(waves) * 1.2)
  return out.astype(np.float32)


def neus_inputs(rng):
  pts = rng.uniform(-0.6, 0.6, (N_POINTS, 3)).astype(np.float32)
  dirs = rng.normal(size=(N_POINTS, 3))
  dirs = (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)).astype(np.float32)
  centre = rng.normal(size=(N_RAYS, 3))
  centre = centre / np.linalg.norm(centre, axis=-1, keepdims=True) * rng.uniform(1.5, 2.1, (N_RAYS, 1))
  target = rng.uniform(-0.35, 0.35, (N_RAYS, 3))
  d = target - centre
  d = d / np.linalg.norm(d, axis=-1, keepdims=True)
  return {'neus_points': pts, 'neus_view_dirs': dirs, 'neus_rays_o': centre.astype(np.float32),
          'neus_rays_d': d.astype(np.float32), 'neus_target_rgb': rng.uniform(0, 1, (N_RAYS, 3)).astype(np.float32),
          'neus_target_mask': (rng.uniform(0, 1, (N_RAYS, 1)) < 0.6).astype(np.float32)}


# ------------------------------------------------------------------------------------------- recording
def record_syncdreamer(torch, m, model, inp, consts, tape, replay_draws):
  """Every model / sampler key (README table) from the original code. `inp` holds the input keys."""
  sd = m.sd
  out = {}
  T = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  N = lambda t: t.detach().cpu().numpy()
  image = T(inp['input_image']).permute(0, 3, 1, 2)                         # B,3,H,W
  elevation = T(inp['input_elevation'])
  b = image.shape[0]
  with torch.no_grad():
    enc = model.clip_image_encoder
    out['clip_preprocessed'] = N(enc.preprocess(image))
    out['clip_embed'] = N(enc.encode(image))
    fs = model.first_stage_model
    moments = fs.quant_conv(fs.encoder(image))
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
    post = DiagonalGaussianDistribution(moments)
    out.update(vae_moments=N(moments), vae_mean=N(post.mean), vae_logvar=N(post.logvar), vae_std=N(post.std))
    with tape.on(replay_draws('vae')):
      x_input = model.encode_first_stage(image, sample=True)
    out['vae_sample_noise'] = N(tape.log[0])
    out['x_input'] = N(x_input)
    out['vae_mode_latent'] = N(model.encode_first_stage(image, sample=False))
    out['vae_decode_out'] = N(model.decode_first_stage(T(inp['vae_decode_in'])))
    out.update(poses=N(model.poses), Ks=N(model.Ks), azimuth=N(model.azimuth))
    v_embed = model.get_viewpoint_embedding(b, elevation)
    out['v_embed'] = N(v_embed)
    t_emb = T(inp['time_embed_t'])
    out['time_embed_sinusoid'] = N(m.dutil.timestep_embedding(t_emb, 256, repeat_only=False))
    out['time_embed_out'] = N(model.embed_time(t_emb))
    out.update(betas=N(model.betas), alphas_cumprod=N(model.alphas_cumprod))

    steps = consts['ddim']['steps_run']
    sampler = sd.SyncDDIMSampler(model, steps, 'uniform', 1.0, latent_size=8)
    s50 = sd.SyncDDIMSampler(model, 50, 'uniform', 1.0, latent_size=8)
    for prefix, s in (('ddim_', sampler), ('ddim50_', s50)):
      out[prefix + 'timesteps'] = np.asarray(s.ddim_timesteps, np.int64)
      for k in ('alphas', 'alphas_prev', 'sigmas', 'sqrt_one_minus_alphas'):
        out[prefix + k] = N(getattr(s, 'ddim_' + k)).astype(np.float32)
    index = int(inp['step_index'])
    t_step = torch.full((b,), int(sampler.ddim_timesteps[index]), dtype=torch.long)
    out['step_index'] = np.asarray(index, np.int64)
    out['step_t'] = N(t_step).astype(np.int64)
    out['t_flat'] = N(sd.repeat_to_batch(t_step, b, 16)).astype(np.int64)
    x_t = T(inp['x_t'])
    t_embed = model.embed_time(t_step)
    out['step_t_embed'] = N(t_embed)
    svn = model.spatial_volume
    spatial = svn.construct_spatial_volume(x_t, t_embed, v_embed, model.poses, model.Ks)
    out['spatial_volume'] = N(spatial)
    # frustum points exactly as construct_view_frustum_volume builds them
    tn = 16
    target = torch.arange(tn).unsqueeze(0).repeat(b, 1)
    H = svn.frustum_volume_size
    near = torch.ones(b * tn, 1, H, H) * svn.default_origin_depth - svn.frustum_volume_length
    far = torch.ones(b * tn, 1, H, H) * svn.default_origin_depth + svn.frustum_volume_length
    idx = target.view(b * tn)
    xyz, depth = m.utils.create_target_volume(svn.frustum_volume_depth, svn.frustum_volume_size,
                                              svn.input_image_size, model.poses[idx], model.Ks[idx], near, far)
    out['frustum_xyz'], out['frustum_depth'] = N(xyz), N(depth)
    clip_embed = T(out['clip_embed'])
    x_in = T(out['x_input'])
    cond, vols, x_concat = model.get_target_view_feats(x_in, spatial, clip_embed, t_embed, v_embed, target)
    for r, v in vols.items():
      out[f'frustum_feats_r{int(r)}'] = N(v)
    out['cond_clip_embed'], out['x_concat'] = N(cond), N(x_concat)

    # UNet branches, each a single diffusion_model call (x_concat quirk of UNetWrapper)
    unet = model.model.diffusion_model
    xf = x_t.reshape(b * tn, 4, 8, 8)
    tf = T(out['t_flat'])

    def call(clip, concat, volumes):
      c_ = concat * 1.0
      c_[:, :4] = c_[:, :4] / 0.18215
      return unet(torch.cat([xf, c_], 1), tf, clip, source_dict=volumes)

    zeros_v = {k: torch.zeros_like(v) for k, v in vols.items()}
    out['eps_cond'] = N(call(cond, x_concat, vols))
    out['eps_uc1'] = N(call(torch.zeros_like(cond), torch.zeros_like(x_concat), vols))
    out['eps_uc2'] = N(call(cond, x_concat * 4, zeros_v))
    out['eps_cfg_uncond'] = N(call(torch.zeros_like(cond), torch.zeros_like(x_concat), zeros_v))
    s1, s2, cfg = consts['dg_scales']['s1'], consts['dg_scales']['s2'], consts['cfg_scale']
    out['eps_dg'] = N(model.model.predict_with_decomposed_unconditional_scales(
        xf, tf, cond, {k: v.clone() for k, v in vols.items()}, x_concat.clone(), [s1, s2]))
    out['eps_cfg'] = N(model.model.predict_with_unconditional_scale(
        xf, tf, cond, {k: v.clone() for k, v in vols.items()}, x_concat.clone(), float(cfg)))
    out['eps_plain'] = N(model.model(xf, tf, cond, vols, x_concat, is_train=False))

    # one denoise step per guidance mode from x_t, the same standard-normal draw for both
    input_info = {'image': image, 'elevation': elevation, 'x': x_in}
    step_noise = replay_draws('step')
    with tape.on(step_noise):
      x_dg = sampler.denoise_apply(x_t, input_info, clip_embed, t_step, index, [s1, s2], is_step0=index == 0)
    noise = [N(v) for v in tape.log]
    with tape.on(noise):
      x_cfg = sampler.denoise_apply(x_t, input_info, clip_embed, t_step, index, float(cfg), is_step0=index == 0)
    out['ddim_step_noise'] = noise[0] if noise else np.zeros(tuple(x_t.shape), np.float32)
    out['ddim_step_out_dg'], out['ddim_step_out_cfg'] = N(x_dg), N(x_cfg)

    # the recorded DDIM trajectory (DG scales, log_every_t=1)
    with tape.on(replay_draws('run')):
      x0, inter = sampler.sample(input_info, clip_embed, [s1, s2], log_every_t=1)
    draws = [N(v) for v in tape.log]
    out['run_x_T'] = draws[0]
    out['run_noises'] = np.stack(draws[1:]) if len(draws) > 1 else np.zeros((0,) + draws[0].shape, np.float32)
    out['run_x_inter'] = np.stack([N(v) for v in inter['x_inter']])
    out['run_x0'] = N(x0)
    out['run_decoded'] = N(torch.stack([model.decode_first_stage(x0[:, ni]) for ni in range(x0.shape[1])], 1))
  return out


def frustum_net_f64(torch, model, out):
  """The frustum 3-D net re-run in float64 on the float32 run's own inputs (the original's spread)."""
  import copy
  net = copy.deepcopy(model.spatial_volume).double()
  T = lambda a: torch.from_numpy(np.ascontiguousarray(a)).double()
  with torch.no_grad():
    b = out['x_t'].shape[0]
    tn = 16
    spatial = T(out['spatial_volume'])
    t_embed, v_embed = T(out['step_t_embed']), T(out['v_embed'])
    target = torch.arange(tn).unsqueeze(0).repeat(b, 1)
    # construct_view_frustum_volume builds float32 geometry tensors internally; replicate it in float64
    xyz = T(out['frustum_xyz'])
    grid = (xyz / net.spatial_volume_length).permute(0, 2, 3, 4, 1)
    V = net.spatial_volume_size
    sv = spatial.unsqueeze(1).repeat(1, tn, 1, 1, 1, 1).view(b * tn, -1, V, V, V)
    feats = torch.nn.functional.grid_sample(sv, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
    v_ = v_embed[torch.arange(b)[:, None], target].view(b * tn, -1)
    t_ = t_embed.unsqueeze(1).repeat(1, tn, 1).view(b * tn, -1)
    res = net.frustum_volume_feats(feats, t_, v_)
  return {int(r): v.numpy() for r, v in res.items()}


def record_neus(torch, m, renderer, inp, step, tape, replay_draws, dtype=None):
  """Every neus_* key from renderer/renderer.py (float32; dtype=torch.float64 for the spread re-run)."""
  dt = dtype or torch.float32
  out = {}
  T = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dt)
  N = lambda t: t.detach().cpu().numpy()
  rr = m.rr
  if dtype is not None:
    renderer.default_dtype = dt
  pts = T(inp['neus_points'])
  out['neus_sdf_out'] = N(renderer.sdf_network(pts))
  out['neus_gradient'] = N(renderer.sdf_network.gradient(pts.clone()).reshape(pts.shape))
  with torch.no_grad():
    out['neus_color_out'] = N(renderer.color_network(pts, T(out['neus_gradient']), T(inp['neus_view_dirs']),
                                                     T(out['neus_sdf_out'])[:, 1:]))
    out['neus_variance'] = N(renderer.deviation_network.variance).reshape(1)
    out['neus_inv_s'] = N(torch.exp(renderer.deviation_network.variance * 10.0)).reshape(1)
    o, d = T(inp['neus_rays_o']), T(inp['neus_rays_d'])
    near, far = rr.near_far_from_sphere(o, d)
    out['neus_near'], out['neus_far'] = N(near), N(far)
    z = torch.linspace(0.0, 1.0, renderer.n_samples, dtype=dt)
    z = near + (far - near) * z[None, :]
    out['neus_up_z_vals'] = N(z)
    p = o[:, None, :] + d[:, None, :] * z[..., None]
    sdf = renderer.sdf_network.sdf(p).reshape(len(o), renderer.n_samples)
    out['neus_up_sdf'] = N(sdf)
    out['neus_up_inv_s'] = np.asarray([64.0], np.float32)
    inv_s = torch.ones(len(o), renderer.n_samples - 1, dtype=dt) * 64
    out['neus_up_out'] = N(renderer.upsample(o, d, z, sdf, UP_N_IMPORTANCE, inv_s))
    out['neus_z_vals'] = N(renderer.sample_depth(o, d, near, far, 0))
  batch = {'rays_o': o, 'rays_d': d, 'rgb': T(inp['neus_target_rgb']), 'mask': T(inp['neus_target_mask'])}
  ev = renderer.render(batch, False, step)
  for k in ('rgb', 'mask', 'normal', 'gradient_error'):
    out[f'neus_render_{k}'] = N(ev[k])
  out['neus_render_inner_mask'] = N(ev['inner_mask']).astype(np.uint8)
  out['neus_loss_eval'] = _loss_vec(torch, renderer, batch, False, step, None, tape)
  # training mode: one torch.rand([R, 1]) draw perturbs the coarse depths ((u - 0.5) * 2 / n_samples)
  draws = replay_draws('neus_train')
  with tape.on(draws):
    zt = renderer.sample_depth(o, d, near, far, 1)
  u = [N(v) for v in tape.log]
  out['neus_train_rand_u'] = u[0].astype(np.float32)
  out['neus_train_z_vals'] = N(zt)
  out['neus_train_step'] = np.asarray(step, np.int64)
  with tape.on(u):
    tr = renderer.render(batch, True, step)
  out['neus_train_rgb'], out['neus_train_mask'] = N(tr['rgb']), N(tr['mask'])
  out['neus_train_normal_f'] = N(tr['normal'])   # not a fixture key; used for the f64 spread only
  out['neus_loss_train'] = _loss_vec(torch, renderer, batch, True, step, u, tape)
  return out


def _loss_vec(torch, renderer, batch, is_train, step, u, tape):
  with tape.on(u):
    loss, terms = renderer.render_with_loss(batch, is_train, step)
  return np.array([float(loss), float(terms['eikonal']), float(terms['rendering']), float(terms['mask'])],
                  np.float32)


def record_cd(torch, inp_cd, model_dir, clip_mean, clip_std):
  """eval_CD_score.py's formula with a tiny transformers CLIPModel (OpenAI CLIP's preprocess done with PIL)."""
  import transformers
  from PIL import Image
  model = transformers.CLIPModel.from_pretrained(model_dir).eval()
  views = inp_cd['cd_views_uint8']                                       # C,16,S,S,3
  size = model.config.vision_config.image_size
  pix = np.zeros(views.shape[:2] + (3, size, size), np.float32)
  for c in range(views.shape[0]):
    for i in range(views.shape[1]):
      im = Image.fromarray(views[c, i])
      w, h = im.size                      # Resize(n_px, BICUBIC) on the shorter side, then CenterCrop(n_px)
      scale = size / min(w, h)
      im = im.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
      left, top = int(round((im.size[0] - size) / 2.0)), int(round((im.size[1] - size) / 2.0))
      im = im.crop((left, top, left + size, top + size)).convert('RGB')
      a = np.asarray(im, np.float32) / 255.0
      a = (a - np.asarray(clip_mean, np.float32)) / np.asarray(clip_std, np.float32)
      pix[c, i] = a.transpose(2, 0, 1)
  ids = torch.from_numpy(inp_cd['cd_text_ids'])

  def feats(x):
    return x if torch.is_tensor(x) else (x.pooler_output if getattr(x, 'pooler_output', None) is not None else x[0])

  with torch.no_grad():
    txt = feats(model.get_text_features(input_ids=ids))                   # 1,P
    img = feats(model.get_image_features(pixel_values=torch.from_numpy(pix.reshape((-1,) + pix.shape[2:]))))
    img = img.reshape(views.shape[0], views.shape[1], -1)
    neg = np.zeros(views.shape[:2], np.float32)
    sim = np.zeros(views.shape[:2], np.float32)
    Ds, Ss = [], []
    for c in range(views.shape[0]):
      sims, svar = [], []
      for i in range(views.shape[1]):
        n_ = 1 - torch.nn.functional.cosine_similarity(img[c, :1], img[c, i:i + 1], dim=1)
        t_ = max(torch.nn.functional.cosine_similarity(txt, img[c, i:i + 1], dim=1).item(), 0) * 100
        sims.append(n_.item())
        svar.append(t_)
        neg[c, i], sim[c, i] = n_.item(), t_
      Ds.append(sum(sims))
      Ss.append(statistics.variance(svar))
  D, S = np.asarray(Ds), np.asarray(Ss)
  rD, rS = np.asarray([float(f'{x:.5f}') for x in Ds]), np.asarray([float(f'{x:.5f}') for x in Ss])
  return {'cd_pixel_values': pix, 'cd_text_features': txt.numpy(), 'cd_image_features': img.numpy(),
          'cd_neg_cos': neg, 'cd_text_sim': sim, 'cd_D': D.astype(np.float32), 'cd_Svar': S.astype(np.float32),
          'cd_score': np.asarray([D.mean() / S.mean()], np.float32),
          'cd_score_from_rounded_log': np.asarray([rD.mean() / rS.mean()], np.float32)}


def make_cd_model(torch, cfg, out_dir, seed):
  import transformers
  torch.manual_seed(seed)
  t, v = cfg['text'], cfg['vision']
  conf = transformers.CLIPConfig(text_config=dict(t), vision_config=dict(v), projection_dim=cfg['projection_dim'])
  model = transformers.CLIPModel(conf).eval()
  with torch.no_grad():               # transformers' default init is tiny (std 0.02): widen it like the model's
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.copy_(0.05 * torch.randn(p.shape))
      elif 'layer_norm' in name or 'layernorm' in name:
        p.copy_(1 + 0.1 * torch.randn(p.shape))
      elif p.ndim >= 2:
        p.copy_(torch.randn(p.shape) * min(max(1 / math.sqrt(p[0].numel()), 0.02), 0.2))
  model.save_pretrained(out_dir)


def _f64_hooks(torch, module):
  """float64 copy of a module whose forward makes float32 tensors inside (timestep embeddings, GroupNorm32
  casts): every module's inputs are cast back to float64."""
  import copy
  m64 = copy.deepcopy(module).double()
  to64 = lambda mod, a: tuple(x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in a)
  for mod in m64.modules():
    mod.register_forward_pre_hook(to64)
  return m64


@contextlib.contextmanager
def _groupnorm32_in_input_dtype(torch):
  """LDM's GroupNorm32 and CLIP's LayerNorm compute in float32 whatever their input; for the float64
  re-run they must not."""
  gn32 = sys.modules['ldm.modules.diffusionmodules.util'].GroupNorm32
  ln = sys.modules['clip.model'].LayerNorm
  fwd = gn32.forward, ln.forward
  gn32.forward = lambda self, x: torch.nn.GroupNorm.forward(self, x)
  ln.forward = lambda self, x: torch.nn.LayerNorm.forward(self, x)
  try:
    yield
  finally:
    gn32.forward, ln.forward = fwd


def observed_spreads(torch, m, model, renderer, out, ninp, nout, step, neus_gen, scales):
  """The original's own float32 rounding: each part re-run in float64 on the float32 run's own inputs,
  max|f32 - f64| per key (`<key>_f32_vs_f64`, as the bundled set's observed_tolerances)."""
  observed = {}
  T64 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).double()
  with torch.no_grad():
    for r, v in frustum_net_f64(torch, model, out).items():
      observed[f'frustum_feats_r{r}_f32_vs_f64'] = spread(out[f'frustum_feats_r{r}'], v)
    fs = _f64_hooks(torch, model.first_stage_model)
    img64 = T64(out['input_image']).permute(0, 3, 1, 2)
    observed['vae_moments_f32_vs_f64'] = spread(out['vae_moments'], fs.quant_conv(fs.encoder(img64)).numpy())
    dec64 = fs.decoder(fs.post_quant_conv(T64(out['vae_decode_in']) / 0.18215)).numpy()
    observed['vae_decode_f32_vs_f64'] = spread(out['vae_decode_out'], dec64)
    clip64 = _f64_hooks(torch, model.clip_image_encoder)
    with _groupnorm32_in_input_dtype(torch):
      clip64.model.visual.conv1.weight.data = clip64.model.visual.conv1.weight.data.double()
      e64 = clip64.model.visual(T64(out['clip_preprocessed'])).unsqueeze(1).numpy()   # encode_image casts to .dtype
    observed['clip_embed_f32_vs_f64'] = spread(out['clip_embed'], e64)
    te = _f64_hooks(torch, model.time_embed)
    sin = m.dutil.timestep_embedding(torch.from_numpy(out['step_t']), 256).double()
    observed['step_t_embed_f32_vs_f64'] = spread(out['step_t_embed'], te(sin).numpy())
    # every UNet branch on the float32 run's own inputs; the guided combinations from the float64 branches
    unet = _f64_hooks(torch, model.model.diffusion_model)
    unet.dtype = torch.float64
    xf = T64(out['x_t'].reshape(-1, 4, 8, 8))
    tf = torch.from_numpy(out['t_flat'])
    vols = {int(k[len('frustum_feats_r'):]): T64(out[k]) for k in out if k.startswith('frustum_feats_r')}
    zeros = {k: torch.zeros_like(v) for k, v in vols.items()}
    clip, concat = T64(out['cond_clip_embed']), T64(out['x_concat'])

    def call(c, x, v):
      x_ = x * 1.0
      x_[:, :4] = x_[:, :4] / 0.18215
      return unet(torch.cat([xf, x_], 1), tf, c, source_dict=v).numpy()

    with _groupnorm32_in_input_dtype(torch):
      e = {'eps_cond': call(clip, concat, vols), 'eps_uc1': call(0 * clip, 0 * concat, vols),
           'eps_uc2': call(clip, 4 * concat, zeros), 'eps_cfg_uncond': call(0 * clip, 0 * concat, zeros)}
    for k, v in e.items():
      observed[f'{k}_f32_vs_f64_same_inputs'] = spread(out[k], v)
    if scales is not None:
      s1, s2, cfg = scales
      observed['eps_dg_f32_vs_f64_same_inputs'] = spread(
          out['eps_dg'], e['eps_cond'] + s1 * (e['eps_cond'] - e['eps_uc1']) + s2 * (e['eps_cond'] - e['eps_uc2']))
      observed['eps_cfg_f32_vs_f64_same_inputs'] = spread(
          out['eps_cfg'], e['eps_cfg_uncond'] + cfg * (e['eps_cond'] - e['eps_cfg_uncond']))
  r64 = build_neus(torch, m)          # weight_norm modules cannot be deep-copied
  r64.load_state_dict(renderer.state_dict())
  r64 = r64.double()
  n64 = record_neus(torch, m, r64, ninp, step, Tape(torch, neus_gen),
                    lambda k: [nout['neus_train_rand_u']] if k == 'neus_train' else None, dtype=torch.float64)
  for k in ('neus_sdf_out', 'neus_gradient', 'neus_color_out', 'neus_up_out', 'neus_z_vals', 'neus_train_z_vals',
            'neus_render_rgb', 'neus_render_mask', 'neus_render_normal', 'neus_train_rgb', 'neus_train_mask',
            'neus_train_normal_f', 'neus_loss_eval', 'neus_loss_train'):
    if k in nout:
      observed[f'{k}_f32_vs_f64'] = spread(nout[k], n64[k])
  for k in ('neus_z_vals', 'neus_train_z_vals'):
    if k in nout:
      observed[f'{k}_f32_vs_f64']['n_beyond_1e-4'] = int(np.sum(np.abs(nout[k] - n64[k]) > 1e-4))
  return observed


# ------------------------------------------------------------------------------------------- the set
def spread(a32, a64):
  a32, a64 = np.asarray(a32, np.float64), np.asarray(a64, np.float64)
  d = np.abs(a32 - a64)
  return {'max_abs': float(d.max()), 'max_rel': float(np.max(d / np.maximum(np.abs(a64), 1e-12))),
          'ref_absmax': float(np.abs(a64).max())}


def update_observed(torch, m, args):
  """--observed-only: the float64 spreads of an existing set (same computation as a full run's)."""
  d = pathlib.Path(args.out)
  cfg = json.loads((d / 'config.json').read_text())
  with np.load(d / 'fixtures.npz') as f:
    out = {k: f[k] for k in f.files}
  model = build_syncdreamer(torch, m, args.ref)
  model.load_state_dict(torch.load(d / 'syncdreamer_tiny.ckpt', map_location='cpu', weights_only=True)['state_dict'],
                        strict=False)
  renderer = build_neus(torch, m)
  nsd = torch.load(d / 'neus_ref.ckpt', map_location='cpu', weights_only=True)['state_dict']
  renderer.load_state_dict({k[len('renderer.'):]: v for k, v in nsd.items()})
  ninp = {k: out[k] for k in ('neus_points', 'neus_view_dirs', 'neus_rays_o', 'neus_rays_d', 'neus_target_rgb',
                              'neus_target_mask')}
  step = int(out['neus_train_step'])
  gen = torch.Generator().manual_seed(0)
  nout = record_neus(torch, m, renderer, ninp, step, Tape(torch, gen),
                     lambda k: [out['neus_train_rand_u']] if k == 'neus_train' else None)
  for k in ('neus_render_rgb', 'neus_train_rgb', 'neus_z_vals'):
    err = float(np.max(np.abs(nout[k] - out[k])))
    if err > 1e-5:
      sys.exit(f'{d}: {k} recomputed differs from the set by {err:.2e}: not the weights/inputs that made it')
  c = cfg['constants']
  observed = observed_spreads(torch, m, model, renderer, out, ninp, nout, step, gen,
                              (c['dg_scales']['s1'], c['dg_scales']['s2'], c['cfg_scale']))
  cfg['observed_tolerances'] = dict(cfg.get('observed_tolerances', {}), **observed)
  (d / 'config.json').write_text(json.dumps(cfg, indent=1))
  for k, v in sorted(observed.items()):
    print(f'  {k:44s} max_abs {v["max_abs"]:.3e}  (ref_absmax {v["ref_absmax"]:.3g})')


def main(argv=None):
  args = parse_args(argv)
  import torch
  torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
  torch.use_deterministic_algorithms(False)
  clip_ref = args.clip_ref or args.ref
  m = import_original(os.path.abspath(args.ref), os.path.abspath(clip_ref))
  if args.observed_only:
    return update_observed(torch, m, args)
  out_dir = pathlib.Path(args.out)
  replay = pathlib.Path(args.replay) if args.replay else None
  old = old_cfg = None
  if replay is not None:
    with np.load(replay / 'fixtures.npz') as f:
      old = {k: f[k] for k in f.files}
    old_cfg = json.loads((replay / 'config.json').read_text())
    c = old_cfg['constants']
    args.seed, args.batch = old_cfg.get('seed', args.seed), old['x_t'].shape[0]
    args.elevations = list(np.rad2deg(old['input_elevation']).astype(float))
    args.steps, args.step_index = int(c['ddim']['steps_run']), int(old['step_index'])
    args.s1, args.s2, args.cfg = c['dg_scales']['s1'], c['dg_scales']['s2'], c['cfg_scale']
    args.cd_samples = old['cd_views_uint8'].shape[0] if 'cd_views_uint8' in old else args.cd_samples
    args.neus_train_step = int(old['neus_train_step'])
  if args.step_index is None:
    args.step_index = args.steps // 2
  if not 0 <= args.step_index < args.steps:
    sys.exit(f'--step-index {args.step_index} is not an index of {args.steps} steps')
  if len(np.arange(0, 1000, 1000 // args.steps)) != args.steps:
    sys.exit(f'{args.steps} DDIM steps: the original schedule range(0, 1000, 1000 // n) runs another count')
  if out_dir.exists():
    if not args.force:
      sys.exit(f'{out_dir} exists (use --force to replace it)')
    shutil.rmtree(out_dir)
  out_dir.mkdir(parents=True)

  # one independent stream per group (SyncDreamer, NeuS, CD), so a group can be changed without moving the others
  gens = {g: torch.Generator().manual_seed(args.seed * 1000 + i) for i, g in enumerate(('sd', 'neus', 'cd'))}
  rngs = {g: np.random.default_rng([args.seed, i]) for i, g in enumerate(('sd', 'neus', 'cd'))}
  gen, rng = gens['sd'], rngs['sd']
  tape = Tape(torch, gen)
  b = args.batch
  elev_deg = [args.elevations[i % len(args.elevations)] for i in range(b)]
  consts = {
      'view_num': 16, 'target_elevation_deg': 30.0,
      'azimuths': 'meta_info/camera-16.pkl azimuths, wrapped to [-pi,pi) by (az+pi)%(2pi)-pi; view 0 has az=0; '
                  '22.5 deg steps (see npz \'azimuth\')',
      'input_elevation_deg': elev_deg, 'first_stage_scale_factor': 0.18215,
      'betas': {'schedule': 'scaled-linear: linspace(0.00085**0.5, 0.012**0.5, 1000, float32)**2',
                'num_timesteps': 1000},
      'ddim': {'discretize': 'uniform', 'steps_run': args.steps, 'eta': 1.0, 'step_index_tested': args.step_index,
               'timesteps': [int(t) for t in np.arange(0, 1000, 1000 // args.steps) + 1],
               'paper_default_steps': 50},
      'dg_scales': {'s1': args.s1, 's2': args.s2}, 'cfg_scale': args.cfg, 'time_embed_timesteps': TIME_EMBED_T,
      'clip_mean': [0.48145466, 0.4578275, 0.40821073], 'clip_std': [0.26862954, 0.26130258, 0.27577711],
      'clip_resize': {'size': 224, 'interpolation': 'bicubic', 'align_corners': True, 'antialias': False,
                      'library': 'kornia.geometry.resize'},
      'x_concat_quirk': 'x_concat[:, :4] is divided by 0.18215 before concatenation in every branch; in DG branch '
                        'uc2 x_concat is first multiplied by 4 (so uc2 sees 4*x_input/0.18215)'}

  # ---- SyncDreamer
  model = build_syncdreamer(torch, m, args.ref)
  if replay is not None:
    sd_old = torch.load(replay / 'syncdreamer_tiny.ckpt', map_location='cpu', weights_only=True)['state_dict']
    missing, unexpected = model.load_state_dict(sd_old, strict=False)
    if missing or unexpected:
      sys.exit(f'replay: state_dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}')
  else:
    rerandomize(torch, model, gen)
  if replay is not None:
    inp = {k: old[k] for k in ('input_image', 'input_elevation', 'vae_decode_in', 'time_embed_t', 'step_index', 'x_t')}
    draws = {'vae': [old['vae_sample_noise']], 'step': [old['ddim_step_noise']] if args.step_index else [],
             'run': [old['run_x_T']] + list(old['run_noises'])}
  else:
    inp = {'input_image': smooth_image(rng, b, 64), 'input_elevation': np.deg2rad(elev_deg).astype(np.float32),
           'vae_decode_in': rng.normal(size=(b, 4, 8, 8)).astype(np.float32) * 0.75,
           'time_embed_t': np.asarray(TIME_EMBED_T, np.int64), 'step_index': args.step_index,
           'x_t': rng.normal(size=(b, 16, 4, 8, 8)).astype(np.float32)}
    draws = {}
  out = dict(input_image=inp['input_image'], input_elevation=inp['input_elevation'],
             vae_decode_in=inp['vae_decode_in'], time_embed_t=inp['time_embed_t'], x_t=inp['x_t'])
  print('SyncDreamer keys ...', flush=True)
  out.update(record_syncdreamer(torch, m, model, inp, consts, tape, lambda k: draws.get(k)))
  torch.save({'state_dict': model.state_dict()}, out_dir / 'syncdreamer_tiny.ckpt')

  # ---- NeuS
  print('NeuS keys ...', flush=True)
  renderer = build_neus(torch, m)
  if replay is not None:
    nsd = torch.load(replay / 'neus_ref.ckpt', map_location='cpu', weights_only=True)['state_dict']
    renderer.load_state_dict({k[len('renderer.'):]: v for k, v in nsd.items()})
    ninp = {k: old[k] for k in ('neus_points', 'neus_view_dirs', 'neus_rays_o', 'neus_rays_d', 'neus_target_rgb',
                                'neus_target_mask')}
    ndraws = {'neus_train': [old['neus_train_rand_u']]}
  else:
    perturb_neus(torch, renderer, gens['neus'])
    ninp = neus_inputs(rngs['neus'])
    ndraws = {}
  tape = Tape(torch, gens['neus'])
  out.update(ninp)
  nout = record_neus(torch, m, renderer, ninp, args.neus_train_step, tape, lambda k: ndraws.get(k))
  print(f'  NeuS render mask mean {nout["neus_render_mask"].mean():.3f} (a set needs rays that cross the surface)')
  torch.save({'state_dict': {'renderer.' + k: v for k, v in renderer.state_dict().items()}}, out_dir / 'neus_ref.ckpt')

  # ---- float64 re-runs of the original (its own float32 rounding spread)
  observed = {}
  if not args.no_f64:
    print('float64 re-runs ...', flush=True)
    observed = observed_spreads(torch, m, model, renderer, out, ninp, nout, args.neus_train_step, gens['neus'],
                                (args.s1, args.s2, args.cfg))
  nout.pop('neus_train_normal_f')
  out.update(nout)

  # ---- CD score group
  cfg_cd = json.loads((BUNDLED / 'config.json').read_text())['cd_clip'] if (BUNDLED / 'config.json').is_file() else None
  if not args.no_cd:
    print('CD keys ...', flush=True)
    cd_dir = out_dir / 'cd_clip_tiny'
    if replay is not None and (replay / 'cd_clip_tiny').is_dir():
      shutil.copytree(replay / 'cd_clip_tiny', cd_dir)
      cinp = {k: old[k] for k in ('cd_views_uint8', 'cd_text_ids')}
    else:
      make_cd_model(torch, cfg_cd, cd_dir, args.seed)
      rng = rngs['cd']
      c = args.cd_samples
      views = np.stack([np.stack([smooth_image(rng, 1, cfg_cd['view_size'], waves=8)[0] for _ in range(16)])
                        for _ in range(c)])
      t = cfg_cd['text']
      toks = rng.integers(1, t['bos_token_id'], size=8)
      ids = np.zeros((1, t['max_position_embeddings']), np.int64)
      ids[0, :10] = np.concatenate([[t['bos_token_id']], toks, [t['eos_token_id']]])
      cinp = {'cd_views_uint8': ((views + 1) * 127.5).round().clip(0, 255).astype(np.uint8), 'cd_text_ids': ids}
    out.update(cinp)
    out.update(record_cd(torch, cinp, str(cd_dir), consts['clip_mean'], consts['clip_std']))

  # ---- write
  np.savez_compressed(out_dir / 'fixtures.npz', **{k: np.asarray(v) for k, v in sorted(out.items())})
  base = json.loads((BUNDLED / 'config.json').read_text()) if (BUNDLED / 'config.json').is_file() else {}
  config = {
      'variant': 'generated', 'seed': args.seed, 'batch': b,
      'compute_dtype': base.get('compute_dtype', 'float32'),
      'tiny': {'view_num': 16, 'image_size': 64, 'latent_size': 8, 'unet': TINY_UNET, 'spatial_volume': TINY_VOLUME,
               'vae': TINY_VAE, 'clip': TINY_CLIP, 'time_embed_dim': 256, 'viewpoint_dim': 4},
      'full_size_reference': base.get('full_size_reference', {}),
      'constants': consts, 'neus': dict(base.get('neus', {}), n_points=N_POINTS, n_rays=N_RAYS,
                                        upsample_n_importance=UP_N_IMPORTANCE),
      'cd_clip': cfg_cd, 'cd_samples': int(out['cd_views_uint8'].shape[0]) if 'cd_views_uint8' in out else 0,
      'neus_train_step': args.neus_train_step, 'observed_tolerances': observed,
      'notes': dict(base.get('notes', {}),
                    generator='tools/make_parity_set.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
                    weights='every SyncDreamer parameter re-randomized after construction (rerandomize in '
                            'tools/make_parity_set.py): kernels N(0, clamp(1/sqrt(fan_in),0.02,0.2)) (stride-2 '
                            'ConvTranspose3d: fan_in C_in*27/8), 1-D weights 1+N(0,0.1), biases N(0,0.05), '
                            'embeddings N(0,0.1); NeuS: geometric init then weight_v += N(0,0.3 std), weight_g *= '
                            '1+N(0,0.05), other tensors += N(0,0.01), variance += 0.1+U(0,0.1)' if replay is None else
                            f'replayed from {replay}',
                    neus_train_z_vals='sample_depth(perturb=1) with neus_train_rand_u: the depths '
                                      'render(is_train=True) integrates over (R,128)')}
  (out_dir / 'config.json').write_text(json.dumps(config, indent=1))
  readme = BUNDLED / 'README.md'
  if readme.is_file():
    shutil.copy(readme, out_dir / 'README.md')
  print(f'wrote {out_dir}: {len(out)} keys')

  if replay is not None:
    print(f'\nreplay of {replay}: max|new - old| per key')
    worst = []
    for k in sorted(old):
      if k not in out:
        print(f'  {k:32s} MISSING from the new set')
        continue
      a, o = np.asarray(out[k], np.float64), np.asarray(old[k], np.float64)
      if a.shape != o.shape:
        print(f'  {k:32s} shape {a.shape} != {o.shape}')
        continue
      err = float(np.max(np.abs(a - o))) if a.size else 0.0
      scale = max(1.0, float(np.max(np.abs(o)))) if o.size else 1.0
      worst.append((err / scale, k))
      print(f'  {k:32s} {err:.3e}  (scale {scale:.3g})')
    print('worst relative to scale:', sorted(worst)[-5:])
    for k in sorted(set(out) - set(old)):
      print(f'  new key: {k}')


if __name__ == '__main__':
  main()
