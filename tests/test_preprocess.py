"""Input preparation: exact parity with the original's `prepare_inputs`, clear errors on bad inputs, input discovery."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hv_jax
from hv_jax.data.preprocess import (InputError, check_elevation, find_inputs, load_rgba, prepare_image,
                                    prepare_inputs)

DEMO_DIR = Path(hv_jax.__file__).parent / 'assets' / 'demo'
DEMO = DEMO_DIR / 'bell' / '000.png'


# ---- transcription of the original (HarmonyView ldm/util.py add_margin / prepare_inputs), torch removed ----
def _ref_add_margin(pil_img, color=0, size=256):
  width, height = pil_img.size
  result = Image.new(pil_img.mode, (size, size), color)
  result.paste(pil_img, ((size - width) // 2, (size - height) // 2))
  return result


def _ref_prepare_inputs(image_path, elevation_input, crop_size=-1, image_size=256):
  image_input = Image.open(image_path)

  if crop_size != -1:
    alpha_np = np.asarray(image_input)[:, :, 3]
    coords = np.stack(np.nonzero(alpha_np), 1)[:, (1, 0)]
    min_x, min_y = np.min(coords, 0)
    max_x, max_y = np.max(coords, 0)
    ref_img_ = image_input.crop((min_x, min_y, max_x, max_y))
    h, w = ref_img_.height, ref_img_.width
    scale = crop_size / max(h, w)
    h_, w_ = int(scale * h), int(scale * w)
    ref_img_ = ref_img_.resize((w_, h_), resample=Image.BICUBIC)
    image_input = _ref_add_margin(ref_img_, size=image_size)
  else:
    image_input = _ref_add_margin(image_input, size=max(image_input.height, image_input.width))
    image_input = image_input.resize((image_size, image_size), resample=Image.BICUBIC)

  image_input = np.asarray(image_input)
  image_input = image_input.astype(np.float32) / 255.0
  ref_mask = image_input[:, :, 3:]
  image_input[:, :, :3] = image_input[:, :, :3] * ref_mask + 1 - ref_mask  # white background
  image_input = image_input[:, :, :3] * 2.0 - 1.0
  image_input = image_input.astype(np.float32)
  elevation_input = np.asarray([np.deg2rad(elevation_input)], np.float32)
  return {"input_image": image_input, "input_elevation": elevation_input}
# -------------------------------------------------------------------------------------------------------------


def _synthetic_rgba(w=301, h=187, seed=0):
  """Non-square RGBA: random colours, soft elliptical mask off-centre (partial alpha at the rim)."""
  rng = np.random.default_rng(seed)
  rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  yy, xx = np.mgrid[:h, :w]
  r = np.sqrt(((xx - 0.6 * w) / (0.3 * w)) ** 2 + ((yy - 0.45 * h) / (0.35 * h)) ** 2)
  alpha = np.clip((1.0 - r) * 4.0, 0, 1) * 255
  return Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), 'RGBA')


@pytest.fixture
def synthetic_png(tmp_path):
  p = tmp_path / 'synthetic.png'
  _synthetic_rgba().save(p)
  return p


def _check_parity(path, crop_size, image_size=256, elevation=30.0):
  ref = _ref_prepare_inputs(path, elevation, crop_size=crop_size, image_size=image_size)
  out = prepare_inputs(path, elevation, crop_size=crop_size, image_size=image_size)
  assert out['input_image'].dtype == np.float32 and out['input_image'].shape == (image_size, image_size, 3)
  np.testing.assert_array_equal(out['input_image'], ref['input_image'])
  assert out['input_elevation'].dtype == np.float32 and out['input_elevation'].shape == (1,)
  np.testing.assert_array_equal(out['input_elevation'], ref['input_elevation'])
  return out['input_image']


def test_demo_asset_bundled():
  img = Image.open(DEMO)
  assert img.mode == 'RGBA' and img.size == (256, 256)
  text = (DEMO_DIR / 'ATTRIBUTION.md').read_text()
  for frag in ('Google Scanned Objects', 'CC BY 4.0', '2020 Google LLC', 'bell'):
    assert frag in text


@pytest.mark.parametrize('crop_size', [-1, 200])
def test_parity_demo(crop_size):
  x = _check_parity(DEMO, crop_size)
  assert x.min() >= -1.0 and x.max() <= 1.0
  assert (x == 1.0).all(-1).mean() > 0.3   # white background around the object


@pytest.mark.parametrize('crop_size', [-1, 200, 97, 256])
def test_parity_synthetic_non_square(synthetic_png, crop_size):
  _check_parity(synthetic_png, crop_size)


def test_parity_other_image_size(synthetic_png):
  _check_parity(synthetic_png, -1, image_size=128)
  _check_parity(synthetic_png, 100, image_size=128)


def test_crop_drops_last_mask_row_and_column():
  """The original crops to (min_x, min_y, max_x, max_y): PIL excludes max_x/max_y (quirk kept)."""
  a = np.zeros((64, 64, 4), np.uint8)
  a[10:31, 20:41] = 255              # 21x21 opaque square: bbox min 10/20, max 30/40
  a[10:31, 20:41, :3] = (255, 0, 0)
  x = prepare_image(Image.fromarray(a, 'RGBA'), crop_size=20, image_size=64)
  red = (x[..., 0] > 0.99) & (x[..., 1] < -0.99)
  ys, xs = np.nonzero(red)
  assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (20, 20)   # 20x20 crop scaled by 1.0


def test_prepare_image_accepts_la_and_keyed_palette(tmp_path):
  la = Image.fromarray(np.dstack([np.full((40, 50), 90, np.uint8), np.pad(np.full((20, 30), 255, np.uint8),
                                                                         ((10, 10), (10, 10)))]), 'LA')
  p = tmp_path / 'la.png'
  la.save(p)
  img = load_rgba(p)
  assert img.mode == 'RGBA'
  np.testing.assert_array_equal(prepare_image(img, 30), prepare_image(la.convert('RGBA'), 30))

  pal = Image.new('P', (32, 32), 0)
  pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
  pal.paste(1, (8, 8, 24, 24))
  p = tmp_path / 'pal.png'
  pal.save(p, transparency=0)
  img = load_rgba(p)
  assert img.mode == 'RGBA'
  assert np.asarray(img)[..., 3].sum() == 16 * 16 * 255


# ---- bad inputs ----------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
  with pytest.raises(InputError, match='input image not found: .*nope.png'):
    load_rgba(tmp_path / 'nope.png')


def test_directory_is_not_an_image(tmp_path):
  with pytest.raises(InputError, match='is a directory'):
    load_rgba(tmp_path)


def test_text_file_named_png(tmp_path):
  p = tmp_path / 'fake.png'
  p.write_text('this is not an image\n')
  with pytest.raises(InputError, match='fake.png is not an image'):
    load_rgba(p)


def test_truncated_png(tmp_path):
  p = tmp_path / 'cut.png'
  DEMO_bytes = DEMO.read_bytes()
  p.write_bytes(DEMO_bytes[:len(DEMO_bytes) // 2])
  with pytest.raises(InputError, match='cut.png: cannot read the image'):
    load_rgba(p)


@pytest.mark.parametrize('mode', ['RGB', 'L', 'P', 'I;16', 'CMYK'])
def test_no_alpha_channel(tmp_path, mode):
  p = tmp_path / ('img.tif' if mode == 'CMYK' else 'img.png')
  Image.new(mode, (16, 16)).save(p)
  with pytest.raises(InputError, match=r'has no alpha channel.*object mask as alpha.*--config\.matting=auto'):
    load_rgba(p)
  with pytest.raises(InputError, match='has no alpha channel'):
    prepare_image(Image.new(mode, (16, 16)))


def test_fully_transparent(tmp_path):
  p = tmp_path / 'empty.png'
  Image.new('RGBA', (32, 32), (255, 0, 0, 0)).save(p)
  with pytest.raises(InputError, match='alpha channel is empty'):
    load_rgba(p)
  with pytest.raises(InputError, match='alpha channel is empty'):
    prepare_image(Image.new('RGBA', (32, 32)), crop_size=200)


def test_fully_opaque_warns(tmp_path):
  p = tmp_path / 'opaque.png'
  Image.new('RGBA', (32, 32), (255, 0, 0, 255)).save(p)
  with pytest.warns(UserWarning, match='fully opaque'):
    load_rgba(p)


@pytest.mark.parametrize('crop_size', [0, -2, 257, 1000, 1.5, True, '200'])
def test_bad_crop_size(crop_size):
  img = load_rgba(DEMO)
  with pytest.raises(InputError, match='crop_size must be'):
    prepare_image(img, crop_size=crop_size)


def test_mask_too_small_to_crop():
  a = np.zeros((32, 32, 4), np.uint8)
  a[5, 7] = 255   # one pixel: the original's crop is empty and it divides by zero
  with pytest.raises(InputError, match='too small to crop'):
    prepare_image(Image.fromarray(a, 'RGBA'), crop_size=200)
  assert prepare_image(Image.fromarray(a, 'RGBA')).shape == (256, 256, 3)


@pytest.mark.parametrize('deg', [60, -11, 40.001, 90])
def test_elevation_out_of_range(deg):
  with pytest.raises(InputError, match=rf'elevation must be in \[-10, 40\] degrees, got {deg}; SyncDreamer was'):
    check_elevation(deg)


@pytest.mark.parametrize('deg', [float('nan'), float('inf'), -float('inf')])
def test_elevation_not_finite(deg):
  with pytest.raises(InputError, match='finite'):
    check_elevation(deg)


def test_elevation_not_a_number():
  with pytest.raises(InputError, match='number of degrees'):
    check_elevation('thirty')


@pytest.mark.parametrize('deg', [-10, 0, 30, 40, 22.5, np.float32(15)])
def test_elevation_radians(deg):
  r = check_elevation(deg)
  assert isinstance(r, float)
  assert r == np.float32(np.deg2rad(float(deg)))


# ---- find_inputs ---------------------------------------------------------------------------------------------
def _object_folder(d: Path, n=16):
  d.mkdir(parents=True)
  for i in range(n):
    (d / f'{i:03d}.png').touch()
  return d


def test_find_inputs_file():
  assert find_inputs(DEMO) == [('000', DEMO)]
  assert find_inputs(str(DEMO)) == [('000', DEMO)]


def test_find_inputs_object_folder(tmp_path):
  obj = _object_folder(tmp_path / 'teapot')
  (obj / 'model.obj').touch()
  assert find_inputs(obj) == [('teapot', obj / '000.png')]


def test_find_inputs_folder_of_object_folders(tmp_path):
  b = _object_folder(tmp_path / 'b_obj')
  a = _object_folder(tmp_path / 'a_obj')
  (tmp_path / 'notes').mkdir()                # not an object folder: ignored
  _object_folder(tmp_path / 'partial', n=5)   # incomplete: ignored
  (tmp_path / 'camera-16.pkl').touch()
  (tmp_path / 'README.md').touch()
  assert find_inputs(tmp_path) == [('a_obj', a / '000.png'), ('b_obj', b / '000.png')]


def test_find_inputs_single_view_object_folder(tmp_path):
  obj = tmp_path / 'mug'
  obj.mkdir()
  (obj / '000.png').touch()
  (obj / 'notes.txt').touch()
  assert find_inputs(obj) == [('mug', obj / '000.png')]
  (obj / 'other.png').touch()                   # another image: a plain folder of images again
  assert find_inputs(obj) == [('000', obj / '000.png'), ('other', obj / 'other.png')]


def test_find_inputs_folder_of_images(tmp_path):
  for name in ('zebra.png', 'apple.webp', 'cat.png', 'cat.webp', 'notes.txt', '.hidden.png'):
    (tmp_path / name).touch()
  (tmp_path / 'sub').mkdir()
  assert find_inputs(tmp_path) == [('apple', tmp_path / 'apple.webp'), ('cat_png', tmp_path / 'cat.png'),
                                   ('cat_webp', tmp_path / 'cat.webp'), ('zebra', tmp_path / 'zebra.png')]


def test_find_inputs_bundled_demo():
  assert find_inputs(DEMO_DIR / 'bell') == [('bell', DEMO)]   # 000.png as the only image: an object folder
  assert find_inputs(DEMO_DIR) == [('bell', DEMO)]


def test_find_inputs_nothing(tmp_path):
  with pytest.raises(InputError, match='input not found'):
    find_inputs(tmp_path / 'missing')
  with pytest.raises(InputError, match='no input images in'):
    find_inputs(tmp_path)
  (tmp_path / 'readme.txt').touch()
  with pytest.raises(InputError, match='no input images in'):
    find_inputs(tmp_path)
