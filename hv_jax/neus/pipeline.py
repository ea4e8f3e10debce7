"""`python -m hv_jax.reconstruct`: 16 views -> NeuS -> DIR/mesh.ply + DIR/metrics.json.

Order of work, so that bad input loses nothing and leaves nothing partial:
1. config and input are checked (ViewsError / ValueError -> UserError, one line): every number of the config
   finite and in range; with gt_mesh, the GT mesh is read and its object's rotation known (gt_name, default
   the input folder's name, or the folder holding the input strip, must be a GSO-eval object unless
   `gt_rotation` is given: an unknown name is not silently rotation 0);
2. a finished DIR (metrics.json + mesh.ply) is reused only if it was made from the same input (sha256 of the
   strip or of the 16 views), GT mesh (sha256) and settings (`identity` in metrics.json: the config without
   input/output_dir/progress/overwrite/gt_mesh/gt_name/save_every/mesh_slab, which do not change the result);
   otherwise one line refuses (another output_dir, or --config.overwrite=True to redo it);
3. the output folder is created and tested for writing; training runs with orbax checkpoints in
   DIR/checkpoints, which a rerun resumes only when DIR/checkpoints/identity.json says they were made from the
   same input and training settings (train.fit); a loss or gradient that is not finite stops the run with one
   line (the diverged checkpoints are removed); a run that fails before writing any result or checkpoint
   removes the folders it created;
4. the mesh and metrics are written atomically (temporary file + rename), mesh first, metrics last: a
   finished output is one with metrics.json. A rerun of a finished output does nothing unless overwrite.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import jax

from hv_jax import atomic, checks, digest
from hv_jax.data.views import VIEW_FILES
from hv_jax.errors import UserError
from hv_jax.metrics import geometry
from hv_jax.neus import data as neus_data
from hv_jax.neus import fields
from hv_jax.neus import mesh as neus_mesh
from hv_jax.neus import train
from hv_jax.neus.fields import NeuSConfig


def _plain(x):
  if hasattr(x, 'to_dict'):
    x = x.to_dict()
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def _finite_numbers(x, prefix: str = '') -> None:
  """ValueError naming the first NaN / infinite number anywhere in the (plain) config."""
  if isinstance(x, dict):
    for k, v in x.items():
      _finite_numbers(v, f'{prefix}{k}.')
  elif isinstance(x, (list, tuple)):
    for v in x:
      _finite_numbers(v, prefix)
  elif isinstance(x, float) and not math.isfinite(x):
    raise ValueError(f'--config.{prefix[:-1]}={x}: must be a finite number')


def _check_ranges(cfg: NeuSConfig, tc: 'train.TrainConfig', lc: 'train.LoopConfig', config) -> None:
  """Ranges of the numbers NeuS divides by, takes logs of, or counts with (ValueError naming the field)."""
  checks = [
      ('neus.n_samples', cfg.n_samples, cfg.n_samples >= 1, '>= 1'),
      ('neus.n_importance', cfg.n_importance, cfg.n_importance >= 0, '>= 0'),
      ('neus.up_sample_steps', cfg.up_sample_steps,
       cfg.up_sample_steps >= 1 and cfg.n_importance % cfg.up_sample_steps == 0,
       f'>= 1 and divide neus.n_importance={cfg.n_importance}'),
      ('neus.anneal_end', cfg.anneal_end, cfg.anneal_end != 0, '> 0 (or < 0: no annealing)'),
      ('neus.default_radius', cfg.default_radius, cfg.default_radius > 0, '> 0'),
      ('neus.default_side_length', cfg.default_side_length, cfg.default_side_length > 0, '> 0'),
      ('neus.rgb_loss', cfg.rgb_loss, cfg.rgb_loss in ('soft_l1', 'mse'), "'soft_l1' or 'mse'"),
      ('train.base_lr', tc.base_lr, tc.base_lr > 0, '> 0'),
      ('train.total_steps', tc.total_steps, tc.total_steps >= 1, '>= 1'),
      ('train.warm_up_steps', tc.warm_up_steps, tc.warm_up_steps >= 0, '>= 0'),
      ('train.weight_decay', tc.weight_decay, tc.weight_decay >= 0, '>= 0'),
      ('train.b1', tc.b1, 0 <= tc.b1 < 1, 'in [0, 1)'),
      ('train.b2', tc.b2, 0 <= tc.b2 < 1, 'in [0, 1)'),
      ('train.eps', tc.eps, tc.eps > 0, '> 0'),
      ('train.grid_lr_scale', tc.grid_lr_scale, tc.grid_lr_scale > 0, '> 0'),
      ('train.decay_interval', tc.decay_interval, tc.decay_interval >= 1, '>= 1'),
      ('train.chunks', tc.chunks, tc.chunks >= 1, '>= 1'),
      ('save_every', lc.save_every, lc.save_every >= 1, '>= 1'),
      ('log_every', lc.log_every, lc.log_every >= 1, '>= 1'),
      ('mesh_slab', int(config.mesh_slab), int(config.mesh_slab) >= 1, '>= 1'),
  ]
  for name in ('lambda_rgb_loss', 'lambda_mask_loss', 'lambda_eikonal_loss'):
    checks.append((f'neus.{name}', getattr(cfg, name), getattr(cfg, name) >= 0, '>= 0'))
  if isinstance(cfg.sdf, fields.GridSDFConfig):
    g = cfg.sdf
    checks += [('neus.sdf.bound', g.bound, g.bound > 0, '> 0'), ('neus.sdf.radius', g.radius, g.radius > 0, '> 0'),
               ('neus.sdf.features', g.features, g.features >= 1, '>= 1'),
               ('neus.sdf.resolutions', g.resolutions, len(g.resolutions) >= 1 and min(g.resolutions) >= 2,
                'a non-empty list of sizes >= 2')]
  else:
    checks.append(('neus.sdf.scale', cfg.sdf.scale, cfg.sdf.scale > 0, '> 0'))
  for name, value, ok, want in checks:
    if not ok:
      raise ValueError(f'--config.{name}={value!r}: must be {want}')


def configs_from(config) -> Tuple[NeuSConfig, train.TrainConfig, train.LoopConfig]:
  try:
    _finite_numbers(_plain(config.to_dict() if hasattr(config, 'to_dict') else config))
    cfg = NeuSConfig.from_dict(_plain(config.neus))
    tc = train.TrainConfig(**_plain(config.train))
    for name in ('batch_num', 'fg_num', 'seed', 'save_every', 'log_every', 'mesh_resolution', 'mesh_slab'):
      v = config[name]
      if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        raise ValueError(f'--config.{name}={v!r}: must be an integer')
    lc = train.LoopConfig(batch_num=int(config.batch_num), fg_num=int(config.fg_num), seed=int(config.seed),
                          save_every=int(config.save_every), log_every=int(config.log_every))
    if cfg.color.d_feature != cfg.sdf.d_out - 1:
      raise ValueError(f'neus.color.d_feature={cfg.color.d_feature} must be neus.sdf.d_out - 1 = {cfg.sdf.d_out - 1}')
    if tc.use_warm_up and tc.total_steps // tc.decay_interval == 0:
      raise ValueError(f'train.total_steps={tc.total_steps} < train.decay_interval={tc.decay_interval}')
    if lc.batch_num <= 0 or lc.fg_num < 0 or int(config.mesh_resolution) < 2:
      raise ValueError('batch_num must be > 0, fg_num >= 0, mesh_resolution >= 2')
    if str(config.get('mesh_floor', 'none')) not in neus_mesh.FLOORS:
      raise ValueError(f'mesh_floor={config.mesh_floor!r}: expected one of {neus_mesh.FLOORS}')
    _check_ranges(cfg, tc, lc, config)
  except (TypeError, ValueError) as e:
    raise UserError(str(e)) from None
  return cfg, tc, lc


def _prepare_output(out: Path) -> List[Path]:
  """Creates `out` and tests it for writing; returns the folders this created (outermost first)."""
  atomic.require_writable(out)
  return atomic.make_dirs(out)


def _remove_unless_written(out: Path, created: List[Path], ckpt: Path, drop_checkpoints: bool = False) -> None:
  """After a failed run: `drop_checkpoints` removes the checkpoint folder (a diverged state); then, if no
  result and no checkpoint is left, the checkpoint folder and the folders this run created are removed, so
  that a failure leaves nothing behind."""
  if drop_checkpoints:
    shutil.rmtree(ckpt, ignore_errors=True)
  ident = ckpt / train.IDENTITY_FILE
  if any(p.is_file() and p != ident for p in out.rglob('*')):
    return
  shutil.rmtree(ckpt, ignore_errors=True)
  atomic.remove_empty_dirs(created)


def input_hashes(path) -> Dict[str, str]:
  """sha256 of the input strip ({'strip': ...}) or of each of the 16 views of a folder ({'000.png': ...})."""
  path = Path(path)
  if path.is_dir():
    return {name: digest.file_sha256(path / name) for name in VIEW_FILES}
  return {'strip': digest.file_sha256(path)}


# config fields that do not change the result: a finished output made with other values is still valid
NOT_IN_IDENTITY = ('input', 'output_dir', 'progress', 'overwrite', 'gt_mesh', 'gt_name', 'gt_rotation', 'save_every',
                   'mesh_slab')   # the GT's name and rotation are in the identity as gt_name, gt_rotation_deg


def default_gt_name(input_path) -> str:
  """The object name of an input: a folder's name, or the name of the folder holding a strip."""
  p = Path(input_path).absolute()
  return p.name if p.is_dir() else p.parent.name


def _names(diff: List[str]) -> str:
  """Readable, deduplicated names of differing identity entries (config.train.base_lr -> train.base_lr)."""
  out = []
  for d in diff:
    for prefix, name in (('config.', None), ('input_sha256', 'input'), ('data.input_sha256', 'input'),
                         ('gt_mesh_sha256', 'gt_mesh'), ('gt_rotation_deg', 'GT rotation'), ('loop.', None)):
      if d.startswith(prefix):
        d = name or d[len(prefix):]
        break
    if d not in out:
      out.append(d)
  return ', '.join(out[:4]) + (f' and {len(out) - 4} more' if len(out) > 4 else '')


def _json_roundtrip(x):
  return json.loads(json.dumps(x))


class _Diverged(Exception):
  pass


def run(config) -> Dict[str, Any]:
  """Runs one reconstruction; returns the metrics dict (also in DIR/metrics.json).

  config.gt_rotation (degrees, None by default): the GT mesh's rotation for an object that is not a GSO-eval
  object; by default it is looked up by gt_name."""
  cfg, tc, lc = configs_from(config)      # every setting first, then the input
  if not config.input:
    raise UserError('no input: pass --config.input=PATH (a 256x4096 strip or a folder of 16 views)')
  try:
    views = neus_data.load_views(config.input)
  except neus_data.ViewsError as e:
    raise UserError(str(e)) from None
  gt_mesh = str(config.gt_mesh or '')
  gt_name, rotation = None, None
  gt_rotation = config.get('gt_rotation')
  if gt_rotation is not None and not gt_mesh:
    raise UserError('--config.gt_rotation is the GT mesh rotation: it needs --config.gt_mesh')
  if gt_mesh:
    if not os.path.isfile(gt_mesh):
      raise UserError(f'gt_mesh {gt_mesh}: no such file')
    gt_name = str(config.gt_name or default_gt_name(config.input))
    if gt_rotation is None:
      try:
        rotation = geometry.gt_rotation_angle(
            gt_name, hint='set --config.gt_name=OBJECT, or --config.gt_rotation=0 if the GT mesh needs no rotation')
      except geometry.UnknownObjectError as e:
        raise UserError(f'gt_name: {e}') from None
    else:
      rotation = float(gt_rotation)
    try:
      geometry.load_mesh(gt_mesh)
    except geometry.MeshError as e:
      raise UserError(f'gt_mesh {e}') from None

  inputs = input_hashes(config.input)
  plain = _plain(config.to_dict() if hasattr(config, 'to_dict') else config)
  identity = _json_roundtrip({
      'input_sha256': inputs, 'gt_mesh_sha256': digest.file_sha256(gt_mesh) if gt_mesh else None,
      'gt_name': gt_name, 'gt_rotation_deg': rotation,
      'config': {k: v for k, v in plain.items() if k not in NOT_IN_IDENTITY}})

  out = Path(config.output_dir)
  metrics_path, mesh_path = out / 'metrics.json', out / 'mesh.ply'
  if metrics_path.exists() and mesh_path.exists() and not config.overwrite:
    try:
      stored = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as e:
      raise UserError(f'{metrics_path} is not readable ({e}): use another output_dir or '
                      '--config.overwrite=True') from None
    if not isinstance(stored.get('identity'), dict):
      raise UserError(f'{out} holds a reconstruction of an older version, without a record of its input and '
                      'settings: use another output_dir or --config.overwrite=True')
    diff = checks.differing_keys(stored['identity'], identity)
    if diff:
      raise UserError(f'{out} holds a reconstruction of another input/settings ({_names(diff)}): use another '
                      'output_dir or --config.overwrite=True')
    print(f'{out}: already reconstructed from the same input and settings (metrics.json); '
          '--config.overwrite=True redoes it')
    return stored
  created = _prepare_output(out)
  ckpt = out / 'checkpoints'
  if config.overwrite:      # the old result is no longer a finished output; its checkpoints are not resumed
    metrics_path.unlink(missing_ok=True)
    if ckpt.exists():
      shutil.rmtree(ckpt)

  print(f'neus: {config.input} ({views.mask_source} masks), {tc.total_steps} steps of '
        f'{lc.batch_num}+{lc.fg_num} rays, {type(cfg.sdf).__name__}, on {jax.devices()[0].platform}')

  def check_finite(row):
    bad = [k for k, v in row.items() if not math.isfinite(v)]
    if bad:
      k = 'loss' if 'loss' in bad else bad[0]
      raise _Diverged(f"training diverged by step {row['step']} ({k} {row[k]}): lower --config.train.base_lr "
                      "(this run's checkpoints were removed)")

  t0 = time.time()
  try:
    data = neus_data.ray_dataset(views)
    try:
      params, history = train.fit(data, cfg, tc, lc, checkpoint_dir=str(ckpt), progress=config.progress,
                                  on_log=check_finite, data_identity={'input_sha256': inputs})
    except train.CheckpointMismatch as e:
      raise UserError(f'{e}: use another output_dir or --config.overwrite=True') from None
    t_train = time.time() - t0
    metrics = _mesh_and_metrics(config, cfg, tc, views, params, history, out, gt_mesh, gt_name, rotation)
  except _Diverged as e:
    _remove_unless_written(out, created, ckpt, drop_checkpoints=True)
    raise UserError(str(e)) from None
  except BaseException:
    _remove_unless_written(out, created, ckpt)
    raise
  metrics['seconds']['train'] = t_train
  metrics['seconds']['total'] = time.time() - t0
  metrics['identity'] = identity
  atomic.write_json(metrics_path, metrics)
  return metrics


def _mesh_and_metrics(config, cfg, tc, views, params, history, out: Path, gt_mesh: str, gt_name, rotation):
  mesh_path = out / 'mesh.ply'
  t1 = time.time()
  floor = str(config.get('mesh_floor', 'none'))
  grid = neus_mesh.sdf_grid(params, cfg, int(config.mesh_resolution), cfg.default_side_length,
                            int(config.mesh_slab), config.progress)
  vertices, faces, colors = neus_mesh.mesh_from_grid(params, cfg, grid, floor, bool(config.vertex_colors))
  unfloored = None      # with a GT mesh, the mesh before the floor is evaluated too: the prior's effect on record
  if gt_mesh and floor != 'none':
    unfloored = neus_mesh.mesh_from_grid(params, cfg, grid, 'none', colors=False)[:2]
  if len(faces) == 0:
    raise UserError('the SDF has no zero crossing inside the cube: training did not find a surface')
  if unfloored is not None:
    neus_mesh.write_ply(out / 'mesh_nofloor.ply', *unfloored)
  neus_mesh.write_ply(mesh_path, vertices, faces, colors)
  t_mesh = time.time() - t1

  final = history[-1] if history else {}
  metrics = {'input': str(config.input), 'mask_source': views.mask_source,
             'steps': tc.total_steps, 'final': final, 'history': history,
             'seconds': {'train': None, 'mesh': t_mesh},
             'mesh': {'vertices': int(len(vertices)), 'faces': int(len(faces)),
                      'resolution': int(config.mesh_resolution), 'floor': floor},
             'config': _plain(config.to_dict() if hasattr(config, 'to_dict') else config)}
  if gt_mesh:
    t2 = time.time()
    try:
      metrics['geometry'] = geometry.evaluate(mesh_path, gt_mesh, gt_name, rotation=rotation)
      metrics['geometry'].update(name=gt_name, rotation_deg=rotation)
      if unfloored is not None:
        metrics['geometry_nofloor'] = geometry.evaluate(out / 'mesh_nofloor.ply', gt_mesh, gt_name, rotation=rotation)
    except geometry.MeshError as e:
      raise UserError(f'evaluating {mesh_path}: {e}') from None
    metrics['seconds']['evaluate'] = time.time() - t2
  return metrics
