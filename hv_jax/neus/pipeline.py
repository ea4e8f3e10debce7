"""`python -m hv_jax.reconstruct`: 16 views -> NeuS -> DIR/mesh.ply + DIR/metrics.json.

Order of work, so that bad input loses nothing and leaves nothing partial:
1. config and input are checked (ViewsError / ValueError -> UserError, one line), the output folder is
   created and tested for writing;
2. training runs with orbax checkpoints in DIR/checkpoints (a rerun resumes there);
3. the mesh and metrics are written atomically (temporary file + rename), mesh first, metrics last: a
   finished output is one with metrics.json. A rerun of a finished output does nothing unless overwrite.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import jax
import numpy as np

from hv_jax import atomic
from hv_jax.neus import data as neus_data
from hv_jax.neus import mesh as neus_mesh
from hv_jax.neus import train
from hv_jax.neus.fields import NeuSConfig


class UserError(Exception):
  """A problem the user can fix (input, config, output folder); the message is one line."""


def _plain(x):
  if hasattr(x, 'to_dict'):
    x = x.to_dict()
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def configs_from(config) -> Tuple[NeuSConfig, train.TrainConfig, train.LoopConfig]:
  try:
    cfg = NeuSConfig.from_dict(_plain(config.neus))
    tc = train.TrainConfig(**_plain(config.train))
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
  except (TypeError, ValueError) as e:
    raise UserError(f'bad config: {e}') from None
  return cfg, tc, lc


def _prepare_output(out: Path) -> None:
  try:
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix='.probe-')
    os.close(fd)
    os.unlink(tmp)
  except OSError as e:
    raise UserError(f'output folder {out} is not writable ({e.strerror or e})') from None


def run(config) -> Dict[str, Any]:
  """Runs one reconstruction; returns the metrics dict (also in DIR/metrics.json)."""
  if not config.input:
    raise UserError('no input: pass --config.input=PATH (a 256x4096 strip or a folder of 16 views)')
  cfg, tc, lc = configs_from(config)
  try:
    views = neus_data.load_views(config.input)
  except neus_data.ViewsError as e:
    raise UserError(str(e)) from None
  gt_mesh = str(config.gt_mesh or '')
  if gt_mesh and not os.path.isfile(gt_mesh):
    raise UserError(f'gt_mesh {gt_mesh}: no such file')

  out = Path(config.output_dir)
  metrics_path, mesh_path = out / 'metrics.json', out / 'mesh.ply'
  if metrics_path.exists() and mesh_path.exists() and not config.overwrite:
    print(f'{out}: already reconstructed (metrics.json exists); --config.overwrite=True redoes it')
    return json.loads(metrics_path.read_text())
  _prepare_output(out)
  ckpt = out / 'checkpoints'
  if config.overwrite and ckpt.exists():
    shutil.rmtree(ckpt)

  print(f'neus: {config.input} ({views.mask_source} masks), {tc.total_steps} steps of '
        f'{lc.batch_num}+{lc.fg_num} rays, {type(cfg.sdf).__name__}, on {jax.devices()[0].platform}')
  t0 = time.time()
  data = neus_data.ray_dataset(views)
  params, history = train.fit(data, cfg, tc, lc, checkpoint_dir=str(ckpt), progress=config.progress)
  t_train = time.time() - t0

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
             'seconds': {'train': t_train, 'mesh': t_mesh},
             'mesh': {'vertices': int(len(vertices)), 'faces': int(len(faces)),
                      'resolution': int(config.mesh_resolution), 'floor': floor},
             'config': _plain(config.to_dict() if hasattr(config, 'to_dict') else config)}
  if gt_mesh:
    from hv_jax.metrics import geometry
    name = config.gt_name or Path(config.input).name
    t2 = time.time()
    metrics['geometry'] = geometry.evaluate(mesh_path, gt_mesh, name)
    metrics['geometry']['name'] = name
    if unfloored is not None:
      metrics['geometry_nofloor'] = geometry.evaluate(out / 'mesh_nofloor.ply', gt_mesh, name)
    metrics['seconds']['evaluate'] = time.time() - t2
  metrics['seconds']['total'] = time.time() - t0
  atomic.write_json(metrics_path, metrics)
  return metrics
