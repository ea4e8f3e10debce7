"""hv_jax.elevation and python -m hv_jax.estimate_elevation on a small synthetic mesh (seconds, no model)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hv_jax import elevation, estimate_elevation, raycast
from hv_jax.data import preprocess

trimesh = pytest.importorskip('trimesh')
pytest.importorskip('embreex')

SIZE = 128
FAST = dict(size=SIZE, render_size=SIZE, crop_size=100)   # bad inputs and the CLI: no precision asked
# Precision tests at the default 256 px: the inputs have the views' focal length, the estimator renders at
# its own (the mesh fitted to the frame), so the scales differ as they do for a photo.


@pytest.fixture(scope='module')
def mesh():
  """An asymmetric object of size ~0.7 at the origin: an upright cylinder (its top ellipse opens with the
  elevation), a handle on its side and a cone on its top, off centre (no two elevations give one outline)."""
  move = trimesh.transformations.translation_matrix
  parts = [trimesh.creation.cylinder(0.25, 0.5, sections=48),
           trimesh.creation.box((0.12, 0.1, 0.3), transform=move((0.0, 0.3, 0.0))),
           trimesh.creation.cone(0.08, 0.25, transform=move((0.1, -0.1, 0.25)))]
  m = trimesh.util.concatenate(parts)
  return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


def render(mesh, e, size=SIZE, focal_256=raycast.FOCAL_256):
  v, f = mesh
  return raycast.silhouette(v, f, raycast.intrinsics(size, focal_256), raycast.look_at_pose(0.0, e), size)


@pytest.mark.parametrize('e', [-7.0, 12.0, 33.5])
def test_recovers_known_elevations(mesh, e):
  est = elevation.estimate(render(mesh, e, size=256), *mesh)
  assert abs(est.elevation_deg - e) <= 1.0, est.elevation_deg
  assert est.iou > 0.95
  assert len(est.candidates) == len(est.scores) > 51          # coarse grid + refinement
  assert list(est.candidates) == sorted(est.candidates)
  assert est.scores[est.candidates.index(est.elevation_deg)] == max(est.scores) == est.iou


def test_framing_does_not_matter(mesh):
  """The same outline shifted, scaled and on a larger, non-square canvas gives the same estimate."""
  grid = dict(candidates=np.arange(10.0, 30.1, 1.0))
  mask = render(mesh, 20.0, size=256)
  base = elevation.estimate(mask, *mesh, **grid).elevation_deg
  big = np.kron(mask, np.ones((2, 2), bool))                 # 2x larger
  canvas = np.zeros((700, 600), bool)
  canvas[30:30 + big.shape[0], 10:10 + big.shape[1]] = big  # off centre
  moved = elevation.estimate(canvas.astype(np.float32), *mesh, **grid).elevation_deg
  far = render(mesh, 20.0, size=256, focal_256=150.0)       # the object smaller in the frame
  smaller = elevation.estimate(far, *mesh, **grid).elevation_deg
  # a different scale resamples the outline differently: about 2 deg of noise (docs/elevation.md: GT p90 1.8)
  assert abs(base - 20.0) <= 1.0
  assert abs(moved - base) <= 1.0 and abs(smaller - base) <= 2.0


def test_normalize_mask_is_the_samplers_crop():
  mask = np.zeros((90, 60), bool)
  mask[10:40, 20:35] = True
  rgba = np.zeros((90, 60, 4), np.uint8)
  rgba[..., 3] = mask * 255
  want = np.asarray(preprocess.prepare_rgba(Image.fromarray(rgba), 200, 256).getchannel('A')) / 255.0
  got = elevation.normalize_mask(mask, 256, 200)
  assert got.shape == (256, 256) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(elevation.normalize_mask(mask.astype(np.uint8) * 255, 256, 200), got)


def one_line(excinfo):
  text = str(excinfo.value)
  assert text and '\n' not in text
  return text


def test_bad_inputs_are_one_line(mesh):
  v, f = mesh
  mask = render(mesh, 10.0)
  with pytest.raises(elevation.ElevationError) as e:
    elevation.estimate(np.zeros((64, 64)), v, f, **FAST)
  assert 'empty' in one_line(e)
  with pytest.raises(elevation.ElevationError) as e:
    elevation.estimate(mask, v, np.zeros((0, 3), np.int64), **FAST)
  assert 'no triangles' in one_line(e)
  with pytest.raises(elevation.ElevationError) as e:
    elevation.estimate(mask, v * 0.0, f, **FAST)                    # every triangle degenerate: never hit
  assert 'empty from every candidate' in one_line(e)
  with pytest.raises(elevation.ElevationError) as e:
    elevation.estimate(mask, v + 5.0, f, **FAST)                    # not in SyncDreamer's frame
  assert 'frame' in one_line(e)
  with pytest.raises(elevation.ElevationError) as e:
    elevation.estimate(np.zeros((4, 4, 4)), v, f, **FAST)
  one_line(e)


@pytest.fixture(scope='module')
def files(mesh, tmp_path_factory):
  d = tmp_path_factory.mktemp('elev')
  mask = render(mesh, 25.0, size=256)
  rgba = np.zeros((256, 256, 4), np.uint8)
  rgba[..., :3] = (200, 60, 40)
  rgba[..., 3] = mask * 255
  Image.fromarray(rgba).save(d / 'input.png')
  trimesh.Trimesh(*mesh, process=False).export(d / 'mesh.ply')
  return d


def test_estimate_files(files):
  est = elevation.estimate_files(files / 'input.png', files / 'mesh.ply', candidates=np.arange(0, 40.1, 2.0))
  assert abs(est.elevation_deg - 25.0) <= 2.0      # another scale than the estimator's renders
  with pytest.raises(elevation.ElevationError) as e:
    elevation.estimate_files(files / 'input.png', files / 'missing.ply')
  assert 'missing.ply' in one_line(e)


def test_cli_prints_degrees(files, capsys):
  out = files / 'e.json'
  rc = estimate_elevation.main([f'--config.input={files / "input.png"}', f'--config.mesh={files / "mesh.ply"}',
                                '--config.lo=10', '--config.hi=40', '--config.step=2', f'--config.json_out={out}'])
  assert rc == 0
  printed = float(capsys.readouterr().out.strip())
  assert abs(printed - 25.0) <= 2.0
  record = json.loads(out.read_text())
  assert record['elevation_deg'] == printed and len(record['candidates']) == len(record['scores'])


def test_cli_bad_input_is_one_line(files, capsys):
  rc = estimate_elevation.main([f'--config.input={files / "input.png"}', '--config.mesh=/nonexistent/m.ply'])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and err.startswith('error:') and '\n' not in err and 'm.ply' in err
  assert estimate_elevation.main(['--config.mesh=x.ply']) == 2
  assert 'no input' in capsys.readouterr().err
  # settings mistakes name their flag
  for flags, line in ((['--config.crop_size=-1'], 'error: --config.crop_size=-1: must be in [1, 256]'),
                      (['--config.lo=20', '--config.hi=10'], 'error: --config.hi=10.0: must be >= --config.lo=20.0'),
                      (['--config.matting=x'], "error: --config.matting='x': unknown matting method 'x'")):
    assert estimate_elevation.main([f'--config.input={files / "input.png"}', '--config.mesh=m.ply', *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line) and '\n' not in err, err


def test_cut_outline_is_warned(mesh, caplog):
  mask = render(mesh, 15.0)
  cut = mask[:, 40:]                                         # the object cut by the left border
  with caplog.at_level('WARNING'):
    elevation.estimate(cut, *mesh, **dict(FAST, refine=False, candidates=np.arange(0, 30.1, 5.0)))
  assert 'touches the border' in caplog.text


def test_joint_distance_search_recovers_a_farther_camera(mesh):
  """An input seen from distance 4 (less perspective, same size): the elevation and the distance come back."""
  v, f = mesh
  far = raycast.silhouette(v, f, raycast.intrinsics(256, raycast.FOCAL_256 * 4 / 1.5),
                           raycast.look_at_pose(0.0, 22.0, 4.0), 256)
  est = elevation.estimate(far, v, f, distances=(1.5, 4.0), candidates=np.arange(10, 34.1, 1.0))
  assert est.distance == 4.0 and abs(est.elevation_deg - 22.0) <= 1.0
  assert est.distances == (1.5, 4.0) and est.distance_scores[1] == max(est.distance_scores) == est.iou


def test_cli_flag_mistake_is_one_line(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-m', 'hv_jax.estimate_elevation', '--config.mesh_path=x'], capture_output=True,
                     text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root), timeout=120)
  assert r.returncode == 2 and r.stdout == '' and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert r.stderr.startswith('error: ') and 'mesh_path' in r.stderr
