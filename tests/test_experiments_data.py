"""experiments.data: the GSO-eval TFDS builder (built and read without TensorFlow) and the image-folder loader."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import data
from experiments.data import images
from hv_jax.data.preprocess import InputError

FIXTURES = Path(__file__).parent / 'fixtures'
# Two objects: bell without a mesh, cream with its real model.obj.
OBJECTS = {'bell': FIXTURES / 'gso' / 'bell', 'cream': FIXTURES / 'gso' / 'cream'}


@pytest.fixture(scope='module')
def gso_eval():
  pytest.importorskip('tensorflow_datasets', reason='the GSO builder needs tensorflow-datasets')
  from experiments.data import gso_eval
  return gso_eval


@pytest.fixture
def manual(tmp_path):
  root = tmp_path / 'gso-eval'
  for name, src in OBJECTS.items():
    shutil.copytree(src, root / name)
  return root


def _views(folder: Path) -> np.ndarray:
  return np.stack([np.asarray(Image.open(folder / f'{i:03d}.png')) for i in range(16)])


def _build(gso_eval, manual_dir, data_dir):
  import tensorflow_datasets as tfds
  builder = gso_eval.GsoEval(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


# ----------------------------------------------------------------------------- GSO eval (TFDS)

def test_gso_round_trip(gso_eval, manual, tmp_path):
  records = gso_eval.load_gso(manual, data_dir=tmp_path / 'tfds')
  assert [r['name'] for r in records] == ['bell', 'cream']
  for r in records:
    assert set(r) == set(data.RECORD_KEYS)
    views = _views(manual / r['name'])
    assert r['gt_views'].dtype == np.uint8 and r['gt_views'].shape == (16, 256, 256, 4)
    np.testing.assert_array_equal(r['gt_views'], views)        # pixel-exact: the PNG bytes are stored as they are
    np.testing.assert_array_equal(r['input_view'], views[0])
    assert r['elevation'] == 30.0
  assert records[0]['mesh_path'] == ''
  assert records[1]['mesh_path'] == str(manual / 'cream' / 'model.obj')
  shards = list((tmp_path / 'tfds' / 'gso_eval' / '1.0.0').glob('gso_eval-test.array_record-*'))
  assert len(shards) == 1


def test_gso_builder_reads_back_as_data_source(gso_eval, manual, tmp_path):
  builder = _build(gso_eval, manual, tmp_path / 'tfds')
  assert builder.info.splits['test'].num_examples == 2
  source = builder.as_data_source(split='test')
  ex = source[1]
  assert ex['name'] == b'cream' and ex['elevation'] == pytest.approx(30.0)
  assert len(ex['gt_views']) == 16 and ex['input_view'].shape == (256, 256, 4)
  rec = images.record_from_example(ex)
  np.testing.assert_array_equal(rec['gt_views'], _views(manual / 'cream'))


def test_gso_reuses_its_build_and_rebuilds_for_another_folder(gso_eval, manual, tmp_path):
  data_dir = tmp_path / 'tfds'
  gso_eval.load_gso(manual, data_dir)
  shard = next((data_dir / 'gso_eval' / '1.0.0').glob('*.array_record-*'))
  stamp = shard.stat().st_mtime_ns
  gso_eval.load_gso(manual, data_dir)
  assert shard.stat().st_mtime_ns == stamp
  other = tmp_path / 'other'
  shutil.copytree(manual / 'bell', other / 'bell')
  records = gso_eval.load_gso(other, data_dir)
  assert [(r['name'], r['mesh_path']) for r in records] == [('bell', '')]


def test_gso_rebuilds_when_the_views_change_under_the_same_names(gso_eval, manual, tmp_path):
  data_dir = tmp_path / 'tfds'
  gso_eval.load_gso(manual, data_dir)
  img = np.asarray(Image.open(manual / 'bell' / '003.png')).copy()
  img[10, 10] = [1, 2, 3, 255]
  Image.fromarray(img).save(manual / 'bell' / '003.png')
  records = gso_eval.load_gso(manual, data_dir)
  np.testing.assert_array_equal(records[0]['gt_views'][3], img)     # the new pixels, not the cached build


def test_gso_builder_leaves_nothing_in_the_system_temp_folder(gso_eval, manual, tmp_path, monkeypatch):
  import tempfile
  system_tmp = tmp_path / 'system_tmp'
  system_tmp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(system_tmp))
  gso_eval.load_gso(manual, tmp_path / 'tfds')
  assert list(system_tmp.iterdir()) == []


@pytest.mark.parametrize('case', ['missing', 'empty'])
def test_gso_builder_needs_the_manual_dir(gso_eval, tmp_path, case):
  folder = tmp_path / 'gso-eval'
  if case == 'empty':
    folder.mkdir()
  with pytest.raises(InputError, match=r'gso-eval does not exist or is empty\. Pass the gso-eval folder'):
    _build(gso_eval, folder, tmp_path / 'tfds')
  with pytest.raises(InputError, match='GSO eval folder not found' if case == 'missing' else 'no object folders'):
    gso_eval.load_gso(folder, tmp_path / 'tfds')


def test_gso_builder_needs_object_folders(gso_eval, tmp_path):
  folder = tmp_path / 'gso-eval'
  folder.mkdir()
  (folder / 'README.md').write_text('not an object')
  with pytest.raises(InputError, match='no object folders in .*gso-eval'):
    _build(gso_eval, folder, tmp_path / 'tfds')


def test_gso_builder_names_missing_views(gso_eval, manual, tmp_path):
  (manual / 'bell' / '003.png').unlink()
  (manual / 'bell' / '011.png').unlink()
  (manual / 'stray').mkdir()
  with pytest.raises(InputError, match=r'lack views: bell \(003\.png, 011\.png\); stray \(all views\)'):
    _build(gso_eval, manual, tmp_path / 'tfds')
  assert not gso_eval.GsoEval(data_dir=str(tmp_path / 'tfds'), file_format='array_record').is_prepared()


@pytest.mark.parametrize('bad, match', [
    ('rgb', 'has no alpha channel'),
    ('small', r'is 128x128; GSO eval views are 256x256'),
])
def test_gso_builder_refuses_bad_views(gso_eval, manual, tmp_path, bad, match):
  view = manual / 'cream' / '007.png'
  img = Image.open(view)
  (img.convert('RGB') if bad == 'rgb' else img.resize((128, 128))).save(view)
  with pytest.raises(InputError, match=match):
    _build(gso_eval, manual, tmp_path / 'tfds')


def test_gso_builder_converts_la_views(gso_eval, manual, tmp_path):
  view = manual / 'bell' / '005.png'
  Image.open(view).convert('LA').save(view)
  records = gso_eval.load_gso(manual, tmp_path / 'tfds')
  np.testing.assert_array_equal(records[0]['gt_views'][5], np.asarray(Image.open(view).convert('RGBA')))


# ----------------------------------------------------------------------------- image folders

def _rgba(seed: int, size=(24, 32)) -> np.ndarray:
  rgba = np.random.default_rng(seed).integers(0, 256, size + (4,), dtype=np.uint8)
  rgba[..., 3] = 0
  rgba[4:-4, 4:-4, 3] = 255   # an object on a transparent background
  return rgba


def test_load_folder_reads_images_and_elevations(tmp_path):
  a, b, c = _rgba(0), _rgba(1), _rgba(2)
  Image.fromarray(a, 'RGBA').save(tmp_path / 'a.png')
  Image.fromarray(b, 'RGBA').save(tmp_path / 'b.webp', lossless=True, exact=True)
  Image.fromarray(c, 'RGBA').convert('LA').save(tmp_path / 'c.png')
  (tmp_path / images.ELEVATIONS_FILE).write_text(json.dumps({'b': -5, 'c': 12.5}))
  records = images.load_folder(tmp_path, elevation_deg=20)
  assert [r['name'] for r in records] == ['a', 'b', 'c']
  assert [r['elevation'] for r in records] == [20.0, -5.0, 12.5]
  np.testing.assert_array_equal(records[0]['input_view'], a)
  np.testing.assert_array_equal(records[1]['input_view'], b)
  np.testing.assert_array_equal(records[2]['input_view'], np.asarray(Image.fromarray(c).convert('LA').convert('RGBA')))
  for r in records:
    assert set(r) == set(data.RECORD_KEYS) and r['gt_views'] is None and r['mesh_path'] == ''
    assert r['input_view'].dtype == np.uint8 and r['input_view'].shape == (24, 32, 4)
  assert images.load_folder(tmp_path / 'a.png')[0]['elevation'] == 30.0   # one file, default elevation


def _write_bad(folder: Path, case: str):
  if case == 'rgb':
    Image.fromarray(_rgba(3)[..., :3], 'RGB').save(folder / 'bad.png')
  elif case == 'jpg':
    Image.fromarray(_rgba(3)[..., :3], 'RGB').save(folder / 'bad.jpg')
  elif case == 'empty_alpha':
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), 'RGBA').save(folder / 'bad.png')
  elif case == 'corrupt':
    (folder / 'bad.png').write_bytes(b'\x89PNG not really')
  elif case.startswith('json_'):
    text = {'json_range': '{"good": 55}', 'json_unknown': '{"nope": 10}', 'json_syntax': '{"good": 10',
            'json_type': '{"good": "10"}', 'json_list': '[10]'}[case]
    (folder / images.ELEVATIONS_FILE).write_text(text)


@pytest.mark.parametrize('case, match', [
    ('rgb', r'bad\.png has no alpha channel \(image mode RGB\)'),
    ('jpg', r'bad\.jpg has no alpha channel'),
    ('empty_alpha', r'bad\.png: the alpha channel is empty'),
    ('corrupt', r'bad\.png'),
    ('json_range', r'elevations\.json: good: elevation must be in \[-10, 40\] degrees, got 55'),
    ('json_unknown', r"elevations\.json names \['nope'\], which are not inputs here"),
    ('json_syntax', r'elevations\.json: cannot read it as JSON'),
    ('json_type', r'the elevation of good must be a number of degrees'),
    ('json_list', r'must hold a JSON object'),
])
def test_load_folder_bad_inputs(tmp_path, case, match):
  Image.fromarray(_rgba(0), 'RGBA').save(tmp_path / 'good.png')
  _write_bad(tmp_path, case)
  # matting='alpha': the image's own mask is required (the default, 'auto', would matte an RGB image)
  kw = {'matting': 'alpha'} if case in ('rgb', 'jpg', 'empty_alpha') else {}
  with pytest.raises(InputError, match=match) as info:
    images.load_folder(tmp_path, **kw)
  assert '\n' not in str(info.value)


def test_load_folder_mattes_photos_without_alpha(tmp_path):
  Image.fromarray(_rgba(0), 'RGBA').save(tmp_path / 'cut.png')
  photo = np.full((64, 64, 3), 255, np.uint8)
  photo[16:48, 20:44] = (20, 60, 150)
  Image.fromarray(photo).save(tmp_path / 'photo.jpg', quality=95)
  records = {r['name']: r for r in images.load_folder(tmp_path)}
  assert records['cut']['matting'] == 'alpha' and records['photo']['matting'] == 'plain'
  view = records['photo']['input_view']
  assert view.shape == (64, 64, 4) and view[32, 32, 3] == 255 and view[2, 2, 3] == 0
  # random noise has no plain background: one line naming the file
  Image.fromarray(_rgba(3)[..., :3], 'RGB').save(tmp_path / 'noise.png')
  with pytest.raises(InputError, match=r'noise\.png: no plain background found'):
    images.load_folder(tmp_path)


def test_load_folder_bad_paths_and_elevation(tmp_path):
  with pytest.raises(InputError, match='input not found'):
    images.load_folder(tmp_path / 'nowhere')
  with pytest.raises(InputError, match='no input images in'):
    images.load_folder(tmp_path)
  Image.fromarray(_rgba(0), 'RGBA').save(tmp_path / 'good.png')
  with pytest.raises(InputError, match=r'elevation_deg: elevation must be in \[-10, 40\] degrees, got 60'):
    images.load_folder(tmp_path, elevation_deg=60)


def test_load_folder_reports_every_bad_file_at_once(tmp_path):
  Image.fromarray(_rgba(0), 'RGBA').save(tmp_path / 'good.png')
  Image.fromarray(_rgba(1)[..., :3], 'RGB').save(tmp_path / 'x.png')
  (tmp_path / 'y.png').write_bytes(b'junk')
  with pytest.raises(InputError, match=r'2 of 3 inputs in .* are invalid: .*x\.png has no alpha .* \| .*y\.png'):
    images.load_folder(tmp_path, matting='alpha')     # the image's own mask required: x.png has none


def test_records_share_one_format():
  views = np.zeros((16, 8, 8, 4), np.uint8)
  tfds_form = {'name': b'obj', 'input_view': views[0], 'elevation': np.float32(30), 'gt_views': list(views),
               'mesh_path': b''}
  numpy_form = dict(tfds_form, name='obj', gt_views=views, mesh_path='/x/model.obj')
  a, b = images.record_from_example(tfds_form), images.record_from_example(numpy_form)
  assert a['name'] == b['name'] == 'obj' and a['mesh_path'] == '' and b['mesh_path'] == '/x/model.obj'
  assert a['gt_views'].shape == b['gt_views'].shape == (16, 8, 8, 4) and type(a['elevation']) is float
  with pytest.raises(InputError, match=r'obj: input_view must be an \[H, W, 4\] uint8'):
    images.make_record('obj', views[0, ..., :3], 30.0)
  with pytest.raises(InputError, match=r'obj: gt_views must be a \[16, H, W, 4\] uint8'):
    images.make_record('obj', views[0], 30.0, gt_views=views[:4])
  with pytest.raises(InputError, match=r'obj: elevation must be in'):
    images.make_record('obj', views[0], 45.0)
  assert data.images is images
