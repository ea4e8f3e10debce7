"""The PyTorch -> Flax converter: full-size key coverage, the CLI, orbax round trip, and bad input."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import traverse_util

import parity as P
from convert import names
from convert import syncdreamer as conv
from hv_jax import checkpoint
from hv_jax.models.config import ModelConfig

FULL_KEYS = pathlib.Path(__file__).parent / 'fixtures' / 'full_keys.json'


def test_full_size_manifest_is_covered_exactly():
  """Every key of the real 1618-key checkpoint maps onto the eval_shape'd full-size tree, or is allow-listed."""
  manifest = json.loads(FULL_KEYS.read_text())
  keys = [(k, tuple(shape)) for k, shape, _ in manifest['keys']]
  assert len(keys) == manifest['num_keys']
  report = conv.check_manifest(keys, ModelConfig.full())
  assert report.ok, report.problems()
  assert report.converted + len(report.unused) == len(keys)
  n_params = sum(int(np.prod(s)) for s, _ in conv.target_shapes(ModelConfig.full()).values())
  n_unused = sum(int(np.prod(s)) for k, s in keys if names.allowed_unused(k))
  assert n_params + n_unused == manifest['num_elements']
  # The allow-list is narrow: only schedule buffers and CLIP's text-side leftovers.
  assert {k for k, _ in report.unused} == {
      'betas', 'alphas', 'alphas_cumprod', 'sqrt_alphas_cumprod', 'sqrt_one_minus_alphas_cumprod',
      'posterior_variance', 'posterior_log_variance_clipped', 'clip_image_encoder.model.positional_embedding',
      'clip_image_encoder.model.text_projection', 'clip_image_encoder.model.logit_scale',
      'clip_image_encoder.model.token_embedding.weight', 'clip_image_encoder.model.ln_final.weight',
      'clip_image_encoder.model.ln_final.bias'}


def test_mapping_table_examples():
  assert names.map_key('model.diffusion_model.input_blocks.1.0.in_layers.2.weight', 4) == (
      ('unet', 'input_blocks_1_0', 'in_layers_2', 'kernel'), 'conv2d')
  assert names.map_key('spatial_volume.spatial_volume_feats.conv7.conv.weight', 5) == (
      ('spatial_volume', 'spatial_volume_feats', 'conv7', 'conv', 'kernel'), 'conv_transpose3d')
  assert names.map_key('spatial_volume.frustum_volume_feats.conv1.conv.weight', 5)[1] == 'conv3d'
  assert names.map_key('clip_image_encoder.model.visual.transformer.resblocks.0.attn.in_proj_weight', 2) == (
      ('clip', 'transformer', 'resblocks_0', 'attn', 'in_proj', 'kernel'), 'linear')
  assert names.map_key('first_stage_model.encoder.norm_out.weight', 1) == (
      ('vae', 'encoder', 'norm_out', 'scale'), 'identity')
  assert names.map_key('cc_projection.weight', 2) == (('cc_projection', 'kernel'), 'linear')
  assert names.map_key('visual.proj', 2, names.CLIP_FILE_PREFIXES) == (('clip', 'proj'), 'identity')


def test_layout_transforms_match_their_shape_rules():
  rng = np.random.default_rng(0)
  for name, shape in [('linear', (3, 5)), ('conv2d', (2, 3, 4, 5)), ('conv3d', (2, 3, 4, 5, 6)),
                      ('conv_transpose3d', (2, 3, 4, 5, 6)), ('identity', (7,))]:
    assert names.TRANSFORMS[name](rng.normal(size=shape)).shape == names.TRANSFORM_SHAPES[name](shape)


# --------------------------------------------------------------------------- with torch: the real files

try:
  import torch
except ImportError:  # the manifest and mapping tests above still run
  torch = None
needs_fixtures = pytest.mark.skipif(
    torch is None or not P.available(),
    reason='needs torch (pip install torch==2.13.0) and parity fixtures in ' + str(P.PARITY_DIR))


def _cli(*args):
  """Runs the converter CLI in a subprocess; returns (returncode, stdout, stderr)."""
  env = dict(os.environ, PYTHONPATH=str(P.ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  r = subprocess.run([sys.executable, '-m', 'convert.syncdreamer', *args], capture_output=True, text=True,
                     cwd=P.ROOT, env=env, timeout=600)
  return r.returncode, r.stdout, r.stderr


def _tiny_config_file(tmp_path, **overrides):
  d = P.config_json()['tiny']
  for k, v in overrides.items():
    d = json.loads(json.dumps(d))
    sect, field = k.split('__')
    d[sect][field] = v
  path = tmp_path / 'tiny.json'
  path.write_text(json.dumps(d))
  return str(path)


def _assert_failed_cleanly(rc, err, out_dir, *needles):
  assert rc != 0
  assert 'Traceback' not in err, err
  assert any(line.startswith('error: ') for line in err.splitlines()), err
  for n in needles:
    assert n in err, err
  assert not os.path.exists(out_dir)
  leftovers = [p for p in os.listdir(os.path.dirname(out_dir)) if p.startswith('.convert-')]
  assert not leftovers


@needs_fixtures
def test_cli_converts_and_restores(tmp_path):
  out = tmp_path / 'ckpt'
  rc, stdout, err = _cli('--ckpt', str(P.CKPT), '--model-config', str(P.PARITY_DIR / 'config.json'),
                         '--out', str(out))
  assert rc == 0, err
  assert 'unused on purpose' in stdout and 'betas' in stdout
  meta = json.loads((out / 'conversion.json').read_text())
  assert len(meta['source']['ckpt_sha256']) == 64
  params, config = checkpoint.load(str(out))
  assert config == P.model_config()
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, params), P.converted_params())
  # Restoring onto an explicit sharding (replicated over a 1-axis mesh of all local devices).
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded, _ = checkpoint.load(str(out), sharding=rep)
  leaf = sharded['unet']['out_2']['kernel']
  assert leaf.sharding == rep
  # A config that differs from the stored one is refused.
  with pytest.raises(checkpoint.CheckpointError, match='does not match'):
    checkpoint.load(str(out), config=ModelConfig.full())


@needs_fixtures
def test_separate_openai_clip_file(tmp_path):
  """A .ckpt without the CLIP tower + an OpenAI-layout CLIP file (visual.* and text keys) converts the same."""
  sd = torch.load(P.CKPT, map_location='cpu', weights_only=True)['state_dict']
  clip_prefix = 'clip_image_encoder.model.'
  no_clip = {k: v for k, v in sd.items() if not k.startswith(clip_prefix)}
  openai = {k[len(clip_prefix):]: v for k, v in sd.items() if k.startswith(clip_prefix)}
  openai['transformer.resblocks.0.attn.in_proj_weight'] = torch.zeros(3 * 64, 64)
  openai['input_resolution'] = torch.tensor(224)
  torch.save({'state_dict': no_clip}, tmp_path / 'noclip.ckpt')
  torch.save(openai, tmp_path / 'clip.pt')
  params, report = conv.convert(str(tmp_path / 'noclip.ckpt'), P.model_config(), clip=str(tmp_path / 'clip.pt'),
                                progress=False)
  chex.assert_trees_all_equal(params, P.converted_params())
  assert any(k == 'transformer.resblocks.0.attn.in_proj_weight' for k, _ in report.unused)
  with pytest.raises(conv.ConversionError, match='--clip'):
    conv.convert(str(tmp_path / 'noclip.ckpt'), P.model_config(), progress=False)


@needs_fixtures
def test_missing_checkpoint(tmp_path):
  out = str(tmp_path / 'out')
  rc, _, err = _cli('--ckpt', str(tmp_path / 'nope.ckpt'), '--out', out)
  _assert_failed_cleanly(rc, err, out, 'not found', 'nope.ckpt')


@needs_fixtures
def test_truncated_checkpoint(tmp_path):
  bad = tmp_path / 'truncated.ckpt'
  bad.write_bytes(P.CKPT.read_bytes()[: 1 << 20])
  out = str(tmp_path / 'out')
  rc, _, err = _cli('--ckpt', str(bad), '--model-config', str(P.PARITY_DIR / 'config.json'), '--out', out)
  _assert_failed_cleanly(rc, err, out, 'not a readable PyTorch checkpoint')


@needs_fixtures
def test_not_a_syncdreamer_checkpoint(tmp_path):
  other = tmp_path / 'other.ckpt'
  torch.save({'state_dict': {'encoder.weight': torch.zeros(3, 3)}}, other)
  out = str(tmp_path / 'out')
  rc, _, err = _cli('--ckpt', str(other), '--out', out)
  _assert_failed_cleanly(rc, err, out, 'not a SyncDreamer checkpoint')
  garbage = tmp_path / 'garbage.ckpt'
  garbage.write_bytes(b'not a checkpoint at all' * 100)
  rc, _, err = _cli('--ckpt', str(garbage), '--out', out)
  _assert_failed_cleanly(rc, err, out, 'not a readable PyTorch checkpoint')


@needs_fixtures
def test_config_that_does_not_match_the_checkpoint(tmp_path):
  out = str(tmp_path / 'out')
  cfg = _tiny_config_file(tmp_path, unet__model_channels=64)
  rc, _, err = _cli('--ckpt', str(P.CKPT), '--model-config', cfg, '--out', out)
  _assert_failed_cleanly(rc, err, out, 'does not match the model config', 'mis-shaped key: model.diffusion_model.')


@needs_fixtures
def test_extra_and_missing_keys_are_named(tmp_path):
  sd = torch.load(P.CKPT, map_location='cpu', weights_only=True)['state_dict']
  sd['model.diffusion_model.extra_layer.weight'] = torch.zeros(2, 2)
  del sd['cc_projection.bias']
  bad = tmp_path / 'edited.ckpt'
  torch.save({'state_dict': sd}, bad)
  out = str(tmp_path / 'out')
  rc, _, err = _cli('--ckpt', str(bad), '--model-config', str(P.PARITY_DIR / 'config.json'), '--out', out)
  _assert_failed_cleanly(rc, err, out, 'model.diffusion_model.extra_layer.weight', 'missing', 'cc_projection/bias')


@needs_fixtures
def test_existing_output_is_not_clobbered(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  rc, _, err = _cli('--ckpt', str(P.CKPT), '--out', str(out))
  assert rc != 0 and 'exists' in err and 'Traceback' not in err
  assert (out / 'keep.txt').read_text() == 'mine'


def test_importing_hv_jax_does_not_import_torch():
  code = ('import sys, hv_jax, hv_jax.models.syncdreamer, hv_jax.checkpoint, hv_jax.sampling.guidance; '
          'assert "torch" not in sys.modules, "torch imported"')
  env = dict(os.environ, PYTHONPATH=str(P.ROOT))
  subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=P.ROOT, timeout=300)


def test_missing_checkpoint_dir_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='not found'):
    checkpoint.load(str(tmp_path / 'nothing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(checkpoint.CheckpointError, match='convert.syncdreamer'):
    checkpoint.load(str(tmp_path / 'empty'))
