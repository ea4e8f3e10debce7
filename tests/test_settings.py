"""Strict settings dataclasses (hv_jax.settings.from_dict) and the model config's lowering fields."""
from __future__ import annotations

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

import parity as P
from hv_jax import settings
from hv_jax.errors import UserError
from hv_jax.models import layers
from hv_jax.models.config import (BACKEND_LOWERING, LITERAL, ORIGINAL_KEYS, TUNED, CLIPModelConfig, Lowering,
                                  ModelConfig)
from hv_jax.neus.fields import GridSDFConfig, NeuSConfig
from hv_jax.sampling import pipeline


def _raises(fn, *parts):
  with pytest.raises(settings.SettingsError) as e:
    fn()
  for part in parts:
    assert part in str(e.value), str(e.value)
  return str(e.value)


# ----------------------------------------------------------------------------- the generic reader

def test_unknown_keys_are_named_with_their_path_and_the_closest_field():
  msg = _raises(lambda: ModelConfig.from_dict({'unet': {'model_chanels': 32}}), "'unet.model_chanels'", 'UNetConfig',
                "did you mean 'unet.model_channels'?")
  assert msg.startswith('ModelConfig: ')
  _raises(lambda: ModelConfig.from_dict({'colour': 1}), "unknown key 'colour'", "ModelConfig's fields are")
  _raises(lambda: ModelConfig.from_dict({'vae': 3}), "'vae'", 'expected a dict of VAEConfig fields')
  _raises(lambda: CLIPModelConfig.from_dict({'vision': {'widht': 8}}), "'vision.widht'", 'CLIPConfig')


def test_lists_become_tuples_and_nested_blocks_dataclasses():
  c = settings.from_dict(ModelConfig, {'unet': {'channel_mult': [1, 2]}, 'clip': {'mean': [0, 0, 0]}})
  assert c.unet.channel_mult == (1, 2) and c.clip.mean == (0, 0, 0)
  assert hash(c) == hash(dataclasses.replace(c))      # still hashable: a jit static argument


# ----------------------------------------------------------------------------- ModelConfig

def test_the_parity_configs_read_back_as_the_named_sizes():
  """The fixtures' "tiny" block (the original's layout) is ModelConfig.tiny(); the full-size one full()."""
  cj = json.loads((P.PARITY_DIR / 'config.json').read_text())
  assert ModelConfig.from_dict(cj['tiny']) == ModelConfig.tiny()
  assert ModelConfig.from_dict(cj['full_size_reference']) == ModelConfig.full()
  assert set(cj['tiny']) - {f.name for f in dataclasses.fields(ModelConfig)} <= {'spatial_volume', 'latent_size'}


def test_original_keys_are_checked_not_dropped():
  tiny = json.loads((P.PARITY_DIR / 'config.json').read_text())['tiny']
  for path, value in [('vae.attn_resolutions', [4]), ('unet.legacy', True), ('latent_size', 16),
                      ('spatial_volume.spatial_net_input_dim', 100)]:
    block, key = path.split('.') if '.' in path else (None, path)
    d = json.loads(json.dumps(tiny))
    (d[block] if block else d)[key] = value
    _raises(functools.partial(ModelConfig.from_dict, d), f"={value!r} is not supported")
  assert all(len(v) == 2 and v[0] for v in ORIGINAL_KEYS.values())   # each has its reason


def test_round_trip_and_what_a_checkpoint_records():
  for c in (ModelConfig.full(), ModelConfig.tiny(), ModelConfig.tiny().with_lowering('xla', 'fast')):
    assert ModelConfig.from_json(c.to_json()) == c
  # 'auto' is not written: a model_config.json from before the lowering fields reads the same, and a
  # checkpoint or a manifest (architecture()) never depends on the lowering.
  assert 'conv_impl' not in ModelConfig.tiny().to_dict()
  assert ModelConfig.tiny().with_lowering('xla', 'reference').architecture().to_json() == ModelConfig.tiny().to_json()


def test_the_lowering_resolves_per_backend():
  assert ModelConfig().lowering('cpu') == TUNED == Lowering('tuned', 'fast')
  assert ModelConfig().lowering('gpu') == Lowering(*BACKEND_LOWERING['gpu'])
  assert ModelConfig(conv_impl='xla').lowering('cpu') == Lowering('xla', 'fast')
  assert ModelConfig(conv_impl='tuned', attn_impl='reference').lowering('tpu') == Lowering('tuned', 'reference')
  assert ModelConfig(conv_impl='xla', attn_impl='reference').lowering() == LITERAL
  with pytest.raises(ValueError, match='conv_impl'):
    ModelConfig(conv_impl='im2col')
  with pytest.raises(ValueError, match='attention lowering'):
    Lowering(attn='flash')


def test_the_lowering_is_in_the_module_and_the_jit_key():
  """A lowering is a static module field: a different one is a different trace (no stale compiled function),
  and it changes the ops, not the params."""
  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def one_by_one(lowering, x):
    traces.append(lowering)
    conv = layers.conv(3, 1, lowering=lowering)
    params = conv.init(jax.random.key(0), x)
    return conv.apply(params, x), params

  x = jnp.ones((1, 4, 4, 2))
  (y_t, p_t), (y_x, p_x) = one_by_one(TUNED, x), one_by_one(LITERAL, x)
  assert traces == [TUNED, LITERAL]
  assert jax.tree.map(jnp.shape, p_t) == jax.tree.map(jnp.shape, p_x)
  chex.assert_trees_all_close(y_t, y_x, atol=1e-6, rtol=0)        # same params (same key): same sums
  jaxpr = lambda lw: str(jax.make_jaxpr(lambda x: layers.conv(3, 1, lowering=lw).init_with_output(
      jax.random.key(0), x))(x))
  assert 'conv_general_dilated' in jaxpr(LITERAL) and 'conv_general_dilated' not in jaxpr(TUNED)


def test_a_model_config_file_with_a_typo_is_a_user_error(tmp_path):
  d = ModelConfig.tiny().to_dict()
  d['unet']['num_head'] = 4
  path = tmp_path / 'model.json'
  path.write_text(json.dumps(d))
  with pytest.raises(UserError, match="did you mean 'unet.num_heads'"):
    pipeline.model_config_from(str(path))
  assert pipeline.model_config_from('tiny') == ModelConfig.tiny()


# ----------------------------------------------------------------------------- NeuSConfig

def test_neus_config_is_strict():
  assert isinstance(NeuSConfig.from_dict({'sdf': {'kind': 'grid', 'features': 2}}).sdf, GridSDFConfig)
  assert NeuSConfig.from_dict(NeuSConfig().to_dict()) == NeuSConfig()
  _raises(lambda: NeuSConfig.from_dict({'sdf': {'kind': 'grid', 'resolution': [8]}}), "'sdf.resolution'",
          "did you mean 'sdf.resolutions'?")
  _raises(lambda: NeuSConfig.from_dict({'n_sample': 8}), "did you mean 'n_samples'?")
  _raises(lambda: NeuSConfig.from_dict({'sdf': {'kind': 'hash'}}), "sdf.kind='hash'")


# ----------------------------------------------------------------------------- the commands' settings

def _command_settings():
  import sys
  sys.path.insert(0, str(P.ROOT))      # convert/ and experiments/ of the checkout
  from convert import lpips as convert_lpips
  from convert import syncdreamer as convert_syncdreamer
  from experiments import diversity, report
  from hv_jax import app, estimate_elevation, evaluate, evaluate_mesh, matte
  from hv_jax.neus import pipeline as neus_pipeline
  from hv_jax.pipeline import image_to_3d
  return (pipeline.SampleSettings, neus_pipeline.ReconstructSettings, diversity.StudySettings,
          evaluate.EvaluateSettings, evaluate_mesh.MeshEvalSettings, report.ReportSettings,
          convert_syncdreamer.ConvertSettings, convert_lpips.ConvertSettings, image_to_3d.ImageTo3DSettings,
          estimate_elevation.ElevationSettings, matte.MatteSettings, app.AppSettings)


def test_config_dict_is_the_dataclass_defaults_and_reads_back():
  """A command's default config (and the start of every config file) is its settings dataclass's defaults:
  nested blocks as ConfigDicts, tuples kept, None as a typed placeholder; from_dict reads it back unchanged."""
  for cls in _command_settings():
    c = settings.config_dict(cls)
    assert isinstance(c, ml_collections.ConfigDict)
    assert settings.from_dict(cls, c.to_dict()) == cls(), cls.__name__
  from hv_jax.neus.pipeline import ReconstructSettings
  c = settings.config_dict(ReconstructSettings)
  assert c.neus.sdf.kind == 'mlp' and c.neus.sdf.skip_in == (4,)
  c.gt_rotation = 30.0                  # a placeholder takes a value of its type
  c.neus = settings.config_dict(NeuSConfig(sdf=GridSDFConfig()))
  s = settings.from_dict(ReconstructSettings, c.to_dict())
  assert s.gt_rotation == 30.0 and isinstance(s.neus.sdf, GridSDFConfig)
  _raises(lambda: settings.from_dict(ReconstructSettings, {'neus': {'sdf': {'kind': 'grid', 'featurs': 2}}}),
          "ReconstructSettings: unknown key 'neus.sdf.featurs'", "did you mean 'neus.sdf.features'?")
  assert 'views per VAE-decoder call' in settings.field_docs(pipeline.SampleSettings)['decode_chunk']


def test_config_files_load_by_path_from_any_folder(tmp_path, monkeypatch):
  """configs/*.py and experiments/configs/*.py import hv_jax (and experiments) only: they load by path with
  another working folder, and each gives a valid settings dataclass."""
  from hv_jax import cli
  classes = {c.__name__: c for c in _command_settings()}
  kinds = {'neus': 'ReconstructSettings', 'neus_fast': 'ReconstructSettings', 'evaluate': 'EvaluateSettings',
           'demo_sweep': 'StudySettings', 'scale_sweep': 'StudySettings', 'image_to_3d': 'ImageTo3DSettings',
           'image_to_3d_demo': 'ImageTo3DSettings', 'app': 'AppSettings'}
  monkeypatch.chdir(tmp_path)
  paths = sorted(P.ROOT.glob('configs/*.py')) + sorted(P.ROOT.glob('experiments/configs/*.py'))
  for path in (p for p in paths if p.name != '__init__.py'):
    assert 'from configs' not in path.read_text() and 'import configs' not in path.read_text(), path
    cls = classes[kinds.get(path.stem, 'SampleSettings')]
    assert isinstance(settings.from_dict(cls, cli.load_config(path).to_dict()), cls), path


def test_a_reconstruction_of_an_older_version_matches_by_value():
  """metrics.json written when configs/neus_fast.py named only some fields (neus.sdf as {kind, resolutions, ...})
  is the same settings as today's full record: `resolved_identity` compares values, not spellings."""
  from hv_jax import cli
  from hv_jax.neus import pipeline as neus_pipeline
  now = settings.from_dict(neus_pipeline.ReconstructSettings,
                           cli.load_config(P.ROOT / 'configs' / 'neus_fast.py').to_dict())
  old = {'seed': 6033, 'neus': {'sdf': {'kind': 'grid', 'resolutions': [32, 64, 128], 'features': 4,
                                        'd_hidden': 64, 'n_layers': 2, 'd_out': 16},
                                'color': {'d_feature': 15, 'd_hidden': 64, 'n_layers': 2, 'multires_view': 4,
                                          'weight_norm': False},
                                'n_samples': 24, 'n_importance': 24, 'up_sample_steps': 2, 'anneal_end': 200,
                                'lambda_rgb_loss': 0.5, 'lambda_mask_loss': 1.0, 'lambda_eikonal_loss': 0.1,
                                'clip_to_cube': True},
         'train': {'base_lr': 1e-3, 'total_steps': 800, 'warm_up_steps': 50, 'use_warm_up': True,
                   'grid_lr_scale': 20.0, 'decay_interval': 800, 'chunks': 1},
         'batch_num': 768, 'fg_num': 256, 'log_every': 10, 'mesh_resolution': 256, 'vertex_colors': True,
         'mesh_floor': 'mirror_top'}
  stored = {'input_sha256': {'strip': 'x'}, 'config': old}
  assert neus_pipeline.resolved_identity(stored) == {'input_sha256': {'strip': 'x'}, 'config': now.identity()}
  old['train']['base_lr'] = 2e-3
  assert neus_pipeline.resolved_identity(stored)['config'] != now.identity()
