"""End-to-end sampling job behind `python -m hv_jax.sample`: weights, inputs, sharded batches, outputs.

Outputs, named as the original names them so its evaluation scripts read ours:
  OUTPUT/<input name>/<k>.png     one strip per instance k: 16 views left to right (H x 16H)
  OUTPUT/<input name>/grid.png    all instances stacked (the original's {mode}_{scales}.png)
  OUTPUT/<input name>/manifest.json  checkpoint hash, config, seeds, scales, timings
Every file is written atomically (temporary file + rename); a rerun skips finished instances, so Ctrl-C or
a kill loses no finished output.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from hv_jax import atomic
from hv_jax import checkpoint as ckpt_lib
from hv_jax import parallel
from hv_jax.data import preprocess
from hv_jax.models.config import ModelConfig
from hv_jax.sampling.sampler import Sampler, SamplerConfig, instance_keys

WEIGHTS_HELP = ('The original weights are published by the SyncDreamer authors (syncdreamer-pretrain.ckpt, '
                'linked from the SyncDreamer / HarmonyView READMEs; the CLIP tower is OpenAI ViT-L-14.pt). '
                'Convert once with: python -m convert.syncdreamer --ckpt syncdreamer-pretrain.ckpt '
                '[--clip ViT-L-14.pt] --out checkpoints/syncdreamer, then pass '
                '--config.checkpoint=checkpoints/syncdreamer (a .ckpt path is converted on first use).')


class UserError(Exception):
  """Bad input or environment: reported as one line, non-zero exit, nothing partial written."""


# ----------------------------------------------------------------------------- small helpers

def to_uint8(views) -> np.ndarray:
  """[..., H, W, 3] in [-1, 1] -> uint8 exactly as the original saves: ((clip(x) + 1) * 0.5 * 255).astype(uint8)."""
  x = (np.clip(np.asarray(views, np.float32), -1., 1.) + 1) * 0.5
  return (x * 255).astype(np.uint8)


def strip(views_u8: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] -> [H, N*W, 3] (views left to right)."""
  return np.concatenate(list(views_u8), axis=1)


# ----------------------------------------------------------------------------- configuration

def sampler_config(config) -> SamplerConfig:
  n = int(config.batch_view_num)
  return SamplerConfig(steps=int(config.sample_steps), guidance=str(config.guidance),
                       uc2_concat_scale=float(config.uc2_concat_scale), latent=str(config.latent),
                       dtype=str(config.dtype), view_chunk=n, remat=bool(config.remat),
                       decode_chunk=int(config.decode_chunk))


def scales_of(config) -> List[float]:
  if config.guidance == 'harmonyview':
    return [float(config.s1), float(config.s2)]
  if config.guidance == 'cfg':
    return [float(config.cfg_scale)]
  return [0.0]


def validate(config) -> None:
  if config.guidance not in ('none', 'cfg', 'harmonyview'):
    raise UserError(f"unknown guidance mode {config.guidance!r}: use 'harmonyview' (Eq. 9), 'cfg' (Eq. 5) or 'none'")
  if int(config.sample_num) < 1:
    raise UserError(f'sample_num must be >= 1, got {config.sample_num}')
  if not config.input:
    raise UserError('no input: set --config.input=PATH (an RGBA image, a GSO-eval object folder, or a folder of them)')
  if not config.output_dir:
    raise UserError('no output folder: set --config.output_dir=DIR')
  try:
    sampler_config(config)
  except ValueError as e:
    raise UserError(str(e)) from e


def check_writable(output_dir: str) -> pathlib.Path:
  out = pathlib.Path(output_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=out)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise UserError(f'output folder {out} is not writable: {e.strerror or e}') from e
  return out


# ----------------------------------------------------------------------------- weights

def load_weights(config) -> Tuple[dict, ModelConfig, str]:
  """Returns (params, model config, provenance string). `checkpoint` is an orbax dir, a .ckpt, or 'random'."""
  wanted = model_config_from(config)
  source = str(config.checkpoint or '')
  if source == 'random':
    if wanted is None:
      raise UserError("checkpoint='random' needs an explicit model config (--config.model=tiny or a JSON path)")
    from hv_jax.models.init import random_params
    logging.warning('RANDOM WEIGHTS: the model is randomly initialised (demo); outputs are not HarmonyView results.')
    return random_params(wanted, int(config.seed)), wanted, 'random-init (demo, not trained weights)'
  if not source:
    raise UserError('no checkpoint given. ' + WEIGHTS_HELP)
  path = pathlib.Path(source)
  if not path.exists():
    raise UserError(f'checkpoint not found: {path}. ' + WEIGHTS_HELP)
  if path.is_file():
    path = convert_cached(path, wanted, config.checkpoint_cache or None)
  try:
    params, stored = ckpt_lib.load(str(path), config=wanted)
  except ckpt_lib.CheckpointError as e:
    raise UserError(str(e)) from e
  meta = {}
  if (path / 'conversion.json').is_file():
    meta = json.loads((path / 'conversion.json').read_text())
  return params, stored, meta.get('source', {}).get('ckpt_sha256', f'orbax:{path}')


def convert_cached(ckpt: pathlib.Path, config: Optional[ModelConfig], cache: Optional[str]) -> pathlib.Path:
  """A .ckpt is converted once into `cache` (default: <ckpt>.hv_jax beside it) and reused."""
  out = pathlib.Path(cache) if cache else ckpt.with_name(ckpt.name + '.hv_jax')
  if (out / 'model_config.json').is_file():
    return out
  from convert import syncdreamer
  logging.info('converting %s -> %s (first use)', ckpt, out)
  cfg_path = None
  if config is not None:
    fd, cfg_path = tempfile.mkstemp(suffix='.json')
    with os.fdopen(fd, 'w') as f:
      f.write(config.to_json())
  try:
    syncdreamer.run(str(ckpt), str(out), model_config=cfg_path)
  except syncdreamer.ConversionError as e:
    raise UserError(str(e).splitlines()[0]) from e
  finally:
    if cfg_path:
      os.unlink(cfg_path)
  return out


def model_config_from(config) -> Optional[ModelConfig]:
  spec = str(config.get('model', '') or '')
  if not spec:
    return None
  if spec == 'full':
    return ModelConfig.full()
  if spec == 'tiny':
    return tiny_model_config()
  try:
    with open(spec) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read model config {spec}: {e}') from e
  return ModelConfig.from_dict(d.get('tiny', d))


def tiny_model_config() -> ModelConfig:
  """The demo model: SyncDreamer's architecture at the parity fixtures' tiny dimensions (64 px images)."""
  from hv_jax.models.config import CLIPConfig, UNetConfig, VAEConfig, VolumeConfig
  return ModelConfig(
      image_size=64,
      unet=UNetConfig(model_channels=32, channel_mult=(1, 1, 2, 2), num_heads=4, volume_dims=(8, 16, 24, 32)),
      volume=VolumeConfig(input_image_size=64, frustum_volume_depth=16, spatial_volume_size=8,
                          spatial_net_dims=(8, 16, 24, 32), frustum_net_dims=(8, 16, 24, 32), frustum_net_in_dim=8),
      vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
      clip=CLIPConfig(vision_layers=2, vision_width=128, vision_patch_size=32))


# ----------------------------------------------------------------------------- the job

@dataclasses.dataclass
class Job:
  name: str
  image: np.ndarray      # [S, S, 3] in [-1, 1]
  elevation: float       # radians
  input_id: int


def load_inputs(config) -> List[Job]:
  """Finds, validates and prepares every input (the original's prepare_inputs at 256 px)."""
  try:
    found = preprocess.find_inputs(config.input)
    elevation = preprocess.check_elevation(float(config.elevation))
    return [Job(name, preprocess.prepare_image(preprocess.load_rgba(path), int(config.crop_size), 256), elevation, i)
            for i, (name, path) in enumerate(found)]
  except preprocess.InputError as e:
    raise UserError(str(e)) from e


def resize_inputs(jobs: List[Job], image_size: int) -> None:
  """The demo model runs below 256 px: resize the prepared inputs (bicubic) to its size."""
  if image_size == 256:
    return
  for j in jobs:
    pil = Image.fromarray(((j.image + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    j.image = np.asarray(pil.resize((image_size, image_size), Image.BICUBIC), np.float32) / 127.5 - 1


def instance_done(out: pathlib.Path, job: Job, k: int) -> bool:
  return (out / job.name / f'{k}.png').is_file()


def run(config) -> Dict[str, dict]:
  """Runs the sampling job; returns {input name: manifest}."""
  validate(config)
  parallel.initialize_distributed(bool(config.distributed))
  jobs = load_inputs(config)
  created = not os.path.exists(config.output_dir)
  out = check_writable(config.output_dir)
  try:
    params, model_config, ckpt_hash = load_weights(config)
  except UserError:
    if created and not any(out.iterdir()):
      out.rmdir()          # leave nothing behind
    raise
  resize_inputs(jobs, model_config.image_size)
  sconf = sampler_config(config)
  scales = scales_of(config)
  units = [(j, k) for j in jobs for k in range(int(config.sample_num)) if not instance_done(out, j, k)]
  units = parallel.process_share(units)
  mesh = parallel.make_mesh()
  ndev = mesh.devices.size
  batch = max(1, int(config.per_device_batch)) * ndev
  params = jax.device_put(params, parallel.replicated(mesh))
  logging.info('%d devices (%s), %d processes; %d instances to sample, %d per call', ndev,
               jax.devices()[0].platform, jax.process_count(), len(units), batch)

  fn = compiled_sampler(model_config, sconf, tuple(mesh.devices.flat), bool(config.progress))
  timings = {'compile_and_first_batch_s': None, 'batches_s': []}
  from tqdm import tqdm
  bar = tqdm(total=len(units), desc='instances', unit='inst', disable=not config.progress, file=sys.stderr)
  _STEPS['bar'] = tqdm(total=sconf.steps, desc='DDIM steps', unit='step', position=1, leave=False,
                       disable=not config.progress, file=sys.stderr)
  for start in range(0, len(units), batch):
    chunk = units[start:start + batch]
    keys = instance_keys(int(config.seed), [j.input_id for j, _ in chunk], [k for _, k in chunk])
    arrays = [np.stack([j.image for j, _ in chunk]), np.asarray([j.elevation for j, _ in chunk], np.float32),
              np.asarray(keys), np.tile(np.asarray(scales, np.float32)[None], (len(chunk), 1))]
    arrays, n_real = parallel.pad_batch(arrays, batch)   # always one shape: no recompile on the last batch
    arrays = parallel.shard_batch(arrays, mesh)
    t0 = time.time()
    views = fn(params, *arrays, jnp.float32(config.eta))
    views = np.asarray(jax.device_get(views))[:n_real]
    dt = time.time() - t0
    if timings['compile_and_first_batch_s'] is None:
      timings['compile_and_first_batch_s'] = dt
    else:
      timings['batches_s'].append(dt)
    _STEPS['bar'].reset()
    for (job, k), v in zip(chunk, views):
      atomic.write_png(out / job.name / f'{k}.png', strip(to_uint8(v)))
    bar.update(len(chunk))
  _STEPS['bar'].close()
  bar.close()
  return write_summaries(config, out, jobs, ckpt_hash, model_config, sconf, scales, timings)


_STEPS = {'bar': None}


@functools.lru_cache(maxsize=8)
def compiled_sampler(model_config: ModelConfig, sconf: SamplerConfig, devices: Tuple[jax.Device, ...],
                     progress: bool = True):
  """One jitted sampler per (model config, sampler config, devices): reruns in a process reuse it.

  Only shapes and SamplerConfig are static; images, elevations, keys, scales and eta are traced, so new
  inputs, seeds and scales never recompile. Batch arrays are sharded over the 'data' axis. progress=True
  moves the DDIM-step bar through a host callback; without it the executable has no callback and can be
  kept in JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR), which skips callback programs.
  """
  mesh = parallel.make_mesh(devices)
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
  sampler = Sampler(model_config, sconf)
  callback = _step_progress if progress else None
  return jax.jit(lambda p, img, el, keys, sc, eta: sampler.sample(p, img, el, keys, sc, eta, progress=callback),
                 in_shardings=(rep, data, data, data, data, None), out_shardings=data)


def _step_progress(step):
  """Host callback once per DDIM step (fires once per device shard; the bar only moves forward)."""
  bar = _STEPS['bar']
  if bar is not None and int(step) + 1 > bar.n:
    bar.update(int(step) + 1 - bar.n)


def write_summaries(config, out, jobs, ckpt_hash, model_config, sconf, scales, timings):
  manifests = {}
  for job in jobs:
    paths = [out / job.name / f'{k}.png' for k in range(int(config.sample_num))]
    if not all(p.is_file() for p in paths):
      continue  # another process (or a later run) finishes this input
    strips = [np.asarray(Image.open(p)) for p in paths]
    atomic.write_png(out / job.name / 'grid.png', np.concatenate(strips, 0))
    manifest = {
        'input': job.name, 'checkpoint_sha256': ckpt_hash,
        'model': 'RANDOM WEIGHTS (demo): not HarmonyView results' if ckpt_hash.startswith('random') else 'SyncDreamer',
        'model_config': model_config.to_dict(), 'sampler': dataclasses.asdict(sconf),
        'config': json.loads(config.to_json_best_effort()),
        'seed': int(config.seed), 'input_id': job.input_id, 'instances': list(range(int(config.sample_num))),
        'instance_keys': 'fold_in(fold_in(PRNGKey(seed), input_id), instance_id)',
        'scales': scales, 'eta': float(config.eta), 'elevation_deg': float(config.elevation),
        'timings': timings, 'devices': [str(d) for d in jax.local_devices()], 'jax': jax.__version__,
    }
    atomic.write_bytes(out / job.name / 'manifest.json', json.dumps(manifest, indent=1).encode())
    manifests[job.name] = manifest
  return manifests
