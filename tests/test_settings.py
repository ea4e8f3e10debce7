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
    pipeline.model_config_from(ml_collections.ConfigDict({'model': str(path)}))
  assert pipeline.model_config_from(ml_collections.ConfigDict({'model': 'tiny'})) == ModelConfig.tiny()


# ----------------------------------------------------------------------------- NeuSConfig

def test_neus_config_is_strict():
  assert isinstance(NeuSConfig.from_dict({'sdf': {'kind': 'grid', 'features': 2}}).sdf, GridSDFConfig)
  assert NeuSConfig.from_dict(NeuSConfig().to_dict()) == NeuSConfig()
  _raises(lambda: NeuSConfig.from_dict({'sdf': {'kind': 'grid', 'resolution': [8]}}), "'sdf.resolution'",
          "did you mean 'sdf.resolutions'?")
  _raises(lambda: NeuSConfig.from_dict({'n_sample': 8}), "did you mean 'n_samples'?")
  _raises(lambda: NeuSConfig.from_dict({'sdf': {'kind': 'hash'}}), "sdf.kind='hash'")
