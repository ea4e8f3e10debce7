"""PSNR / SSIM / LPIPS-VGG (hv_jax.metrics.image, hv_jax.metrics.lpips, convert/lpips.py) against the references
eval_nvs.py uses (torchmetrics SSIM, the lpips package) and against scikit-image, on real GSO views.

Images: tests/fixtures/gso/cream views 000, 005, 011 composited on white, each perturbed by a Gaussian blur, a
shift and additive noise at three growing strengths. LPIPS runs on 64x64 crops with a random, seeded VGG16 (no
download): lpips imports torchvision, which cannot be installed next to the CPU torch, so a stand-in
`torchvision.models.vgg16` that builds torchvision's `features` layout is injected while lpips is imported.
"""
from __future__ import annotations

import importlib
import pathlib
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from convert import lpips as convert_lpips
from convert import torch_io
from convert.torch_io import ConversionError
from hv_jax.metrics import image
from hv_jax.metrics import lpips as lp

GSO = pathlib.Path(__file__).parent / 'fixtures' / 'gso' / 'cream'
VIEWS = (0, 5, 11)
KINDS = {'blur': (0.5, 1.0, 2.0), 'shift': (1, 2, 4), 'noise': (0.01, 0.05, 0.2)}
CROP = (slice(150, 214), slice(50, 114))   # 64x64 crops for LPIPS: printed text in all three views

_psnr = jax.jit(image.psnr)
_ssim = jax.jit(image.ssim, static_argnames=('data_range', 'crop_border'))
_lpips = jax.jit(lp.lpips)


@jax.jit
def _ssim_variants(pred, gt):
  """eval_nvs' SSIM (data_range=None) and, sharing its window sums, data_range=1 with and without the border."""
  return (image.ssim(pred, gt), image.ssim(pred, gt, data_range=1.0),
          image.ssim(pred, gt, data_range=1.0, crop_border=True))


# -------------------------------------------------------------------------------------- torchvision stand-in

def _stub_vgg16(pretrained=False, weights=None, progress=True, **kwargs):
  """torchvision.models.vgg16 look-alike: `.features` laid out as torchvision's (31 modules), seeded weights.

  Weights ~ kaiming_normal(fan_out, relu) as torchvision initialises them; biases ~ N(0, 0.05^2) (torchvision
  zeroes them; non-zero ones exercise the bias conversion).
  """
  if pretrained or weights is not None:
    raise RuntimeError('stub torchvision has no pretrained weights (tests use pnet_rand=True)')
  gen = torch.Generator().manual_seed(1234)
  layers, c_in = [], 3
  for v in lp.VGG16_CFG:
    if v == 'M':
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      conv = torch.nn.Conv2d(c_in, v, kernel_size=3, padding=1)
      with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * np.sqrt(2. / (v * 9)))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.05)
      layers += [conv, torch.nn.ReLU(inplace=True)]
      c_in = v
  return types.SimpleNamespace(features=torch.nn.Sequential(*layers))


def _import_lpips():
  if 'lpips' in sys.modules:
    return sys.modules['lpips']
  saved = {k: sys.modules.get(k) for k in ('torchvision', 'torchvision.models')}
  tv = types.ModuleType('torchvision')
  tv.models = types.ModuleType('torchvision.models')
  tv.models.vgg16 = _stub_vgg16
  sys.modules.update({'torchvision': tv, 'torchvision.models': tv.models})
  try:
    return importlib.import_module('lpips')   # pretrained_networks keeps its own reference to the stub
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


# ------------------------------------------------------------------------------------------------------ data

def _perturb(x, kind, s, rng):
  if kind == 'blur':
    return ndimage.gaussian_filter(x, (s, s, 0))
  if kind == 'shift':   # content moves s pixels right and down; the uncovered strip repeats the edge
    return np.pad(x, ((s, 0), (s, 0), (0, 0)), mode='edge')[:x.shape[0], :x.shape[1]]
  return np.clip(x + rng.normal(0, s, x.shape), 0, 1)


@pytest.fixture(scope='module')
def data():
  """gt [3, 256, 256, 3] and pred [10, 3, 256, 256, 3]: 9 perturbations (kind x strength), then gt itself."""
  rgba = np.stack([np.asarray(Image.open(GSO / f'{i:03d}.png')) for i in VIEWS])     # [3, 256, 256, 4] uint8
  gt = np.asarray(image.composite_on_white(rgba))
  rng = np.random.default_rng(0)
  pred = [np.stack([_perturb(g, k, s, rng) for g in gt]) for k, ss in KINDS.items() for s in ss]
  pred = np.stack(pred + [gt]).astype(np.float32)
  return dict(rgba=rgba, gt=gt, pred=pred)


@pytest.fixture(scope='module')
def lpips_pair():
  """(torch lpips.LPIPS(net='vgg') with the package's real heads and a seeded random VGG, its JAX params)."""
  lpips = _import_lpips()
  model = lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True, verbose=False).eval()
  return model, jax.tree.map(jax.numpy.asarray, convert_lpips.convert_state_dicts(model.state_dict()))


@pytest.fixture(scope='module')
def metrics(data, lpips_pair):
  """All [10, 3] results, each from one jitted call with gt broadcast against pred (LPIPS on 64x64 crops)."""
  ssim, ssim_dr1, ssim_dr1_crop = _ssim_variants(data['pred'], data['gt'])
  crop = lambda x: x[..., CROP[0], CROP[1], :] * 2 - 1
  return dict(psnr=np.asarray(_psnr(data['pred'], data['gt'])), ssim=np.asarray(ssim),
              ssim_dr1=np.asarray(ssim_dr1), ssim_dr1_crop=np.asarray(ssim_dr1_crop),
              lpips=np.asarray(_lpips(lpips_pair[1], crop(data['gt']), crop(data['pred']))))


@pytest.fixture(scope='module', autouse=True)
def _torch_one_thread():
  """torch's intra-op threads fight XLA's on a small CI box (0.33 s vs 0.05 s per torchmetrics call here)."""
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


# ------------------------------------------------------------------------------------------- composite, PSNR

def _ref_color_map_forward(rgb):
  """eval_nvs.color_map_forward, verbatim."""
  rgb = rgb.astype(np.float32) / 255
  rgb, alpha = rgb[:, :, :3], rgb[:, :, 3:]
  return rgb * alpha + (1 - alpha)


def _ref_psnr(img_gt, img_pr):
  """eval_nvs.compute_psnr_float, verbatim."""
  img_gt = img_gt.reshape([-1, 3]).astype(np.float32)
  img_pr = img_pr.reshape([-1, 3]).astype(np.float32)
  mse = np.mean((img_gt - img_pr) ** 2, 0)
  mse = np.mean(mse)
  return 10 * np.log10(1 / mse)


def test_composite_on_white(data):
  for rgba, got in zip(data['rgba'], data['gt']):   # XLA's fused float32 arithmetic: 1 ulp at most
    np.testing.assert_allclose(got, _ref_color_map_forward(rgba), rtol=0, atol=1.2e-7)
  np.testing.assert_array_equal(np.asarray(image.composite_on_white(data['gt'])), data['gt'])   # RGB: unchanged
  with pytest.raises(ValueError, match='3 or 4 channels'):
    image.composite_on_white(np.zeros((4, 4, 2)))


def test_psnr_matches_skimage_and_eval_nvs(data, metrics):
  """skimage (float64) to 1e-4 dB (measured 4e-6). eval_nvs' float32 np.mean over axis 0 adds the 65536 rows
  one by one (numpy sums pairwise only along a contiguous axis), so it is itself up to ~6e-4 dB off the
  float64 value on these images: 2e-3 dB against it."""
  got = metrics['psnr']
  assert got.shape == (10, 3)
  for idx in np.ndindex(9, 3):
    p, g = data['pred'][idx], data['gt'][idx[1]]
    assert abs(got[idx] - peak_signal_noise_ratio(g, p, data_range=1.0)) < 1e-4, idx
    assert abs(got[idx] - _ref_psnr(g, p)) < 2e-3, idx
  # data_range scales the peak: x255 images with data_range=255 give the same PSNR.
  np.testing.assert_allclose(np.asarray(image.psnr(data['pred'][0] * 255, data['gt'] * 255, 255.)), got[0],
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------------------ SSIM

def test_gaussian_window_matches_torchmetrics():
  """Bit for bit at the default sigma 1.5 (and 1.0); elsewhere torch's vectorised exp may differ by 1 ulp."""
  from torchmetrics.functional.image.utils import _gaussian_kernel_2d
  for sigma in (1.5, 1.0, 2.0, 3.0):
    k = int(3.5 * sigma + 0.5) * 2 + 1
    want = _gaussian_kernel_2d(1, [k, k], [sigma, sigma], torch.float32, 'cpu')[0, 0].numpy()
    if sigma in (1.5, 1.0):
      np.testing.assert_array_equal(image.gaussian_window(sigma), want)
    else:
      np.testing.assert_allclose(image.gaussian_window(sigma), want, rtol=1e-6, atol=0)


def test_ssim_matches_torchmetrics(data, metrics):
  """eval_nvs' call, one view at a time (data_range=None), and data_range=1, over the 27 pairs.

  Measured 3e-7 worst (torch 2.13 CPU, oneDNN on AVX2): `_window_sum` adds the 121 taps in torch's order. The
  bound is 1e-4 because SSIM's E[x^2] - mu^2 cancels against C2 ~ 5e-4: any other summation order moves it by
  up to 7e-5 (torch float32 vs float64: 6.7e-5; torch without oneDNN: 8e-6 on one pair), so another CPU or
  torch build may legitimately land there. Semantic slips (border, window, data range) are >= 1e-3 or are
  pinned by the bit-exact window and SSIM(x, x) = 1 tests.
  """
  worst = {}
  for key, kw in (('ssim', {}), ('ssim_dr1', {'data_range': 1.0})):
    err = [abs(metrics[key][idx] - float(tm_ssim(_nchw(data['pred'][idx])[None], _nchw(data['gt'][idx[1]])[None],
                                                 **kw))) for idx in np.ndindex(9, 3)]
    worst[key] = max(err)
    assert worst[key] < 1e-4, (key, err)
  print(f'\nSSIM vs torchmetrics, worst abs err: {worst}')
  # (lo, hi) clamps both images first; on 40x40 crops of the noisiest case, whose values span [0, 1].
  p, g = data['pred'][8, :, 100:140, 100:140], data['gt'][:, 100:140, 100:140]
  got = np.asarray(_ssim(p, g, data_range=(0.1, 0.9)))
  want = [float(tm_ssim(_nchw(p[i])[None], _nchw(g[i])[None], data_range=(0.1, 0.9))) for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_ssim_matches_skimage_and_border_handling(data, metrics):
  """skimage (gaussian_weights, sigma 1.5, population covariance, data_range 1) averages the SSIM map without
  its 5-pixel border; so does crop_border=True (and torchmetrics before PR #2721): to 1e-4, the float32
  rounding of E[x^2] - mu^2 against C2 = 9e-4 (measured 4.7e-5; torchmetrics' float32 is as far off).
  torchmetrics 1.9.0 (crop_border=False) also averages the reflect-padded border: that moves SSIM by up to
  1.5e-2 here (either sign), so the border handling is what separates the two, not rounding."""
  gap = []
  for idx in np.ndindex(9, 3):
    want = structural_similarity(data['pred'][idx], data['gt'][idx[1]], gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, channel_axis=-1, data_range=1.0)
    assert abs(metrics['ssim_dr1_crop'][idx] - want) < 1e-4, (idx, metrics['ssim_dr1_crop'][idx] - want)
    gap.append(abs(want - metrics['ssim_dr1'][idx]))
  assert 1e-3 < max(gap) < 0.05, gap


def test_shapes_and_errors():
  with pytest.raises(ValueError, match='do not broadcast'):
    image.ssim(np.zeros((2, 8, 8, 3)), np.zeros((3, 8, 8, 3)))
  with pytest.raises(ValueError, match='one size'):
    image.psnr(np.zeros((8, 8, 3)), np.zeros((1, 8, 3)))   # would broadcast, but is not one image size
  with pytest.raises(ValueError, match='too small'):
    image.ssim(np.zeros((5, 5, 3)), np.zeros((5, 5, 3)))
  with pytest.raises(ValueError, match='one size'):
    lp.lpips({}, np.zeros((8, 8, 3)), np.zeros((8, 8, 4)))


# ----------------------------------------------------------------------------------------------------- LPIPS

def test_lpips_matches_lpips_package(data, metrics, lpips_pair):
  """Random seeded VGG16 + the package's real v0.1 heads on 64x64 crops of the 27 pairs, and one 52x36 pair
  (odd sizes after pooling, floor mode): rtol 2e-5, atol 1e-7 (measured 1.5e-6 relative, 7.5e-9 absolute)."""
  model, params = lpips_pair
  gt = data['gt'][:, CROP[0], CROP[1]] * 2 - 1
  pr = data['pred'][:9, :, CROP[0], CROP[1]] * 2 - 1
  with torch.no_grad():
    want = model(_nchw(np.broadcast_to(gt, pr.shape).reshape(-1, 64, 64, 3)),
                 _nchw(pr.reshape(-1, 64, 64, 3))).numpy().reshape(9, 3)
  got = metrics['lpips'][:9]
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-7)
  g2, p2 = data['gt'][0, 100:152, 90:126] * 2 - 1, data['pred'][4, 0, 100:152, 90:126] * 2 - 1
  got2 = np.asarray(_lpips(params, g2, p2))
  with torch.no_grad():
    want2 = model(_nchw(g2)[None], _nchw(p2)[None]).numpy().reshape(())
  chex.assert_trees_all_close(got2, want2, rtol=2e-5, atol=1e-7)
  print(f'\nLPIPS worst abs err {np.abs(got - want).max():.2e}, rel {np.max(np.abs(got - want) / want):.2e} '
        f'(values {want.min():.3f}..{want.max():.3f}); 52x36: {abs(got2 - want2):.2e}')


def test_identical_images_and_monotonic_worsening(metrics):
  assert np.all(np.isinf(metrics['psnr'][9]))
  np.testing.assert_allclose(metrics['ssim'][9], 1., rtol=0, atol=1e-6)
  np.testing.assert_allclose(metrics['lpips'][9], 0., rtol=0, atol=1e-7)
  for name, sign in (('psnr', -1), ('ssim', -1), ('lpips', 1)):
    m = metrics[name][:9].reshape(3, 3, 3)          # [kind, strength, view]
    assert np.all(sign * np.diff(m, axis=1) > 0), (name, m)
    assert np.all(sign * (m - metrics[name][9]) > 0), (name, m)   # any perturbation is worse than none


# ------------------------------------------------------------------------------------------------- converter

def _torchvision_layout(model):
  """The lpips module's VGG as a full torchvision vgg16 state dict (classifier keys as small placeholders)."""
  sd = {f'features.{k.split(".", 2)[2]}': v for k, v in model.state_dict().items() if k.startswith('net.')}
  sd.update({k: torch.zeros(2) for k in convert_lpips.TORCHVISION_UNUSED})
  return sd


def test_converter_routes_agree(lpips_pair, tmp_path):
  model, params = lpips_pair
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, lp.random_params())
  module = jax.eval_shape(lambda: lp.VGG16Features().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))['params']
  assert jax.tree.map(np.shape, params['net']) == jax.tree.map(lambda a: a.shape, module)
  heads = torch_io.load_state_dict(convert_lpips.lpips_package_heads(), what='heads')
  assert sorted(heads) == [f'lin{k}.model.1.weight' for k in range(5)]
  tv = convert_lpips.convert_state_dicts(_torchvision_layout(model), heads)
  chex.assert_trees_all_equal(tv, jax.tree.map(np.asarray, params))
  # Files: torchvision's vgg16 .pth is in torch's legacy (pre-zip) format; the CLI writes .npz.
  torch.save(_torchvision_layout(model), tmp_path / 'vgg16.pth', _use_new_zipfile_serialization=False)
  assert convert_lpips.main([f'--config.vgg={tmp_path / "vgg16.pth"}', f'--config.out={tmp_path / "p.npz"}']) == 0
  chex.assert_trees_all_equal(lp.load_npz(str(tmp_path / 'p.npz')), tv)
  torch.save(model.state_dict(), tmp_path / 'lpips.pth')
  chex.assert_trees_all_equal(convert_lpips.load(lpips_state=str(tmp_path / 'lpips.pth')), tv)


def test_converter_errors_name_the_keys(lpips_pair, tmp_path):
  model, _ = lpips_pair
  sd = dict(model.state_dict())

  def problems(*sds):
    with pytest.raises(ConversionError) as e:
      convert_lpips.convert_state_dicts(*sds)
    return str(e.value)

  msg = problems({k: v for k, v in sd.items()
                  if k not in ('net.slice2.5.bias', 'lin3.model.1.weight', 'lins.3.model.1.weight')})
  assert 'missing: features.5.bias or net.slice2.5.bias (128,)' in msg
  assert 'missing: lin3.model.1.weight (1, 512, 1, 1)' in msg
  msg = problems({**sd, 'net.slice1.5.weight': sd['net.slice2.5.weight'], 'features.1.weight': torch.zeros(1),
                  'lin5.model.1.weight': torch.zeros(1, 8, 1, 1), 'classifier.7.bias': torch.zeros(1)})
  for k in ('net.slice1.5.weight', 'features.1.weight', 'lin5.model.1.weight', 'classifier.7.bias'):
    assert f'unexpected key: {k}' in msg
  msg = problems({**sd, 'lin2.model.1.weight': torch.zeros(1, 128, 1, 1), 'net.slice5.28.weight':
                  torch.zeros(512, 512, 1, 1)})
  assert ('mis-shaped key: lin2.model.1.weight: checkpoint gives (1, 128, 1, 1), LPIPS-VGG expects '
          '(1, 256, 1, 1)') in msg
  assert 'mis-shaped key: net.slice5.28.weight' in msg and 'missing' not in msg
  assert 'aliased keys disagree: lins.1.model.1.weight != lin1.model.1.weight' in problems(
      {**sd, 'lins.1.model.1.weight': sd['lin1.model.1.weight'] + 1})
  msg = problems(sd, {'features.0.weight': sd['net.slice1.0.weight']})
  assert 'duplicate: features.0.weight and net.slice1.0.weight' in msg
  bad = sd['net.slice3.10.weight'].clone()
  bad[0, 0, 0, 0] = float('nan')
  assert 'non-finite values in net.slice3.10.weight' in problems({**sd, 'net.slice3.10.weight': bad})
  assert 'scaling_layer.shift' in problems({**sd, 'scaling_layer.shift': sd['scaling_layer.shift'] * 2})
  # Files.
  with pytest.raises(ConversionError, match='not found'):
    convert_lpips.load(vgg=str(tmp_path / 'nope.pth'))
  (tmp_path / 'bad.pth').write_bytes(b'\x00not a checkpoint')
  with pytest.raises(ConversionError, match='corrupt'):
    convert_lpips.load(lpips_state=str(tmp_path / 'bad.pth'))
  with pytest.raises(ConversionError, match='either vgg= .* or lpips_state='):
    convert_lpips.load()
  np.savez(tmp_path / 'p.npz', **{'lin0/kernel': np.zeros((1, 1, 64, 1), np.float32)})
  with pytest.raises(ConversionError, match='missing: net/features_0/kernel'):
    lp.load_npz(str(tmp_path / 'p.npz'))
