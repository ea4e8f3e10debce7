"""hv_jax.metrics.geometry: Chamfer distance and volume IoU with known answers, and the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

trimesh = pytest.importorskip('trimesh')

from hv_jax.metrics import geometry  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sphere(radius, subdivisions=5, center=(0.0, 0.0, 0.0)) -> geometry.Mesh:
  m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
  return geometry.Mesh(np.asarray(m.vertices) + np.asarray(center), np.asarray(m.faces, np.int64))


def box(extents, center=(0.0, 0.0, 0.0)) -> geometry.Mesh:
  m = trimesh.creation.box(extents=extents)
  return geometry.Mesh(np.asarray(m.vertices) + np.asarray(center), np.asarray(m.faces, np.int64))


def write(mesh: geometry.Mesh, path):
  trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(path)
  return path


def test_mesh_against_itself():
  s = sphere(0.35)
  assert geometry.chamfer_distance(s, s) == 0.0
  assert geometry.volume_iou(s, s) == 1.0


def test_concentric_spheres_match_the_analytic_values():
  a, b = sphere(0.30), sphere(0.40)
  # every point of one sphere is |r1 - r2| from the other; voxel averaging and facets move it by < 1e-3
  assert abs(geometry.chamfer_distance(a, b) - 0.10) < 1e-3
  # IoU = (r1 / r2)^3 = 0.421875, up to the 64^3 grid's discretisation
  assert abs(geometry.volume_iou(a, b) - 0.421875) < 0.02


def test_inside_grid_counts_the_enclosed_grid_points():
  # box [-0.245, 0.255]^3 (off the grid points -1 + i / 32): inside exactly where each coordinate is
  inside = geometry.inside_grid(box([0.5, 0.5, 0.5], center=(0.005, 0.005, 0.005)), 64)
  x = -1 + np.arange(64) / 32
  want = (x > -0.245) & (x < 0.255)
  np.testing.assert_array_equal(inside, want[:, None, None] & want[None, :, None] & want[None, None, :])


def test_inside_grid_matches_mesh2sdf_when_installed():
  mesh2sdf = pytest.importorskip('mesh2sdf')
  for m in (sphere(0.33, 3, center=(0.02, -0.05, 0.01)), box([0.4, 0.7, 0.3], center=(0.1, 0.0, -0.05))):
    ref = mesh2sdf.compute(m.vertices.astype(np.float32), m.faces.astype(np.uint32), 64, fix=False) < 0
    np.testing.assert_array_equal(geometry.inside_grid(m, 64), ref)


def test_normalize_gt_scales_centres_and_rotates():
  v = np.array([[0.0, 0.0, 0.0], [4.0, 2.0, 1.0]])
  out = geometry.normalize_gt(v, 0.0)
  np.testing.assert_allclose(out, [[-0.5, -0.25, -0.125], [0.5, 0.25, 0.125]])
  rot = geometry.normalize_gt(v, 90.0)             # R = Rz(-90): (x, y) -> (y, -x)
  np.testing.assert_allclose(rot, [[-0.25, 0.5, -0.125], [0.25, -0.5, 0.125]], atol=1e-12)
  assert geometry.gt_rotation_angle('sofa') == -90.0 and geometry.gt_rotation_angle('shoe') == 225.0
  assert geometry.gt_rotation_angle('bell') == 0.0


def test_voxel_downsample_averages_per_voxel():
  pts = np.array([[0.0, 0.0, 0.0], [0.004, 0.0, 0.0], [0.02, 0.0, 0.0]])
  out = geometry.voxel_downsample(pts, 0.01)      # voxels anchored at min - 0.005: {0, 0.004} and {0.02}
  out = out[np.argsort(out[:, 0])]
  np.testing.assert_allclose(out, [[0.002, 0, 0], [0.02, 0, 0]], atol=1e-7)


def test_depth_is_the_camera_space_z_of_the_first_hit():
  Ks, poses, _ = geometry.default_cameras()
  s = sphere(0.25, 6)
  depth, mask = geometry.render_depth(s, Ks[0], poses[0], pixel_offset=0.0)
  assert mask[128, 128] and not mask[0, 0]
  assert abs(depth[128, 128] - (1.5 - 0.25)) < 1e-3     # the camera looks at the origin from 1.5


def test_cli_prints_the_original_line_and_rejects_bad_files(tmp_path):
  pred = write(sphere(0.3), str(tmp_path / 'pred.ply'))
  gt = write(sphere(0.3), str(tmp_path / 'gt.obj'))
  out = tmp_path / 'm.json'
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, '-m', 'hv_jax.evaluate_mesh', f'--config.pred={pred}', f'--config.gt={gt}',
                      '--config.name=bell', f'--config.out={out}'], capture_output=True, text=True, env=env, cwd=ROOT)
  assert r.returncode == 0, r.stderr
  name, chamfer, iou = r.stdout.strip().split('\t')
  # GT normalisation scales the unit-box sphere (side 0.6 -> 1): chamfer ~ 0.2, IoU ~ 0.6^3
  assert name == 'bell' and abs(float(chamfer) - 0.2) < 2e-3 and abs(float(iou) - 0.216) < 0.02
  assert json.loads(out.read_text())['name'] == 'bell'
  (tmp_path / 'bad.obj').write_text('this is not a mesh\n')
  for bad in (str(tmp_path / 'missing.ply'), str(tmp_path / 'bad.obj')):
    r = subprocess.run([sys.executable, '-m', 'hv_jax.evaluate_mesh', f'--config.pred={bad}', f'--config.gt={gt}',
                        '--config.name=bell'], capture_output=True, text=True, env=env, cwd=ROOT)   # a known name
    assert r.returncode == 2 and r.stderr.startswith('error: ') and len(r.stderr.strip().splitlines()) == 1
    assert bad in r.stderr, r.stderr


def test_rotation_table_is_the_30_gso_eval_objects_and_unknown_names_are_refused():
  assert len(geometry.GT_ROTATION_DEG) == 30 and geometry.GT_ROTATION_DEG['teapot'] == 0.0
  fixtures = os.path.join(ROOT, 'tests', 'fixtures', 'gso')
  assert {d for d in os.listdir(fixtures) if os.path.isdir(os.path.join(fixtures, d))} <= set(geometry.GT_ROTATION_DEG)
  with pytest.raises(geometry.UnknownObjectError, match="unknown object 'Alarm': did you mean 'alarm'\\?"):
    geometry.gt_rotation_angle('Alarm')
  with pytest.raises(geometry.UnknownObjectError, match="did you mean 'school_bus[12]' or 'school_bus[12]'"):
    geometry.gt_rotation_angle('school_bus')
  with pytest.raises(geometry.UnknownObjectError, match='not one of the 30 GSO-eval objects'):
    geometry.gt_rotation_angle('xyzzy')
  with pytest.raises(geometry.UnknownObjectError):   # evaluate() refuses before reading any mesh
    geometry.evaluate('missing.ply', 'missing.obj', 'Alarm')


def test_cli_unknown_name_is_refused_unless_the_rotation_is_given(tmp_path, capsys):
  from hv_jax import evaluate_mesh
  pred = write(box([0.5, 0.3, 0.2]), str(tmp_path / 'pred.ply'))
  gt = write(box([0.5, 0.3, 0.2]), str(tmp_path / 'gt.obj'))
  out = tmp_path / 'm.json'
  files = [f'--config.pred={pred}', f'--config.gt={gt}']
  assert evaluate_mesh.main(files + ['--config.name=Alarm', f'--config.out={out}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: unknown object 'Alarm': did you mean 'alarm'? set --config.rotation=0 if the GT mesh "
                 'needs no rotation'] and not out.exists()
  assert evaluate_mesh.main(files) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      'error: set --config.name=OBJECT (a GSO-eval object: selects the GT rotation) or --config.rotation=DEG']
  assert evaluate_mesh.main(files + ['--config.rotation=nan']) == 2
  assert capsys.readouterr().err.strip().splitlines() == ['error: --config.rotation=nan: must be a finite number']
  # rotation 0: the GT box (largest side 0.5 -> 1) against the same box unscaled, unrotated
  assert evaluate_mesh.main(files + ['--config.name=Alarm', '--config.rotation=0', f'--config.out={out}']) == 0
  name, chamfer, iou = capsys.readouterr().out.strip().split('\t')
  assert name == 'Alarm' and float(chamfer) > 0.01
  assert json.loads(out.read_text())['rotation_deg'] == 0.0
