"""The PyTorch -> Flax converter: full-size key coverage, the CLI, orbax round trip, and bad input."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import parity as P
from convert import names
from convert import syncdreamer as conv
from convert import torch_io
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


def _main(*args):
  """The converter CLI's main(argv) in this process, reported as _cli reports it (tests/parity.py run_main), for
  checkpoints refused before anything is written."""
  r = P.run_main('convert.syncdreamer', args)
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
  rc, stdout, err = _cli(f'--config.ckpt={P.CKPT}', f'--config.model={P.PARITY_DIR / "config.json"}',
                         f'--config.out={out}')
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
  with pytest.raises(conv.ConversionError, match='--config.clip'):
    conv.convert(str(tmp_path / 'noclip.ckpt'), P.model_config(), progress=False)


@needs_fixtures
def test_missing_checkpoint(tmp_path):
  out = str(tmp_path / 'out')
  rc, _, err = _cli(f'--config.ckpt={tmp_path / "nope.ckpt"}', f'--config.out={out}')
  _assert_failed_cleanly(rc, err, out, 'not found', 'nope.ckpt')


@needs_fixtures
def test_a_bad_clip_file_is_the_last_line_and_a_missing_one_is_found_first(tmp_path):
  """--config.clip missing: one line, before the main checkpoint is read (no progress bar). Unreadable: the
  progress bar is closed before the error line, which is the last line (not glued to the bar)."""
  out = str(tmp_path / 'out')
  model = f'--config.model={P.PARITY_DIR / "config.json"}'
  rc, _, err = _main(f'--config.ckpt={P.CKPT}', model, f'--config.out={out}', f'--config.clip={tmp_path / "no.pt"}')
  assert rc == 2 and err == f'error: CLIP checkpoint not found: {tmp_path / "no.pt"}\n', err
  (tmp_path / 'bad.pt').write_text('not a checkpoint')
  rc, _, err = _main(f'--config.ckpt={P.CKPT}', model, f'--config.out={out}', f'--config.clip={tmp_path / "bad.pt"}')
  assert rc == 2 and err.rstrip().split('\n')[-1].startswith(f'error: CLIP checkpoint {tmp_path / "bad.pt"} is not a '
                                                              'readable PyTorch checkpoint'), err
  assert not os.path.exists(out)


@needs_fixtures
def test_truncated_checkpoint(tmp_path):
  bad = tmp_path / 'truncated.ckpt'
  bad.write_bytes(P.CKPT.read_bytes()[: 1 << 20])
  out = str(tmp_path / 'out')
  rc, _, err = _cli(f'--config.ckpt={bad}', f'--config.model={P.PARITY_DIR / "config.json"}', f'--config.out={out}')
  _assert_failed_cleanly(rc, err, out, 'not a readable PyTorch checkpoint')


@needs_fixtures
def test_not_a_syncdreamer_checkpoint(tmp_path):
  other = tmp_path / 'other.ckpt'
  torch.save({'state_dict': {'encoder.weight': torch.zeros(3, 3)}}, other)
  out = str(tmp_path / 'out')
  rc, _, err = _main(f'--config.ckpt={other}', f'--config.out={out}')
  _assert_failed_cleanly(rc, err, out, 'not a SyncDreamer checkpoint')
  garbage = tmp_path / 'garbage.ckpt'
  garbage.write_bytes(b'not a checkpoint at all' * 100)
  rc, _, err = _main(f'--config.ckpt={garbage}', f'--config.out={out}')
  _assert_failed_cleanly(rc, err, out, 'not a readable PyTorch checkpoint')


@needs_fixtures
def test_config_that_does_not_match_the_checkpoint(tmp_path):
  out = str(tmp_path / 'out')
  cfg = _tiny_config_file(tmp_path, unet__model_channels=64)
  rc, _, err = _main(f'--config.ckpt={P.CKPT}', f'--config.model={cfg}', f'--config.out={out}')
  _assert_failed_cleanly(rc, err, out, 'does not match the model config', 'mis-shaped key: model.diffusion_model.')


@needs_fixtures
def test_extra_and_missing_keys_are_named(tmp_path):
  sd = torch.load(P.CKPT, map_location='cpu', weights_only=True)['state_dict']
  sd['model.diffusion_model.extra_layer.weight'] = torch.zeros(2, 2)
  del sd['cc_projection.bias']
  bad = tmp_path / 'edited.ckpt'
  torch.save({'state_dict': sd}, bad)
  out = str(tmp_path / 'out')
  rc, _, err = _main(f'--config.ckpt={bad}', f'--config.model={P.PARITY_DIR / "config.json"}', f'--config.out={out}')
  _assert_failed_cleanly(rc, err, out, 'model.diffusion_model.extra_layer.weight', 'missing', 'cc_projection/bias')


@needs_fixtures
def test_existing_output_is_not_clobbered(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  rc, _, err = _main(f'--config.ckpt={P.CKPT}', f'--config.out={out}')
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


# --------------------------------------------------------------------------- issue 17: diagnosis, folders, child


def _error_lines(err):
  """stderr of a failed CLI run -> (the one-line message, the listed keys); nothing else may be printed."""
  lines = err.strip().splitlines()
  assert lines and lines[0].startswith('error: '), err
  assert all(line.startswith('  ') for line in lines[1:]), err
  return lines[0], lines[1:]


def _tree(path):
  """Every path under `path` (relative), or None when it does not exist: 'unchanged' is compared with this."""
  path = pathlib.Path(path)
  return sorted(str(p.relative_to(path)) for p in path.rglob('*')) if path.exists() else None


def _no_clip_ckpt(tmp_path):
  sd = torch.load(P.CKPT, map_location='cpu', weights_only=True)['state_dict']
  path = tmp_path / 'noclip.ckpt'
  torch.save({'state_dict': {k: v for k, v in sd.items() if not k.startswith(conv.CLIP_PREFIX)}}, path)
  return path


@needs_fixtures
def test_config_mismatch_is_named_with_its_likely_cause(tmp_path):
  """The tiny checkpoint with the default (full-size) config: a config mismatch, not 'missing CLIP weights'."""
  before = _tree(tmp_path)
  out = tmp_path / 'new' / 'nested' / 'out'     # its parents do not exist: the CLI must not leave them behind
  rc, stdout, err = _main(f'--config.ckpt={P.CKPT}', f'--config.out={out}', '--config.quiet=True')
  assert rc == 2, err
  line, listed = _error_lines(err)
  assert 'does not match the model config (full size)' in line
  assert 'mis-shaped keys (e.g. first_stage_model.encoder.conv_in.weight' in line
  assert line.endswith('the checkpoint looks like the tiny SyncDreamer (the demo and parity-fixture size): '
                       'pass its model config with --config.model=tiny'), line
  assert '--config.clip' not in err and 'CLIP' not in line
  n_mis = int(line.split(' mis-shaped keys')[0].rsplit(' ', 1)[1])
  n_missing = int(line.split(' missing')[0].rsplit(' ', 1)[1])
  assert n_mis > 1000
  assert sum(x.startswith('  mis-shaped key: ') for x in listed) == n_mis          # every key by name
  assert sum(x.startswith('  missing ') for x in listed) == n_missing
  assert any(x.startswith(f'  mis-shaped key: {conv.CLIP_PREFIX}conv1.weight') for x in listed)
  assert _tree(tmp_path) == before and not (tmp_path / 'new').exists()
  # The suggested fix works (`--config.model=tiny` is that same config; in-process here to save a start-up).
  conv.run(str(P.CKPT), str(out), model_config='tiny', verbose=False)
  assert checkpoint.load_config(str(out)) == P.model_config()


@needs_fixtures
def test_full_size_keys_with_the_tiny_config_point_to_the_full_size():
  """The reverse mismatch, from the real checkpoint's key manifest (no 5.6 GB file needed)."""
  manifest = json.loads(FULL_KEYS.read_text())
  shapes = {k: tuple(s) for k, s, _ in manifest['keys']}
  tiny = conv.named_model_config('tiny')
  report = conv.check_manifest(shapes.items(), tiny)
  assert report.misshaped and report.unmapped
  line = conv.mismatch_message('full.ckpt', tiny, report, shapes)
  assert line.startswith('full.ckpt does not match the model config (tiny): ')
  assert line.endswith('the checkpoint looks like the full-size SyncDreamer: pass its model config with '
                       '--config.model=full'), line     # the converter's and the sampler's spelling
  # Neither size: say so, and ask for the dims as JSON.
  other = dataclasses.replace(tiny, unet=dataclasses.replace(tiny.unet, model_channels=64))
  shapes['model.diffusion_model.input_blocks.0.0.weight'] = (64, 8, 3, 3)
  report = conv.check_manifest(shapes.items(), other)
  assert conv.mismatch_message('x.ckpt', other, report, shapes).endswith(
      'neither the full-size nor the tiny SyncDreamer: pass its dims as JSON with --config.model=PATH.json')


@needs_fixtures
def test_missing_clip_tower_suggests_clip_from_the_cli(tmp_path):
  ckpt = _no_clip_ckpt(tmp_path)
  out = tmp_path / 'a' / 'out'
  before = _tree(tmp_path)
  rc, _, err = _main(f'--config.ckpt={ckpt}', '--config.model=tiny', f'--config.out={out}', '--config.quiet=True')
  assert rc == 2
  line, listed = _error_lines(err)
  assert not listed
  assert line == (f'error: {ckpt} has no CLIP image tower (no clip_image_encoder.model.visual.* weights): '
                  'pass the OpenAI CLIP file with --config.clip=ViT-L-14.pt')
  assert _tree(tmp_path) == before


@needs_fixtures
def test_sampler_first_use_conversion_errors_are_one_line_for_the_sampler(tmp_path):
  from hv_jax.sampling import pipeline
  ckpt = tmp_path / 'tiny.ckpt'
  ckpt.write_bytes(P.CKPT.read_bytes())
  before = _tree(tmp_path)
  # No --config.model: the converter assumes the full size, which the tiny checkpoint does not fit. The cache
  # folder (--config.checkpoint_cache) lies below folders that do not exist yet: none of them may be left.
  with pytest.raises(pipeline.UserError) as e:
    pipeline.convert_cached(ckpt, None, str(tmp_path / 'cache' / 'deep' / 'tiny'), conv.convert_for_sampler)
  msg = str(e.value)
  assert '\n' not in msg
  assert msg.startswith(f'{ckpt} does not match the model config (full size): ') and ' mis-shaped keys (e.g. ' in msg
  assert msg.endswith('pass its model config with --config.model=tiny'), msg
  assert '--config.clip' not in msg                      # no flag of the converter alone
  assert _tree(tmp_path) == before            # no cache folder, no folder above it, no .convert-* folder
  # No CLIP tower: the sampler has no clip field; the message says how to convert with one. Default cache
  # (<ckpt>.hv_jax beside it): not created either.
  noclip = _no_clip_ckpt(tmp_path)
  before = _tree(tmp_path)
  with pytest.raises(pipeline.UserError) as e:
    pipeline.convert_cached(noclip, P.model_config(), None, conv.convert_for_sampler)
  assert str(e.value) == (f'{noclip} has no CLIP image tower (no clip_image_encoder.model.visual.* weights): the '
                          f'sampler cannot add one; convert it once with python -m convert.syncdreamer --config.ckpt='
                          f'{noclip} --config.clip=ViT-L-14.pt --config.out=DIR and pass --config.checkpoint=DIR')
  assert _tree(tmp_path) == before


@needs_fixtures
def test_child_process_conversion_equals_in_process(tmp_path):
  """The sampler's first-use conversion (a child process) gives exactly the in-process params, then reuses them."""
  from hv_jax.sampling import pipeline
  ckpt = tmp_path / 'tiny.ckpt'
  ckpt.write_bytes(P.CKPT.read_bytes())
  cache = tmp_path / 'new' / 'cache'
  out = pipeline.convert_cached(ckpt, P.model_config(), str(cache), conv.convert_for_sampler)
  assert out == cache
  params, config = checkpoint.load(str(out))
  assert config == P.model_config()
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, params), P.converted_params())
  assert sorted(os.listdir(cache.parent)) == ['cache']         # no temporary folder left
  mtime = (out / 'model_config.json').stat().st_mtime_ns
  assert pipeline.convert_cached(ckpt, P.model_config(), str(cache)) == out   # cached: not converted again
  assert (out / 'model_config.json').stat().st_mtime_ns == mtime


@needs_fixtures
def test_killed_child_leaves_nothing(tmp_path):
  """kill -9 of the conversion child while it writes: one line; no output, temporary or created folder remains."""
  import signal
  import threading
  out = tmp_path / 'made' / 'out'
  killed = []

  def kill_while_writing():
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
      # The child has created the folders above --out and writes the params into .convert-<its pid>-*.
      for tmp in (tmp_path / 'made').glob(conv.TMP_PREFIX + '*') if (tmp_path / 'made').is_dir() else []:
        os.kill(int(tmp.name[len(conv.TMP_PREFIX):].split('-')[0]), signal.SIGKILL)
        killed.append(tmp.name)
        break
      time.sleep(0.005)
  t = threading.Thread(target=kill_while_writing)
  t.start()
  with pytest.raises(conv.ConversionError) as e:
    conv.run_in_child(str(P.CKPT), str(out), model_config='tiny', verbose=False)
  t.join()
  assert killed
  assert str(e.value) == (f'the conversion of {P.CKPT} ended abnormally (the converter process was killed by signal '
                          f'9; out of memory?): nothing was written to {out}')
  assert _tree(tmp_path) == []


@needs_fixtures
def test_released_pages_keep_their_values(tmp_path):
  """release_pages (MADV_PAGEOUT on the memory-mapped checkpoint) is a hint: values read later are unchanged."""
  ref = torch.arange(3 * (1 << 20), dtype=torch.float32).reshape(3, -1)     # 12 MiB: thousands of whole pages
  torch.save({'state_dict': {'a': ref, 'b': ref[1]}}, tmp_path / 'big.ckpt')    # 'b' shares a's storage
  sd = torch_io.load_state_dict(str(tmp_path / 'big.ckpt'))
  assert float(sd['a'].sum()) == float(ref.sum())
  torch_io.release_pages(sd['a'])
  torch_io.release_pages(torch.zeros(1 << 20))                                    # anonymous memory: a no-op
  np.testing.assert_array_equal(sd['b'].numpy(), ref[1].numpy())
  np.testing.assert_array_equal(sd['a'].numpy(), ref.numpy())
