"""A diversity study: guidance settings x inputs x seeds -> strips and per-unit metrics, resumable, multi-host.

  python -m experiments.diversity --config=experiments/configs/scale_sweep.py --config.data.path=PATH/gso-eval \
      --config.checkpoint=checkpoints/syncdreamer
  python -m experiments.diversity --config=experiments/configs/demo_sweep.py      # tiny random model, CPU
  python -m experiments.report --config.results=RESULTS_DIR                      # tables, plots, HTML

Work units are (input, instance, setting). A setting is a guidance mode with its scales: HarmonyView's
(s1, s2) grid (Eq. 9), CFG scales (Eq. 5), optionally no guidance.

Common random numbers: an instance's key is fold_in(fold_in(PRNGKey(seed), input_id), instance) (the
sampler's rule; input_id = CRC-32 of the input's name, so adding inputs changes no existing unit) whatever
the setting, so every setting of (input, instance) starts from the same x_T, uses
the same posterior draw of the input latent and the same DDIM step noise: differences between settings
are the settings', not seed noise. Scales are data (traced, per row of a batch), so units of different
settings share batches and ONE compiled sampler per guidance mode serves the whole sweep.

Distribution: the full unit list (input-major, then instance, then setting) is the same on every process;
process p of P owns units p, p+P, ... (`parallel.process_share`) and batches them over its local devices
(`parallel.data_sharding`); instances never communicate. Results go to `experiments.store` (one SQLite
shard per process plus atomic strip files): a restart, with any process count, skips every finished unit,
and finishes the metrics of a unit whose strip was written just before a kill without re-sampling it.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from convert import syncdreamer as convert_syncdreamer
from experiments import data
from experiments import store as store_lib
from hv_jax import atomic, checks, cli, digest, evaluate, parallel
from hv_jax import settings as settings_lib
from hv_jax.data import preprocess
from hv_jax.data import views as views_lib
from hv_jax.errors import UserError
from hv_jax.metrics.flow import composite_rgba
from hv_jax.models.config import CLIPConfig, CLIPModelConfig, CLIPTextConfig
from hv_jax.sampling import modes, pipeline
from hv_jax.sampling.sampler import batch_arrays, input_id_of

METRIC_GROUPS = ('cd_score', 'psnr_ssim', 'lpips', 'e_flow')


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Where the study's inputs come from."""
  source: str = 'gso'         # 'gso': a GSO eval folder read through the TFDS builder; 'images': own images
  path: str = ''              # the GSO eval folder (TFDS manual_dir) or the image folder
  tfds_dir: str = ''          # where TFDS writes the prepared dataset ('' = OUTPUT/tfds)
  max_inputs: int = 0         # first N inputs by name (0 = all)


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  """The grid of guidance settings: each mode's scales (modes.MODES' `columns` name these fields)."""
  s1: Tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)   # Eq. 9 consistency scales
  s2: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)   # Eq. 9 diversity scales
  cfg: Tuple[float, ...] = (1.0, 2.0, 3.0)       # Eq. 5 (SyncDreamer) scales
  none: bool = False                             # also the unguided eps(x; c)


@dataclasses.dataclass(frozen=True)
class MetricSettings(evaluate.MetricWeights):
  """The per-unit metrics: which, at what size, with which weights (hv_jax.evaluate's backends)."""
  names: str = 'cd_score,psnr_ssim,lpips,e_flow'   # comma list of METRIC_GROUPS
  size: int = 0                  # views are compared at this size (0 = the model's; RAFT needs >= 128)
  ssim_border: str = 'crop'      # as hv_jax.evaluate (torchmetrics before PR #2721)
  small_random_clip: bool = False   # with random_weights: a small CLIP instead of ViT-L/14's shape


# The sampler's settings that a study takes from its own blocks instead (left at their defaults)
UNUSED_SAMPLE_FIELDS = {
    'input': 'its inputs come from --config.data (source, path)',
    'guidance': 'its guidance modes come from the sweep (--config.sweep.s1/s2 HarmonyView, sweep.cfg, sweep.none)',
    's1': 'the HarmonyView scales come from --config.sweep.s1',
    's2': 'the HarmonyView scales come from --config.sweep.s2',
    'cfg_scale': 'the CFG scales come from --config.sweep.cfg',
}


@dataclasses.dataclass(frozen=True)
class StudySettings(pipeline.SampleSettings):
  """Every setting of a study: the sampler's (SampleSettings: model, seed, steps, ...; `input` unused, the
  inputs come from `data`) and the study's own blocks."""
  data: DataSettings = DataSettings()
  sweep: SweepSettings = SweepSettings()
  metrics: MetricSettings = MetricSettings()
  coordinator_address: str = ''  # with distributed=True: host:port of process 0 ('' = from the environment)
  num_processes: int = 0
  process_id: int = -1

  def validate_processes(self) -> None:
    """The process fields go together: coordinator_address, num_processes and process_id only with
    distributed=True (processes that think they are alone would each run every unit into the same folder), and
    given all three or none (none: from the environment, e.g. a TPU pod)."""
    explicit = [f for f, unset in (('coordinator_address', ''), ('num_processes', 0), ('process_id', -1))
                if getattr(self, f) != unset]
    if explicit and not self.distributed:
      raise UserError(f"--config.{explicit[0]}={getattr(self, explicit[0])!r} without --config.distributed=True: "
                      'a process that is not told it is one of several runs every unit')
    if not explicit:
      return
    if not self.coordinator_address:
      raise UserError('--config.num_processes and --config.process_id go with --config.coordinator_address=HOST:PORT '
                      '(leave all three unset to take them from the environment)')
    n = checks.number(self, 'num_processes', lo=1, integer=True, hint='the number of processes of the study')
    checks.number(self, 'process_id', lo=0, hi=int(n) - 1, integer=True, hint=f'this process, of {int(n)}')

  def validate(self) -> None:
    """Every study setting, before any work: one UserError line naming the field."""
    self.validate_sampling()
    default = pipeline.SampleSettings()
    for field, instead in UNUSED_SAMPLE_FIELDS.items():      # a sampler setting a study would silently ignore
      if getattr(self, field) != getattr(default, field):
        raise UserError(f'--config.{field}={getattr(self, field)!r} is not used by a study: {instead}')
    for field in ('sweep.s1', 'sweep.s2', 'sweep.cfg'):
      checks.numbers_of(self, field)
    checks.number(self, 'metrics.size', lo=0, integer=True, hint='0 = the model\'s image size')
    checks.number(self, 'data.max_inputs', lo=0, integer=True, hint='0 = all')
    self.validate_processes()
    try:     # the default of inputs without their own (every one of a GSO study has its own): checked anyway
      preprocess.check_elevation(self.elevation)
    except preprocess.InputError as e:
      raise UserError(f'--config.elevation={self.elevation}: {e}') from None
    if str(self.metrics.ssim_border) not in ('crop', 'full'):
      raise UserError(f"--config.metrics.ssim_border={self.metrics.ssim_border!r}: use 'crop' or 'full'")
    if not self.output_dir:
      raise UserError('no output folder: set --config.output_dir=DIR')

@dataclasses.dataclass(frozen=True)
class Setting:
  mode: str
  scales: Tuple[float, ...]

  @property
  def name(self) -> str:
    return store_lib.setting_name(self.mode, self.scales)

  def columns(self) -> dict:
    """The study's mode and scale columns of this setting (NaN: a scale its mode does not have)."""
    own = dict(zip(modes.mode(self.mode).columns, self.scales))
    return {'mode': self.mode, **{c: own.get(c, math.nan) for c in store_lib.SCALE_COLUMNS}}


@dataclasses.dataclass(eq=False)
class Input:
  name: str
  input_id: int
  image: np.ndarray              # prepared: [S, S, 3] in [-1, 1] at the model's size
  elevation: float               # radians
  raw: np.ndarray                # the input view as given (RGBA uint8), for the report
  gt: Optional[np.ndarray]       # [16, s, s, 4] uint8 at the metric size, or None
  photo_crop: Optional[int] = None   # a matted photo: the crop it was framed with (photo_crop_size)


@dataclasses.dataclass(frozen=True)
class Unit:
  input: Input
  instance: int
  setting: Setting

  @property
  def key(self):
    return (self.input.name, self.instance, self.setting.name)


# ----------------------------------------------------------------------------- the plan

def settings_of(sweep: SweepSettings) -> List[Setting]:
  """The grid, mode by mode (modes.MODES): 'none' if asked, every CFG scale, every (s1, s2) pair of
  HarmonyView; a mode's scales come from the sweep fields named as its columns (sweep.cfg, sweep.s1, sweep.s2)."""
  out = []
  for m in modes.MODES.values():
    grid = itertools.product(*(getattr(sweep, c) for c in m.columns)) if m.columns else ([()] if sweep.none else [])
    out += [Setting(m.name, m.scales(values)) for values in grid]
  if not out:
    raise UserError('the sweep is empty: give sweep.s1 and sweep.s2, and/or sweep.cfg (or sweep.none=True)')
  names = [s.name for s in out]
  if len(set(names)) != len(names):
    raise UserError(f'the sweep repeats a setting: {sorted(n for n in names if names.count(n) > 1)}')
  return out


def work_units(inputs: Sequence[Input], instances: int, settings: Sequence[Setting]) -> List[Unit]:
  """The global unit list: the same order on every process (input, then instance, then setting)."""
  return [Unit(i, k, s) for i in inputs for k in range(instances) for s in settings]


# ----------------------------------------------------------------------------- inputs

def load_records(config: StudySettings) -> List[dict]:
  """Input records (experiments.data's format): the GSO eval set through its TFDS builder, or a folder of
  the user's images."""
  d = config.data
  try:
    if d.source == 'gso':   # the prepared TFDS build lives in the study folder unless data.tfds_dir says where
      records = data.gso_eval.load_gso(d.path, data_dir=d.tfds_dir or os.path.join(config.output_dir, 'tfds'))
    elif d.source == 'images':
      records = data.images.load_folder(d.path, elevation_deg=float(config.elevation), matting=str(config.matting),
                                        model=str(config.matting_model))
    else:
      raise UserError(f"unknown data.source {d.source!r}: use 'gso' (GSO eval folder via TFDS) or 'images'")
  except (preprocess.InputError, FileNotFoundError, ValueError) as e:
    raise UserError(str(e).splitlines()[0]) from e
  records = sorted(records, key=lambda r: r['name'])
  if d.max_inputs:
    records = records[:int(d.max_inputs)]
  if not records:
    raise UserError(f'no inputs found in {d.path}')
  return records


def gt_at(gt_rgba: np.ndarray, size: int) -> np.ndarray:
  """GT views at the metric size: composited on white first when resized (then alpha 255), as-is otherwise."""
  if gt_rgba.shape[1] == size:
    return gt_rgba
  rgb = np.round(composite_rgba(gt_rgba)).clip(0, 255).astype(np.uint8)
  rgb = views_lib.resize_views(rgb, size)
  return np.concatenate([rgb, np.full(rgb.shape[:3] + (1,), 255, np.uint8)], -1)


def prepare_inputs(records, config: StudySettings, image_size: int, metric_size: int) -> List[Input]:
  out = []
  for r in records:
    try:
      elevation = preprocess.check_elevation(float(r.get('elevation', config.elevation)))
      crop = config.crop_size if r.get('matting', 'alpha') == 'alpha' else config.photo_crop_size   # as the sampler
      image = preprocess.prepare_image(Image.fromarray(np.asarray(r['input_view']), 'RGBA'), int(crop), 256)
    except preprocess.InputError as e:
      raise UserError(f"input {r['name']}: {e}") from e
    job = pipeline.Job(r['name'], image, elevation, input_id_of(r['name']))
    pipeline.resize_inputs([job], image_size)
    gt = r.get('gt_views')
    out.append(Input(r['name'], job.input_id, job.image, elevation, np.asarray(r['input_view']),
                     None if gt is None else gt_at(np.asarray(gt), metric_size),
                     None if r.get('matting', 'alpha') == 'alpha' else int(crop)))
  return out


# ----------------------------------------------------------------------------- metrics

class Metrics:
  """Per-unit metrics; each metric group is computed or unavailable with a reason (kept in study.json)."""

  def __init__(self, m: MetricSettings, metric_size: int):
    wanted = [g.strip() for g in str(m.names).split(',') if g.strip()]
    bad = sorted(set(wanted) - set(METRIC_GROUPS))
    if bad:
      raise UserError(f'unknown metrics {bad}: choose from {list(METRIC_GROUPS)}')
    self.size = metric_size
    self.crop_border = m.ssim_border == 'crop'
    self.groups: Dict[str, object] = {}
    self.unavailable: Dict[str, str] = {}
    for g in wanted:
      if g == 'psnr_ssim':
        self.groups[g] = None
        continue
      if g == 'e_flow' and metric_size < 128:
        self.unavailable[g] = (f'views are {metric_size} px and RAFT needs >= 128 (the original gives NaN below): '
                               'set metrics.size=128 or more')
        continue
      try:
        if g == 'cd_score' and m.random_weights:
          # seed 1: with seed 0 the small tower's text feature has a negative cosine with every view, so
          # 100 * max(cos, 0) is 0 for all views and S_var = 0 (a CD score of D / 0)
          b = (evaluate.random_clip_backend(_small_clip(), seed=1) if m.small_random_clip
               else evaluate.random_clip_backend(_full_clip()))
        else:
          b = {'cd_score': evaluate.clip_backend, 'lpips': evaluate.lpips_backend,
               'e_flow': functools.partial(evaluate.raft_backend, cache_gt_flows=True)}[g](m, '--config.metrics.')
      except Exception as e:  # noqa: BLE001  (bad weights disable one metric, not the study)
        b = evaluate.Backend(reason=f'weights could not be loaded: {str(e).splitlines()[0]}')
      if b.fn is None:
        self.unavailable[g] = b.reason
      else:
        self.groups[g] = b

  def __call__(self, unit: Unit, views_u8: np.ndarray) -> Dict[str, float]:
    """views_u8 [16, S, S, 3] at the model's size -> {metric column: value} (NaN = unavailable)."""
    pred = views_lib.resize_views(views_u8, self.size)[None]
    gt = unit.input.gt
    out = {k: math.nan for k in store_lib.METRICS}
    name = unit.input.name
    if 'cd_score' in self.groups:
      r = self.groups['cd_score'].fn(name, gt, pred)
      out['cd_D'], out['cd_S_var'] = float(r['cd_D'][0]), float(r['cd_S_var'][0])
    if gt is None:
      return out
    if 'psnr_ssim' in self.groups:
      r = evaluate.image_fn(name, gt, pred, self.crop_border)
      out['psnr'], out['ssim'] = float(np.mean(r['psnr'])), float(np.mean(r['ssim']))
    if 'lpips' in self.groups:
      out['lpips'] = float(np.mean(self.groups['lpips'].fn(name, gt, pred)['lpips']))
    if 'e_flow' in self.groups:
      out['e_flow'] = float(self.groups['e_flow'].fn(name, gt, pred)['e_flow'][0])
    return out


def _small_clip():
  """A small random CLIP for demos (CPU-cheap); the full ViT-L/14 shape otherwise."""
  return CLIPModelConfig(vision=CLIPConfig(embed_dim=128, vision_layers=2, vision_width=128, vision_patch_size=32),
                         text=CLIPTextConfig(width=128, layers=2))


def _full_clip():
  return CLIPModelConfig()


# ----------------------------------------------------------------------------- the study folder

def identity_of(config: StudySettings, ckpt: str, model_config) -> dict:
  """What a finished unit's numbers depend on besides its own (input, instance, setting)."""
  m = config.metrics
  identity = {'checkpoint': ckpt, 'model_config': model_config.architecture().to_dict(), 'seed': int(config.seed),
              'sample_steps': int(config.sample_steps), 'eta': float(config.eta), 'latent': str(config.latent),
              'dtype': str(config.dtype), 'uc2_concat_scale': float(config.uc2_concat_scale),
              'crop_size': int(config.crop_size), 'elevation_default': float(config.elevation),
              'metric_size': int(m.size), 'ssim_border': str(m.ssim_border),
              'random_metric_weights': bool(m.random_weights), 'small_random_clip': bool(m.small_random_clip),
              'metric_weights': {k: digest.weights_identity(str(getattr(m, k)))
                                 for k in ('clip', 'lpips_vgg', 'lpips_lin', 'raft')}}
  if str(config.ddim_spacing) != 'uniform':   # absent for the original schedule, as before
    identity['ddim_spacing'] = str(config.ddim_spacing)
  return json.loads(json.dumps(identity))   # as study.json stores it (tuples become lists)


def input_digest(inp: Input) -> str:
  """What an input's units depend on: its pixels, GT views and elevation."""
  return digest.arrays_sha256([inp.raw, np.float32(inp.elevation)] + ([] if inp.gt is None else [inp.gt])
                             + ([] if inp.photo_crop is None else [np.int32(inp.photo_crop)]))


def check_inputs(out: pathlib.Path, inputs: Sequence[Input]) -> None:
  """A restart may add inputs, but an input whose name has finished units must be the same input."""
  path = out / 'study.json'
  if not path.is_file():
    return
  old = json.loads(path.read_text()).get('inputs', {})
  for inp in inputs:
    entry = old.get(inp.name)
    if not entry:
      continue
    if entry.get('sha256'):
      same = entry['sha256'] == input_digest(inp)
    else:   # a study.json without input digests: compare with the input views it stored
      same = _same_image(out / entry['input_image'], inp.raw) and (
          inp.gt is None or _same_image(out / f'inputs/{inp.name}_gt.png', views_lib.join_strip(inp.gt)))
    if not same:
      raise UserError(f'input {inp.name} differs from the one this study in {out} started with (other pixels, GT '
                      'or elevation): use a new output_dir, or give the new input another name')


def _same_image(path: pathlib.Path, array: np.ndarray) -> bool:
  try:
    return np.array_equal(np.asarray(Image.open(path)), array)
  except OSError:
    return False


def check_study(out: pathlib.Path, identity: dict) -> None:
  """A restart must sample what the first run sampled: the same model, seed, steps, ... (the grid, the
  instance count and the inputs may grow: new units are simply added)."""
  path = out / 'study.json'
  if not path.is_file():
    return
  try:
    old = json.loads(path.read_text())['identity']
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f'{path} is unreadable ({e}): not a study folder? use a new output_dir') from e
  diff = checks.settings_difference(old, identity)
  if diff:
    raise UserError(f'{out} holds a study with different settings ({diff}): use a new output_dir or the old '
                    'settings')


def write_study(out: pathlib.Path, config: StudySettings, identity: dict, inputs: Sequence[Input], settings, metrics: Metrics,
                random_model: bool) -> None:
  """study.json and the input views (process 0 writes them; every process computes the same content)."""
  if jax.process_index() != 0:
    return
  old = json.loads((out / 'study.json').read_text()) if (out / 'study.json').is_file() else {}
  entries = dict(old.get('inputs', {}))   # inputs of earlier runs keep their entries (their units stay)
  for inp in inputs:
    rel = f'inputs/{inp.name}.png'
    if not (out / rel).is_file():
      atomic.write_png(out / rel, inp.raw)
    if inp.gt is not None and not (out / f'inputs/{inp.name}_gt.png').is_file():
      atomic.write_png(out / f'inputs/{inp.name}_gt.png', views_lib.join_strip(inp.gt))
    entries[inp.name] = {'input_image': rel, 'input_id': inp.input_id, 'sha256': input_digest(inp),
                         'gt_strip': f'inputs/{inp.name}_gt.png' if inp.gt is not None else None}
  doc = {'identity': identity, 'random_weights': random_model or bool(config.metrics.random_weights),
         'random_model': random_model, 'inputs': entries, 'settings': [s.name for s in settings],
         'instances': int(config.sample_num), 'metrics_unavailable': metrics.unavailable,
         'unit_key': 'fold_in(fold_in(PRNGKey(seed), input_id = crc32(name)), instance): the same noise for '
                     'every setting',
         'config': settings_lib.as_json(config)}
  atomic.write_json(out / 'study.json', doc)


# ----------------------------------------------------------------------------- the run

def run(config: StudySettings) -> dict:
  """Runs (or resumes) the study; returns counts {'units', 'done_before', 'sampled', 'metrics_only'}."""
  config.validate()
  parallel.initialize_distributed(bool(config.distributed), str(config.coordinator_address),
                                  int(config.num_processes), int(config.process_id))
  settings = settings_of(config.sweep)
  mesh = parallel.make_mesh()
  batch = int(config.per_device_batch) * mesh.devices.size
  pipeline.check_view_chunk(config, batch * 16)
  out = atomic.require_writable(config.output_dir)     # created only when the first file is written
  params, model_config, ckpt = pipeline.load_weights(config, convert_syncdreamer.convert_for_sampler)
  size = model_config.image_size
  metric_size = int(config.metrics.size) or size
  identity = identity_of(config, ckpt, model_config)
  check_study(out, identity)
  metrics = Metrics(config.metrics, metric_size)
  inputs = prepare_inputs(load_records(config), config, size, metric_size)
  check_inputs(out, inputs)
  write_study(out, config, identity, inputs, settings, metrics, ckpt.startswith('random'))

  store = store_lib.Store(out, jax.process_index())
  units = work_units(inputs, int(config.sample_num), settings)
  mine = parallel.process_share(units)
  done = store.done()
  todo = [u for u in mine if u.key not in done]
  logging.info('study %s: %d units (%d inputs x %d instances x %d settings); process %d/%d owns %d, %d to do',
               out, len(units), len(inputs), config.sample_num, len(settings), jax.process_index(),
               jax.process_count(), len(mine), len(todo))
  counts = {'units': len(units), 'done_before': len(mine) - len(todo), 'sampled': 0, 'metrics_only': 0}

  def finish(unit: Unit, views_u8: np.ndarray, seconds: float) -> dict:
    t0 = time.perf_counter()
    vals = metrics(unit, views_u8)
    return {'input': unit.input.name, 'instance': unit.instance, 'setting': unit.setting.name,
            'input_id': unit.input.input_id, 'seed': int(config.seed),
            'strip': store_lib.strip_relpath(unit.input.name, unit.setting.name, unit.instance),
            **unit.setting.columns(), **vals, 'seconds': seconds + time.perf_counter() - t0,
            'process': jax.process_index(), 'finished': time.time()}

  bar = tqdm(total=len(todo), desc='units', unit='unit', disable=not config.progress, file=sys.stderr)
  try:     # the bar is closed before any error line
    # Killed after the strip was written but before its row: metrics only, no re-sampling.
    orphan_keys = set()
    for u in todo:
      path = store.strip_path(u.input.name, u.setting.name, u.instance)
      if not path.is_file():
        continue
      try:
        views = views_lib.read_strip(path, size)
      except views_lib.StripError as e:   # not a strip this study wrote (strips are written atomically)
        logging.warning('%s is unusable (%s): sampling that unit again', path, str(e).splitlines()[0])
        continue
      store.put([finish(u, views, 0.0)])
      orphan_keys.add(u.key)
      counts['metrics_only'] += 1
      bar.update(1)
    todo = [u for u in todo if u.key not in orphan_keys]

    params = jax.device_put(params, parallel.replicated(mesh))
    seed, eta = int(config.seed), jnp.float32(config.eta)
    arrays_of = lambda chunk: batch_arrays(seed, [(u.input.image, u.input.elevation, u.input.input_id, u.instance,
                                                   u.setting.scales) for u in chunk])
    for mode in modes.MODES:   # one compiled sampler per mode (its branches): units of a mode share batches
      group = [u for u in todo if u.setting.mode == mode]
      if not group:
        continue
      fn = pipeline.compiled_sampler(model_config, config.sampler_config(mode), tuple(mesh.devices.flat),
                                    False)   # per-unit progress here; no host callback: cacheable
      sample = lambda *arrays, fn=fn: fn(params, *arrays, eta)
      for chunk, views, seconds in parallel.run_batches(sample, group, batch, arrays_of, mesh):
        views = views_lib.to_uint8(views)
        per_unit = seconds / len(chunk)
        rows = []
        for u, v in zip(chunk, views):
          store.write_strip(u.input.name, u.setting.name, u.instance, views_lib.join_strip(v))   # before its row
          rows.append(finish(u, v, per_unit))
        store.put(rows)   # one transaction per batch
        counts['sampled'] += len(rows)
        bar.update(len(rows))
  finally:
    bar.close()
  store.close()
  return counts


# ----------------------------------------------------------------------------- CLI

def study(config: StudySettings) -> int:
  counts = run(config)
  print(f"done: {counts['sampled']} units sampled, {counts['metrics_only']} finished from saved strips, "
        f"{counts['done_before']} already done (of {counts['units']}) in {config.output_dir}; "
        f'report: python -m experiments.report --config.results={config.output_dir}')
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.INFO)
  return cli.main(argv, StudySettings, study, prog='python -m experiments.diversity', doc=__doc__,
                  missing_hint='pass --config=experiments/configs/scale_sweep.py (or demo_sweep.py)')


if __name__ == '__main__':
  sys.exit(main())
