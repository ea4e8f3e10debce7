"""RAFT (hv_jax.metrics.raft): converter key accounting, parity with the original PyTorch RAFT, and E_flow."""
from __future__ import annotations

import pathlib

import chex
import jax
import numpy as np
import pytest
from flax import traverse_util

from convert import raft as conv
from convert.torch_io import ConversionError
from hv_jax.data import views as views_lib
from hv_jax.metrics import flow as F
from hv_jax.metrics import raft

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'raft' / 'raft_fixture.npz'


@pytest.fixture(scope='module')
def fixture():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope='module')
def state_dict(fixture):
  """The recorded run's weights, keyed as in raft-things.pth (DataParallel: `module.` prefix)."""
  return {'module.' + k: v for k, v in conv.random_state_dict(int(fixture['seed'])).items()}


@pytest.fixture(scope='module')
def params(state_dict):
  return conv.convert_state_dict(state_dict)


# ----------------------------------------------------------------------------- converter

def test_layout_is_the_checkpoint_layout():
  """179 keys / 5,261,329 elements as DataParallel(RAFT(small=False)).state_dict() (checked by record.py)."""
  layout = conv.torch_layout()
  assert len(layout) == 179
  assert sum(int(np.prod(s)) for s in layout.values()) == 5_261_329
  assert sum(k.endswith('num_batches_tracked') for k in layout) == 17
  assert sum('downsample.1.' in k for k in layout) == 10
  assert len(raft.param_shapes()) == 154
  assert layout['update_block.gru.convz1.weight'] == (128, 384, 1, 5)
  assert layout['cnet.layer3.0.downsample.1.running_var'] == (128,)


def test_converter_accounts_for_every_key(state_dict, params):
  flat = traverse_util.flatten_dict(params)
  assert {k: v.shape for k, v in flat.items()} == dict(raft.param_shapes())
  assert all(v.dtype == np.float32 for v in flat.values())
  w = state_dict['module.update_block.gru.convz1.weight']                     # OIHW [128, 384, 1, 5]
  np.testing.assert_array_equal(params['update_block']['gru']['convz1']['kernel'], w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['cnet']['layer2_0']['norm3']['var'],
                                state_dict['module.cnet.layer2.0.downsample.1.running_var'])
  # Without the prefix, and without the (allow-listed, optional) num_batches_tracked counters.
  bare = {k[len('module.'):]: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  chex.assert_trees_all_equal(conv.convert_state_dict(bare), params)


def _problems(sd):
  with pytest.raises(ConversionError) as e:
    conv.convert_state_dict(sd)
  return str(e.value)


def test_converter_names_missing_unexpected_misshaped_keys(state_dict):
  sd = dict(state_dict)
  del sd['module.fnet.layer3.1.conv2.bias']
  del sd['module.cnet.layer3.0.downsample.1.weight']
  sd['module.update_block.extra.weight'] = np.zeros((3,), np.float32)
  sd['module.update_block.mask.2.weight'] = np.zeros((64 * 9, 128, 1, 1), np.float32)
  msg = _problems(sd)
  assert '4 problems' in msg
  assert 'missing key: module.fnet.layer3.1.conv2.bias (128,)' in msg
  assert 'missing key: module.cnet.layer3.0.downsample.1.weight' in msg
  assert 'unexpected key: module.update_block.extra.weight' in msg
  assert ('mis-shaped key: module.update_block.mask.2.weight: checkpoint gives (576, 128, 1, 1), '
          'RAFT expects (576, 256, 1, 1)') in msg


def test_converter_rejects_disagreeing_aliases_and_duplicates(state_dict):
  sd = dict(state_dict)
  sd['module.cnet.layer2.0.downsample.1.bias'] = sd['module.cnet.layer2.0.downsample.1.bias'] + 1
  sd['fnet.conv1.bias'] = sd['module.fnet.conv1.bias']
  msg = _problems(sd)
  assert 'aliased keys disagree' in msg and 'module.cnet.layer2.0.downsample.1.bias' in msg
  assert 'duplicate key' in msg and 'fnet.conv1.bias' in msg


def test_load_pth_round_trip_and_bad_files(tmp_path, state_dict, params):
  torch = pytest.importorskip('torch')
  with pytest.raises(ConversionError, match='not found'):
    conv.load(str(tmp_path / 'raft-things.pth'))
  bad = tmp_path / 'corrupt.pth'
  bad.write_bytes(b'not a checkpoint')
  with pytest.raises(ConversionError, match='corrupt'):
    conv.load(str(bad))
  good = tmp_path / 'raft.pth'
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, good)
  chex.assert_trees_all_equal(conv.load(str(good)), params)


# ----------------------------------------------------------------------------- parity

def test_parity_with_original_raft(fixture, params):
  """Flax RAFT vs the original PyTorch RAFT on the recorded inputs (1 and 20 iterations, one compile).

  Tolerance: |err| <= 1e-5 * max|reference| per output (float32 through a deep net; 20 recurrent steps).
  Measured on CPU: 5.5e-6 (iter 1, max 2.0), 1.5e-5 (flow_low, max 8.0), 5.3e-5 (flow_up, max 47).
  """
  f = jax.jit(lambda p, a, b, n: raft.flow(p, a, b, n, return_low=True))
  a, b = fixture['image1'].astype(np.float32), fixture['image2'].astype(np.float32)
  tol = lambda k: 1e-5 * float(np.abs(fixture[k]).max())
  _, up1 = f(params, a, b, 1)
  chex.assert_trees_all_close(up1, fixture['flow_up_iter1'], rtol=0, atol=tol('flow_up_iter1'))
  low, up = f(params, a, b, int(fixture['iters']))
  chex.assert_trees_all_close(low, fixture['flow_low'], rtol=0, atol=tol('flow_low'))
  chex.assert_trees_all_close(up, fixture['flow_up'], rtol=0, atol=tol('flow_up'))
  assert float(np.abs(fixture['flow_up']).std()) > 1.0   # the recorded flow is far from trivial


def test_flow_rejects_bad_sizes(params):
  x = np.zeros((1, 64, 60, 3), np.float32)
  with pytest.raises(ValueError, match='divisible by 8'):
    raft.flow(params, x, x)
  with pytest.raises(ValueError, match='one shape'):
    raft.flow(params, x, x[:, :56])


# ----------------------------------------------------------------------------- E_flow

def test_composite_rgba_is_convert_to_rgb():
  rgba = np.array([[100, 50, 0, 255], [100, 50, 0, 0], [100, 50, 0, 128]], np.uint8)
  np.testing.assert_array_equal(F.composite_rgba(rgba),
                                np.array([[100, 50, 0], [255, 255, 255],
                                          [100 * (128 / 255) + 127, 50 * (128 / 255) + 127, 127]], np.float32))


def test_split_strip():
  strip = np.arange(2 * 48 * 1).reshape(2, 48, 1)
  views = views_lib.split_strip(strip)
  assert views.shape == (16, 2, 3, 1)
  np.testing.assert_array_equal(views[5], strip[:, 15:18])
  with pytest.raises(ValueError, match='not 16 equal views'):
    views_lib.split_strip(strip[:, :47])


def _views(rng, v=4, h=64, w=64):
  """Smooth random views: a low-res noise image upsampled, so RAFT sees structure."""
  small = rng.uniform(0, 255, (v, h // 8, w // 8, 4))
  return np.repeat(np.repeat(small, 8, 1), 8, 2).round().astype(np.uint8)


def test_e_flow_identical_views_is_exactly_zero(params):
  gt = _views(np.random.default_rng(0))
  gt[..., 3] = 255                               # composite on white is then exactly the RGB
  gen = np.stack([gt[..., :3], np.roll(gt[..., :3], 3, axis=2)])
  err = F.e_flow(params, gt, gen, iters=2)
  assert err.shape == (2,) and err[0] == 0.0 and err[1] > 0.0


def test_e_flow_matches_the_reference_loop(params):
  """eval_consistency.run's loop, pair by pair through raft.flow, vs the batched e_flow."""
  rng = np.random.default_rng(1)
  gt = _views(rng)
  gen = np.stack([np.roll(gt[..., :3], 2, axis=1), _views(rng)[..., :3]])
  iters = 2
  f = jax.jit(lambda a, b: raft.flow(params, a, b, iters))

  def to_rgb(img):   # convert_to_rgb on [1, 4, H, W] float, as the reference
    return img[:, :3] * (img[:, 3:] / 255) + (255 - img[:, 3:])

  def flows(views, rgba):
    views = list(views)
    views.insert(0, views[-1])
    views.append(views[1])
    out = []
    for i in range(1, len(views) - 1):
      bw, ref, fw = (np.asarray(views[j], np.float32).transpose(2, 0, 1)[None] for j in (i - 1, i, i + 1))
      if rgba:
        bw, ref, fw = to_rgb(bw), to_rgb(ref), to_rgb(fw)
      hwc = lambda t: t.transpose(0, 2, 3, 1)
      out.append((np.asarray(f(hwc(ref), hwc(fw))), np.asarray(f(hwc(ref), hwc(bw)))))
    return out

  gt_flows = flows(gt, True)
  want = []
  for inst in gen:
    err = 0.0
    for (fg, bg), (fp, bp) in zip(gt_flows, flows(inst, False)):
      err += 0.5 * (np.abs(fg - fp).mean() + np.abs(bg - bp).mean())
    want.append(err / len(gt))
  got = F.e_flow(params, gt, gen, iters=iters)
  np.testing.assert_allclose(got, want, rtol=1e-5)   # measured 5e-7
  assert min(want) > 0.01
  # one set at a time with the GT flows kept between calls (diversity studies): the same values, and the
  # GT goes through RAFT once
  cache = {}
  one_by_one = [F.e_flow(params, gt, g[None], iters=iters, gt_cache=cache)[0] for g in gen]
  np.testing.assert_allclose(one_by_one, want, rtol=1e-5)
  assert len(cache) == 1


def test_e_flow_rejects_bad_shapes(params):
  gt = np.zeros((4, 64, 64, 4), np.uint8)
  with pytest.raises(ValueError, match=r'\[V, H, W, 4\]'):
    F.e_flow(params, gt[..., :3], np.zeros((1, 4, 64, 64, 3)))
  with pytest.raises(ValueError, match='add a leading axis'):
    F.e_flow(params, gt, np.zeros((4, 64, 64, 3)))
  with pytest.raises(ValueError, match='differ'):
    F.e_flow(params, gt, np.zeros((1, 3, 64, 64, 3)))
  with pytest.raises(ValueError, match='divisible by 8'):
    F.e_flow(params, np.zeros((4, 60, 64, 4), np.uint8), np.zeros((1, 4, 60, 64, 3)))
