"""End-to-end sampling job behind `python -m hv_jax.sample`: weights, inputs, sharded batches, outputs.

Outputs, named as the original names them so its evaluation scripts read ours:
  OUTPUT/<input name>/<k>.png     one strip per instance k: 16 views left to right (H x 16H)
  OUTPUT/<input name>/grid.png    all instances stacked (the original's {mode}_{scales}.png)
  OUTPUT/<input name>/manifest.json  what the strips were made from (`settings`), instances, timings
Every file is written atomically (temporary file + rename); a rerun skips finished instances, so Ctrl-C or
a kill loses no finished output. A rerun only ever adds to a folder made with the same settings: the
manifest is written before the folder's first strip, and a rerun whose settings (input content, weights,
model, sampler, seed, scales, eta, elevation, crop) differ from the manifest's is refused in one line before
any work. An instance counts as finished only if its strip decodes at the expected size (and matches the
sha256 the manifest recorded); otherwise it is sampled again. Output folders are created when the first
file is written, so a failed run leaves no empty folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from hv_jax import atomic
from hv_jax import checkpoint as ckpt_lib
from hv_jax import checks
from hv_jax import digest
from hv_jax import parallel
from hv_jax import settings as settings_lib
from hv_jax.data import matting, preprocess
from hv_jax.data import views as views_lib
from hv_jax.data.views import NUM_VIEWS, join_strip, to_uint8
from hv_jax.errors import UserError
from hv_jax.models.config import LOWERING_FIELDS, ModelConfig
from hv_jax.models.init import random_params
from hv_jax.sampling import modes, schedule
from hv_jax.sampling.sampler import Sampler, SamplerConfig, batch_arrays, input_id_of

WEIGHTS_HELP = ('The original weights are published by the SyncDreamer authors (syncdreamer-pretrain.ckpt, '
                'linked from the SyncDreamer / HarmonyView READMEs; the CLIP tower is OpenAI ViT-L-14.pt). '
                'Convert once with: python -m convert.syncdreamer --config.ckpt=syncdreamer-pretrain.ckpt '
                '[--config.clip=ViT-L-14.pt] --config.out=checkpoints/syncdreamer, then pass '
                '--config.checkpoint=checkpoints/syncdreamer (a .ckpt path is converted on first use).')


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """Every setting of a sampling job (`python -m hv_jax.sample`; configs/*.py start from these defaults).

  Original CLI flag -> field: --input/--output/--elevation -> input/output_dir/elevation; --sample_num ->
  sample_num; --crop_size -> crop_size; --sample_steps -> sample_steps; --cfg_scales A B with
  --decomposed_sampling -> guidance='harmonyview', s1=A, s2=B; --cfg_scales A without it -> guidance='cfg',
  cfg_scale=A; --seed -> seed; the yaml's batch_view_num -> batch_view_num.
  """
  input: str = ''                # RGBA image, GSO-eval object folder (view 000 is the input), or a folder of them
  output_dir: str = 'outputs/sample'
  checkpoint: str = ''           # converted orbax dir, the original .ckpt (converted on first use), or 'random'
  checkpoint_cache: str = ''     # where a .ckpt is converted to (default: <ckpt>.hv_jax beside it)
  model: str = ''                # model dims: '' = from the checkpoint, 'full', 'tiny', or a JSON path
  conv_impl: str = ''            # conv lowering: '' = the model config's (auto: per backend) | auto | tuned | xla
  attn_impl: str = ''            # attention lowering: '' = the model config's (auto: per backend) | auto | fast | reference
  elevation: float = 30.0        # input-view elevation in degrees (trained range [-10, 40])
  crop_size: int = -1            # RGBA inputs: object rescaled to crop_size inside 256x256; -1 keeps the image (original)
  matting: str = 'auto'          # cut-out of the input: auto (its alpha if usable, else rembg if matting_model, else plain) | alpha | plain | rembg
  matting_model: str = ''        # rembg model file (u2net.onnx, isnet-general-use.onnx, ...); nothing is downloaded
  photo_crop_size: int = 200     # matted inputs: crop_size (SyncDreamer's advice for in-the-wild images: 200 of 256)
  sample_num: int = 4            # instances per input
  seed: int = 6033               # the original's default seed
  guidance: str = 'harmonyview'  # 'harmonyview' (Eq. 9) | 'cfg' (Eq. 5) | 'none'
  s1: float = 2.0                # Eq. 9 consistency scale (paper default)
  s2: float = 1.0                # Eq. 9 diversity scale (paper default)
  cfg_scale: float = 2.0         # Eq. 5 scale, used when guidance='cfg'
  uc2_concat_scale: float = 4.0  # original quirk: uc2 branch sees 4 * input latent; 1.0 switches it off
  sample_steps: int = 50         # DDIM steps (the original's schedule runs counts dividing 1000: 25, 40, 50, 100, ...)
  ddim_spacing: str = 'uniform'  # 'uniform': the original's timesteps; 'uniform_exact': any count in [1, 999]
  eta: float = 1.0               # DDIM eta (the original samples with eta = 1)
  latent: str = 'sample'         # input latent: 'sample' (posterior draw, original) or 'mode'
  dtype: str = 'float32'         # UNet compute dtype: 'float32' | 'bfloat16'
  batch_view_num: int = 4        # views (x instances) per UNet call, all guidance branches each; 0 = all (docs/speed.md)
  decode_chunk: int = 4          # views per VAE-decoder call
  remat: bool = False            # rematerialise UNet blocks (less memory, more compute)
  per_device_batch: int = 1      # instances per device per call
  distributed: bool = False      # call jax.distributed.initialize() (TPU pods, multi-host GPU)
  progress: bool = True          # progress bars on stderr

  def validate(self) -> None:
    """Every setting of the sampling job, before any work: one UserError line naming the field."""
    self.validate_sampling()
    if not self.input:
      raise UserError('no input: set --config.input=PATH (an RGBA image, a GSO-eval object folder, or a folder of '
                      'them)')
    if not self.output_dir:
      raise UserError('no output folder: set --config.output_dir=DIR')

  def validate_sampling(self) -> None:
    """The sampler's settings (shared with the study runner): finite, in range, a schedule of exactly n steps."""
    try:
      modes.mode(self.guidance)
    except ValueError as e:
      raise UserError(str(e)) from e
    checks.number(self, 'sample_num', lo=1, integer=True)
    checks.number(self, 'seed', lo=0, hi=2 ** 32 - 1, integer=True)
    checks.number(self, 'sample_steps', lo=1, integer=True)
    scale_fields = [f for m in modes.MODES.values() for f in m.config_fields]
    for field in scale_fields + ['uc2_concat_scale']:    # any finite value: sweeps may go negative
      checks.number(self, field)
    checks.number(self, 'eta', lo=0, hint='DDIM eta: 0 deterministic, 1 the original')
    # elevation: preprocess.check_elevation (finite, in the trained range) in load_inputs, before any work
    for field in ('crop_size', 'photo_crop_size'):
      checks.number(self, field, lo=-1, hi=256, integer=True, hint='-1 keeps the framing')
      if int(getattr(self, field)) == 0:
        raise UserError(f'--config.{field}=0: must be -1 (keep the framing) or in [1, 256]')
    matting.check_settings(self.matting, self.matting_model)
    for field, values in LOWERING_FIELDS.items():
      if getattr(self, field) and str(getattr(self, field)) not in values:
        raise UserError(f'--config.{field}={getattr(self, field)!r}: use one of {values}, or leave it empty for the '
                        "model config's (docs/speed.md, \"The lowering\")")
    checks.number(self, 'batch_view_num', lo=0, integer=True, hint='views per UNet call; 0 = all at once')
    checks.number(self, 'decode_chunk', lo=1, hi=16, integer=True)
    checks.number(self, 'per_device_batch', lo=1, integer=True)
    if NUM_VIEWS % int(self.decode_chunk):
      raise UserError(f'--config.decode_chunk={self.decode_chunk}: must divide the 16 views (1, 2, 4, 8 or 16)')
    try:
      self.sampler_config()
    except ValueError as e:
      raise UserError(str(e)) from e

  def sampler_config(self, guidance: Optional[str] = None) -> SamplerConfig:
    """The static sampler settings (of another guidance mode with `guidance`: the study's one per mode)."""
    return SamplerConfig(steps=int(self.sample_steps), ddim_spacing=str(self.ddim_spacing),
                         guidance=str(guidance or self.guidance), uc2_concat_scale=float(self.uc2_concat_scale),
                         latent=str(self.latent), dtype=str(self.dtype), view_chunk=int(self.batch_view_num),
                         remat=bool(self.remat), decode_chunk=int(self.decode_chunk))

  @property
  def scales(self) -> List[float]:
    """The scales of the guidance mode: [s1, s2] (Eq. 9), [cfg_scale] (Eq. 5), [0.0] for none."""
    return list(modes.mode(self.guidance).scales_of(self))


def check_view_chunk(s: SampleSettings, rows: int) -> None:
  """batch_view_num splits the rows (instances x 16 views) of one sampler call into equal chunks."""
  n = int(s.batch_view_num)
  if n and n < rows and rows % n:
    ok = [d for d in range(1, rows + 1) if rows % d == 0]
    raise UserError(f'--config.batch_view_num={n}: must divide the {rows} rows (instances x 16 views) of a call: '
                    f'use one of {ok}, or 0 for all at once')


# ----------------------------------------------------------------------------- weights

RANDOM_PROVENANCE = 'random-init (demo, not trained weights)'

# convert_ckpt(ckpt, out, model_config or None) writes the orbax conversion of the original .ckpt at `out`,
# or raises UserError (its first line is shown). The command hands one in (hv_jax.sample:
# convert.syncdreamer.convert_for_sampler, from the checkout); the library never imports convert/. Without
# one, a .ckpt whose conversion is not cached yet is refused with how to convert it.
CkptConverter = Callable[[str, str, Optional[ModelConfig]], None]


@dataclasses.dataclass(frozen=True)
class Weights:
  """Where the params come from, known before they are loaded (so reruns are checked before that cost)."""
  source: Optional[pathlib.Path]   # the orbax checkpoint folder; None for random weights
  model_config: ModelConfig
  provenance: str                  # sha256 of the original .ckpt (and of the CLIP file, if one was given)


def resolve_weights(s: SampleSettings, convert_ckpt: Optional[CkptConverter] = None) -> Weights:
  """`checkpoint` is an orbax dir, a .ckpt (converted on first use by `convert_ckpt`) or 'random'; reads no
  params."""
  wanted = model_config_from(s.model)
  source = str(s.checkpoint or '')
  if source == 'random':
    if wanted is None:
      raise UserError("checkpoint='random' needs an explicit model config (--config.model=tiny or a JSON path)")
    return Weights(None, with_lowering(wanted, s), RANDOM_PROVENANCE)
  if not source:
    raise UserError('no checkpoint given. ' + WEIGHTS_HELP)
  path = pathlib.Path(source)
  if not path.exists():
    raise UserError(f'checkpoint not found: {path}. ' + WEIGHTS_HELP)
  if path.is_file():
    path = convert_cached(path, wanted, s.checkpoint_cache or None, convert_ckpt)
  try:
    stored = ckpt_lib.load_config(str(path))
  except ckpt_lib.CheckpointError as e:
    raise UserError(str(e)) from e
  if wanted is not None and wanted.architecture() != stored.architecture():
    raise UserError(f'the model config does not match the checkpoint in {path.resolve()}: --config.model gives '
                    'other dimensions than its model_config.json')
  meta = {}
  try:
    meta = json.loads((path / 'conversion.json').read_text())
  except (OSError, ValueError):
    pass
  src = meta.get('source', {}) if isinstance(meta, dict) else {}
  provenance = src.get('ckpt_sha256') or f'orbax:{path.resolve()} (no conversion record)'
  if src.get('clip_sha256'):
    provenance += f"+clip:{src['clip_sha256']}"
  return Weights(path, with_lowering(stored if wanted is None else wanted, s), provenance)


def with_lowering(config: ModelConfig, s: SampleSettings) -> ModelConfig:
  """`config` under the lowering `s` asks for (conv_impl / attn_impl; '' keeps the config's own). A speed choice:
  the same params, float32 rounding aside the same numbers (docs/speed.md, "The lowering")."""
  change = {f: str(getattr(s, f)) for f in LOWERING_FIELDS if getattr(s, f)}
  return dataclasses.replace(config, **change) if change else config


def load_params(weights: Weights, seed: int):
  """The params of resolved weights (random ones from `seed`)."""
  if weights.source is None:
    logging.warning('RANDOM WEIGHTS: the model is randomly initialised (demo); outputs are not HarmonyView results.')
    return random_params(weights.model_config, int(seed))
  try:
    params, _ = ckpt_lib.load(str(weights.source), config=weights.model_config)
  except ckpt_lib.CheckpointError as e:
    raise UserError(str(e)) from e
  return params


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """Params loaded once and kept on the devices by a long-lived process (hv_jax.app), handed to `run`."""
  weights: Weights
  seed: int          # random weights are drawn from the sampling seed: they serve that seed only
  params: Any

  def serves(self, weights: Weights, seed: int) -> bool:
    return self.weights == weights and (weights.source is not None or self.seed == int(seed))


def load_model(s: SampleSettings, convert_ckpt: Optional[CkptConverter] = None) -> LoadedModel:
  """The weights of `s`, loaded and replicated over this process's devices."""
  weights = resolve_weights(s, convert_ckpt)
  params = jax.device_put(load_params(weights, int(s.seed)), parallel.replicated(parallel.make_mesh()))
  return LoadedModel(weights, int(s.seed), params)


def load_weights(s: SampleSettings, convert_ckpt: Optional[CkptConverter] = None) -> Tuple[dict, ModelConfig, str]:
  """Returns (params, model config, provenance string)."""
  weights = resolve_weights(s, convert_ckpt)
  return load_params(weights, int(s.seed)), weights.model_config, weights.provenance


def convert_cached(ckpt: pathlib.Path, config: Optional[ModelConfig], cache: Optional[str],
                   convert_ckpt: Optional[CkptConverter] = None) -> pathlib.Path:
  """A .ckpt is converted once into `cache` (default: <ckpt>.hv_jax beside it) and reused.

  `convert_ckpt` converts (`CkptConverter`; the sampler's, convert.syncdreamer.convert_for_sampler, runs in a
  child process: the torch state dict and the converted numpy arrays live and die there, so converting on
  first use does not raise the sampler's peak memory). Its errors come back as one line phrased for the
  sampler; nothing is left at `cache` (nor any folder created for it) when it fails.
  """
  out = pathlib.Path(cache) if cache else ckpt.with_name(ckpt.name + '.hv_jax')
  if out.exists():
    return checked_cache(out, ckpt)
  if convert_ckpt is None:
    raise UserError(f'{ckpt} is a PyTorch checkpoint and no conversion of it is cached at {out}: convert it once '
                    f'with python -m convert.syncdreamer --config.ckpt={ckpt} --config.out={out} (from the repository '
                    'checkout), or run python -m hv_jax.sample there, which converts it on first use')
  logging.info('converting %s -> %s (first use, in a child process)', ckpt, out)
  try:
    convert_ckpt(str(ckpt), str(out), config)
  except UserError as e:
    if (out / 'model_config.json').is_file():
      return checked_cache(out, ckpt)     # another process converted it meanwhile
    raise UserError(str(e).splitlines()[0]) from e
  return out


def checked_cache(out: pathlib.Path, ckpt: pathlib.Path) -> pathlib.Path:
  """`out` if it is the conversion of `ckpt` (the same size and mtime as recorded, else the same sha256);
  otherwise UserError: a cache of another checkpoint is never used."""
  try:
    src = json.loads((out / 'conversion.json').read_text())['source']
    recorded = src['ckpt_sha256']
  except (OSError, ValueError, KeyError, TypeError):
    raise UserError(f'{out} is not a conversion of {ckpt} (no readable conversion.json): delete it, or set '
                    '--config.checkpoint_cache=DIR to convert into another folder') from None
  st = ckpt.stat()
  if (src.get('ckpt_size'), src.get('ckpt_mtime_ns')) == (st.st_size, st.st_mtime_ns):
    return out
  if digest.file_sha256(ckpt) == recorded:
    logging.info('%s: the checkpoint file was touched since its conversion, same content: reusing it', out)
    return out
  raise UserError(f'{out} holds the conversion of another checkpoint ({src.get("ckpt", "?")}, sha256 '
                  f'{recorded[:12]}..., not {ckpt}): delete it, or set --config.checkpoint_cache=DIR')


def model_config_from(spec: str) -> Optional[ModelConfig]:
  """The `model` setting: '' (None: the checkpoint's), 'full', 'tiny', or a JSON file (ModelConfig.to_dict,
  or a parity config.json with its "tiny" block)."""
  spec = str(spec or '')
  if not spec:
    return None
  if spec == 'full':
    return ModelConfig.full()
  if spec == 'tiny':
    return ModelConfig.tiny()
  try:
    with open(spec) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read model config {spec}: {e}') from e
  try:
    return ModelConfig.from_dict(d.get('tiny', d) if isinstance(d, dict) else d)
  except (TypeError, ValueError) as e:
    raise UserError(f'model config {spec}: {e}') from None


# ----------------------------------------------------------------------------- the job

@dataclasses.dataclass
class Job:
  name: str
  image: np.ndarray      # [S, S, 3] in [-1, 1]
  elevation: float       # radians
  input_id: int          # input_id_of(name)
  sha256: str = ''       # of the input image file
  matting: str = 'alpha'                # the method that gave the mask: 'alpha' (the image's own) | 'plain' | 'rembg'
  crop_size: int = -1                   # the crop used (crop_size for RGBA inputs, photo_crop_size for matted ones)
  cutout: Optional[np.ndarray] = None   # matted inputs: the RGBA [256, 256, 4] uint8 the model saw (input_rgba.png)


INPUT_RGBA = 'input_rgba.png'


def load_inputs(s: SampleSettings) -> List[Job]:
  """Finds, validates and prepares every input (the original's prepare_inputs at 256 px).

  An input with a usable alpha channel (matting 'auto' or 'alpha') takes the original's path unchanged. Any
  other image (RGB, JPEG, ...) is matted (hv_jax.data.matting), then framed with `photo_crop_size`."""
  try:
    found = preprocess.find_inputs(s.input)
    elevation = preprocess.check_elevation(float(s.elevation))
    photos = [matting.load_photo(path) for _, path in found]     # every input read before any matting
    methods = [matting.resolve(s.matting, p.alpha, s.matting_model) for p in photos]
    session = matting.rembg_session(s.matting_model) if 'rembg' in methods else None
    jobs = []
    for (name, path), photo, method in zip(found, photos, methods):
      job = Job(name, None, elevation, input_id_of(name), digest.file_sha256(path), method, int(s.crop_size))
      if method == 'alpha':
        job.image = preprocess.prepare_image(preprocess.load_rgba(path), int(s.crop_size), 256)
        logging.info('%s: mask from its alpha channel', name)
      else:
        alpha = matting.matte(photo.rgb, method, alpha=photo.alpha, session=session, name=str(path))
        rgba = preprocess.prepare_rgba(Image.fromarray(matting.cutout(photo.rgb, alpha), 'RGBA'),
                                       int(s.photo_crop_size), 256)
        job.crop_size, job.cutout = int(s.photo_crop_size), np.asarray(rgba)
        job.image = preprocess.composite_on_white(rgba)
        logging.info('%s: cut out with the %s matte%s', name, method,
                     ''.join(f'; {n}' for n in photo.notes))
      jobs.append(job)
    return jobs
  except preprocess.InputError as e:
    raise UserError(str(e)) from e


def resize_inputs(jobs: List[Job], image_size: int) -> None:
  """The demo model runs below 256 px: resize the prepared inputs (bicubic) to its size."""
  if image_size == 256:
    return
  for j in jobs:
    pil = Image.fromarray(((j.image + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    j.image = np.asarray(pil.resize((image_size, image_size), Image.BICUBIC), np.float32) / 127.5 - 1


# ----------------------------------------------------------------------------- what is on disk

MANIFEST = 'manifest.json'
# Settings that change no pixel (memory and speed knobs) are not in `settings_of`: a rerun may change them.


def settings_of(s: SampleSettings, job: Job, weights: Weights, sconf: SamplerConfig, scales: Sequence[float]) -> dict:
  """Everything an input's strips depend on; a rerun into the same folder must give the same, key by key."""
  settings = {
      'input_sha256': job.sha256, 'input_id': job.input_id, 'checkpoint': weights.provenance,
      'model_config': weights.model_config.architecture().to_dict(), 'guidance': sconf.guidance, 'scales': list(scales),
      'sample_steps': sconf.steps,     # the timesteps, not the spacing's name: equal schedules are the same
      'timesteps': [int(t) for t in schedule.ddim_timesteps(sconf.steps, sconf.ddim_spacing)],
      'eta': float(s.eta), 'seed': int(s.seed), 'latent': sconf.latent, 'dtype': sconf.dtype,
      'elevation_deg': float(s.elevation), 'crop_size': job.crop_size,
      'image_size': weights.model_config.image_size}
  if job.cutout is not None:       # a matted input: the cut-out the model saw is what the strips depend on
    settings['matting'] = job.matting
    settings['cutout_sha256'] = digest.arrays_sha256([job.cutout])
  if modes.mode(sconf.guidance).uses_uc2_concat_scale:
    settings['uc2_concat_scale'] = sconf.uc2_concat_scale
  return json.loads(json.dumps(settings, allow_nan=False))    # as manifest.json stores it (tuples -> lists)


def read_manifest(folder: pathlib.Path) -> Optional[dict]:
  path = folder / MANIFEST
  if not path.exists():
    return None
  try:
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or not isinstance(manifest.get('settings'), dict):
      raise ValueError('no settings in it')
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is unreadable or not an hv_jax manifest ({e}): use another output_dir, or delete '
                    f'{folder} to sample it again') from e
  return manifest


def strip_problem(path: pathlib.Path, size: int, sha256: Optional[str]) -> str:
  """Why `path` is not a finished strip ('' if it is): missing, unreadable, wrong size or changed since written."""
  if not path.is_file():
    return 'missing'
  if sha256:
    return '' if digest.file_sha256(path) == sha256 else 'changed since it was written (sha256 differs from the manifest)'
  return views_lib.strip_problem(path, size)


def instances_to_sample(folder: pathlib.Path, settings: dict, sample_num: int) -> List[int]:
  """The instances of one input still to sample; UserError if the folder holds work of other settings."""
  if not folder.is_dir():
    return list(range(sample_num))
  strips = stored_instances(folder)
  manifest = read_manifest(folder)
  if manifest is None:
    if strips:
      raise UserError(f'{folder} holds strips but no {MANIFEST}, so their settings are unknown: use another '
                      f'output_dir, or delete {folder} to sample it again')
    return list(range(sample_num))
  diff = checks.settings_difference(manifest['settings'], settings)
  if diff:
    raise UserError(f'{folder} holds instances made with other settings ({diff}): use another output_dir, or '
                    f'delete {folder} to sample it again')
  hashes = manifest.get('strips_sha256', {}) if manifest.get('complete') else {}
  todo = []
  for k in sorted(set(range(sample_num)) | set(strips)):
    problem = strip_problem(folder / f'{k}.png', settings['image_size'], hashes.get(str(k)))
    if problem:
      if problem != 'missing':
        logging.warning('%s/%d.png is %s: sampling it again', folder, k, problem)
      todo.append(k)
  return todo


def stored_instances(folder: pathlib.Path) -> List[int]:
  return sorted(int(p.stem) for p in folder.glob('*.png') if p.stem.isdigit() and p.name == f'{int(p.stem)}.png')


def manifest_of(s: SampleSettings, job: Job, settings: dict, weights: Weights, sconf: SamplerConfig, **extra) -> dict:
  random_model = weights.provenance == RANDOM_PROVENANCE
  return {
      'input': job.name, 'settings': settings, **extra,
      'model': 'RANDOM WEIGHTS (demo): not HarmonyView results' if random_model else 'SyncDreamer',
      'checkpoint_sha256': weights.provenance, 'sampler': dataclasses.asdict(sconf),
      'seed': settings['seed'], 'input_id': job.input_id, 'scales': settings['scales'], 'eta': settings['eta'],
      'elevation_deg': settings['elevation_deg'],
      'instance_keys': 'fold_in(fold_in(PRNGKey(seed), input_id = crc32(input name)), instance_id)',
      'config': settings_lib.as_json(s),
      'matting': job.matting,          # which mask the input had: its own alpha, or a matte (then input_rgba.png)
      # Provenance of the run that last wrote this manifest, not a checked setting: a lowering changes float
      # rounding only (docs/speed.md), so a rerun under another one may add strips, like the memory knobs.
      'lowering': dataclasses.asdict(weights.model_config.lowering()),
      'devices': [str(d) for d in jax.local_devices()], 'jax': jax.__version__}


# ----------------------------------------------------------------------------- the run

# listener(instances done, instances to sample, DDIM steps done, steps): a front end's progress (hv_jax.app).
# Called after each batch, and after each DDIM step from the compiled sampler's host callback (progress=True).
Listener = Callable[[int, int, int, int], None]


def run(s: SampleSettings, convert_ckpt: Optional[CkptConverter] = None, model: Optional[LoadedModel] = None,
        listener: Optional[Listener] = None) -> Dict[str, dict]:
  """Runs the sampling job; returns {input name: manifest} of the inputs whose instances are all on disk.

  `convert_ckpt`: how a .ckpt given as the checkpoint is converted on first use (`CkptConverter`).
  `model`: params already loaded (`load_model`), used when they are the weights (and, random, the seed) of `s`.
  `listener`: progress of the instances and DDIM steps (`Listener`)."""
  s.validate()
  parallel.initialize_distributed(bool(s.distributed))
  jobs = load_inputs(s)
  out = atomic.require_writable(s.output_dir)   # created only when the first file is written
  mesh = parallel.make_mesh()
  ndev = mesh.devices.size
  batch = int(s.per_device_batch) * ndev
  check_view_chunk(s, batch * NUM_VIEWS)
  weights = resolve_weights(s, convert_ckpt)
  sconf = s.sampler_config()
  scales = s.scales
  settings = {j.name: settings_of(s, j, weights, sconf, scales) for j in jobs}
  todo = {j.name: instances_to_sample(out / j.name, settings[j.name], int(s.sample_num)) for j in jobs}
  units = parallel.process_share([(j, k) for j in jobs for k in todo[j.name]])
  timings = {'compile_and_first_batch_s': None, 'batches_s': []}
  sampled = set()
  if units:
    if model is not None and model.serves(weights, int(s.seed)):
      params = model.params
    else:
      params = jax.device_put(load_params(weights, int(s.seed)), parallel.replicated(mesh))
    resize_inputs(jobs, weights.model_config.image_size)
    logging.info('%d devices (%s), %d processes; %d instances to sample, %d per call', ndev,
                 jax.devices()[0].platform, jax.process_count(), len(units), batch)
    sampled = sample_units(s, units, params, weights, sconf, scales, settings, mesh, batch, out, timings, listener)
  return write_summaries(s, out, jobs, settings, weights, sconf, timings, sampled)


def sample_units(s: SampleSettings, units, params, weights, sconf, scales, settings, mesh, batch, out,
                 timings, listener: Optional[Listener] = None) -> set:
  """Samples (job, instance) units in batches and writes their strips; returns the names of the inputs touched."""
  fn = compiled_sampler(weights.model_config, sconf, tuple(mesh.devices.flat), bool(s.progress))
  seed, eta = int(s.seed), jnp.float32(s.eta)
  arrays_of = lambda chunk: batch_arrays(seed, [(j.image, j.elevation, j.input_id, k, scales) for j, k in chunk])
  pending = set()    # inputs whose manifest this run has (re)written before their first new strip
  done = [0]
  tell = (lambda step: listener(done[0], len(units), step, sconf.steps)) if listener else None
  with progress_bars(fn, len(units), sconf.steps, bool(s.progress), tell) as (bar, step_bar):
    for chunk, views, dt in parallel.run_batches(lambda *a: fn(params, *a, eta), units, batch, arrays_of, mesh):
      if timings['compile_and_first_batch_s'] is None:   # always one shape: no recompile on the last batch
        timings['compile_and_first_batch_s'] = dt
      else:
        timings['batches_s'].append(dt)
      step_bar.reset()
      for (job, k), v in zip(chunk, views):
        if job.name not in pending:   # the manifest (settings, complete=False) goes before the folder's new strips
          atomic.write_json(out / job.name / MANIFEST,
                            manifest_of(s, job, settings[job.name], weights, sconf, complete=False))
          if job.cutout is not None:
            atomic.write_png(out / job.name / INPUT_RGBA, job.cutout)
          pending.add(job.name)
        atomic.write_png(out / job.name / f'{k}.png', join_strip(to_uint8(v)))
      bar.update(len(chunk))
      done[0] += len(chunk)
      if tell:
        tell(0)
  return pending


@contextlib.contextmanager
def progress_bars(fn, instances: int, steps: int, show: bool, on_step: Optional[Callable[[int], None]] = None):
  """This run's bars (instances; DDIM steps, moved by fn's step callback if it was compiled with one), closed
  when the run ends, however it ends. on_step(steps done) is told each step too."""
  bar = tqdm(total=instances, desc='instances', unit='inst', disable=not show, file=sys.stderr)
  step_bar = tqdm(total=steps, desc='DDIM steps', unit='step', position=1, leave=False, disable=not show,
                  file=sys.stderr)
  reporter = getattr(fn, 'step_progress', None)     # None: compiled without the callback (progress=False)
  try:
    with reporter.showing(step_bar, on_step) if reporter is not None else contextlib.nullcontext():
      yield bar, step_bar
  finally:
    step_bar.close()
    bar.close()


class StepProgress:
  """Where a compiled sampler's host callback reports each DDIM step: the step bar of the run sampling with it.

  The callback is part of the compiled program, so it cannot take a run's bar as an argument without a
  recompilation per run; instead each compiled sampler (progress=True) owns one StepProgress
  (`fn.step_progress`), and a run shows its own bar through it for the time it samples (`showing`). Between
  runs it holds no bar: steps then go nowhere.
  """

  def __init__(self):
    self._bar, self._on_step = None, None

  @contextlib.contextmanager
  def showing(self, bar, on_step: Optional[Callable[[int], None]] = None):
    """Steps move `bar`, and are told to on_step(steps done), which may raise to stop the sampler (a cancelled
    job: the call then fails with a JaxRuntimeError)."""
    previous, (self._bar, self._on_step) = (self._bar, self._on_step), (bar, on_step)
    try:
      yield bar
    finally:
      self._bar, self._on_step = previous

  def __call__(self, step) -> None:
    """Host callback once per DDIM step (fires once per device shard; the bar only moves forward)."""
    bar, on_step = self._bar, self._on_step
    if bar is not None and int(step) + 1 > bar.n:
      bar.update(int(step) + 1 - bar.n)
      if on_step is not None:
        on_step(bar.n)


@functools.lru_cache(maxsize=8)
def compiled_sampler(model_config: ModelConfig, sconf: SamplerConfig, devices: Tuple[jax.Device, ...],
                     progress: bool = True):
  """One jitted sampler per (model config, sampler config, devices): reruns in a process reuse it.

  Only shapes and SamplerConfig are static; images, elevations, keys, scales and eta are traced, so new
  inputs, seeds and scales never recompile. Batch arrays are sharded over the 'data' axis. progress=True
  moves the DDIM-step bar of the run that is sampling (`fn.step_progress`, a StepProgress) through a host
  callback; without it the executable has no callback and can be kept in JAX's persistent compilation cache
  (JAX_COMPILATION_CACHE_DIR), which skips callback programs.
  """
  mesh = parallel.make_mesh(devices)
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
  sampler = Sampler(model_config, sconf)
  callback = StepProgress() if progress else None
  fn = jax.jit(lambda p, img, el, keys, sc, eta: sampler.sample(p, img, el, keys, sc, eta, progress=callback),
               in_shardings=(rep, data, data, data, data, None), out_shardings=data)
  fn.step_progress = callback
  return fn


def warm_up(s: SampleSettings, model: LoadedModel) -> float:
  """Compiles the sampler of `s` for `model` and runs one batch of it on a blank input, writing nothing, so
  that a long-lived process (hv_jax.app) samples its first request at once; returns the seconds."""
  t0 = time.perf_counter()
  s.validate_sampling()
  mesh = parallel.make_mesh()
  batch = int(s.per_device_batch) * mesh.devices.size
  check_view_chunk(s, batch * NUM_VIEWS)
  size = model.weights.model_config.image_size
  fn = compiled_sampler(model.weights.model_config, s.sampler_config(), tuple(mesh.devices.flat), bool(s.progress))
  row = (np.zeros((size, size, 3), np.float32), np.radians(float(s.elevation)), 0, 0, s.scales)
  eta = jnp.float32(s.eta)
  for _ in parallel.run_batches(lambda *a: fn(model.params, *a, eta), [row], batch,
                                lambda chunk: batch_arrays(int(s.seed), chunk), mesh):
    pass
  return time.perf_counter() - t0


def write_summaries(s: SampleSettings, out, jobs, settings, weights, sconf, timings, sampled):
  """grid.png and the complete manifest (with every strip's sha256) of each input whose strips are all there;
  an input this run did not touch keeps its complete manifest (and its timings) as they are."""
  manifests = {}
  for job in jobs:
    folder = out / job.name
    instances = sorted(set(range(int(s.sample_num))) |
                       (set(stored_instances(folder)) if folder.is_dir() else set()))
    paths = [folder / f'{k}.png' for k in instances]
    if not all(p.is_file() for p in paths):
      continue  # another process (or a later run) finishes this input
    existing = read_manifest(folder)
    if job.name not in sampled and existing and existing.get('complete') and existing.get('instances') == instances:
      manifests[job.name] = existing
      continue
    strips = [np.asarray(Image.open(p).convert('RGB')) for p in paths]
    atomic.write_png(folder / 'grid.png', np.concatenate(strips, 0))
    if job.cutout is not None and not (folder / INPUT_RGBA).is_file():
      atomic.write_png(folder / INPUT_RGBA, job.cutout)
    manifest = manifest_of(s, job, settings[job.name], weights, sconf, complete=True, instances=instances,
                           strips_sha256={str(k): digest.file_sha256(p) for k, p in zip(instances, paths)},
                           timings=timings)
    atomic.write_json(folder / MANIFEST, manifest)
    manifests[job.name] = manifest
  return manifests
