"""The per-object records behind three GSO tables (docs/matting.md "NeuS with plain masks",
docs/elevation.md "(b)", docs/export.md "Validation on GSO reconstructions"), kept in
docs/data/gso_plain_masks.json so that objects reconstructed in different sessions add up to one table.

  # after benchmarks/neus_gso.py --no-alpha --extra=--config.matting=plain --out RECON, then
  # benchmarks/elevation_gso.py --recon RECON --objects O --json ELEV/recon_O.json and
  # benchmarks/texture_gso.py --recon RECON --objects O --out TEX/O.md:
  PYTHONPATH=. python benchmarks/gso_records.py add --recon RECON --elevation ELEV --texture TEX OBJ [OBJ ...]
  PYTHONPATH=. python benchmarks/gso_records.py tables      # prints the three tables' rows and summaries
  PYTHONPATH=. python benchmarks/gso_records.py docs        # rewrites those tables in docs/

`add` refuses, in one line and adding nothing, a reconstruction not made with plain masks at 800 steps, and
estimates or a texture row made from another mesh than RECON/OBJ's (each names the sha256 of the mesh it used).
Objects measured before this file existed carry the figures of the docs' tables ("source").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hv_jax import digest  # noqa: E402

RECORDS = os.path.join(ROOT, 'docs', 'data', 'gso_plain_masks.json')
ELEVATIONS = ('-5.0', '5.0', '15.0', '25.0', '35.0')
MESHES = ('mesh.ply', 'mesh_nofloor.ply')
TEXTURE_MESH_LINE = 'mesh.ply sha256:'    # texture_gso.MESH_LINE (that module loads the bake; this one stays light)
# records made before records carried their machine: all on the first development machine
EARLIER = 'the earlier 2-core AMD EPYC (in-run float32 matmul 120-150 GFLOP/s)'


def machine() -> str:
  """The CPU that made a record: NeuS's 800 float32 steps end in other figures on another vector ISA."""
  info = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
  model = re.search(r'model name\s*:\s*(.*)', info)
  isa = 'AVX-512' if ' avx512f' in info else 'AVX2' if ' avx2' in info else 'no AVX2'
  return f'{os.cpu_count()}-core {model.group(1).strip() if model else "CPU"} with {isa}'


def _recon_estimates(elev_path: str, o: str) -> list:
  return [r for r in json.load(open(elev_path))['records'] if r['object'] == o and r['kind'].startswith('recon:')]


def _not_of(recorded) -> str:
  return 'was made from another mesh than' if recorded else 'does not name its mesh, so it may not be of'


def _digests_of(recon: str, o: str, elev_path: str, tex_path: str) -> None:
  """Refuses (one line) estimates or a texture row made from another reconstruction of `o` than recon/o's meshes:
  benchmarks/elevation_gso.py and texture_gso.py record the sha256 of each mesh they used."""
  have = {name: digest.file_sha256(p) for name in MESHES if os.path.isfile(p := os.path.join(recon, o, name))}
  estimates = _recon_estimates(elev_path, o)
  if not estimates:
    sys.exit(f'error: {elev_path} holds no estimates of reconstructions of {o}: nothing added')
  for r in estimates:
    name = r['kind'][len('recon:'):]
    if r.get('mesh_sha256') != have.get(name):
      sys.exit(f"error: {elev_path}: its row of estimates for {o}/{name} {_not_of(r.get('mesh_sha256'))} "
               f"{recon}/{o}/{name}: run benchmarks/elevation_gso.py on it again; nothing added")
  lines = [l.split() for l in open(tex_path) if l.startswith(f'{TEXTURE_MESH_LINE} {o} ')]
  if not lines or lines[0][-1] != have.get('mesh.ply'):
    sys.exit(f"error: {tex_path}: its row of {o} {_not_of(lines[0][-1] if lines else None)} {recon}/{o}/mesh.ply: "
             "run benchmarks/texture_gso.py on it again; nothing added")


def add(a):
  data = json.load(open(RECORDS)) if os.path.exists(RECORDS) else {}
  for o in a.objects:
    m = json.load(open(os.path.join(a.recon, o, 'metrics.json')))
    if (m['mask_source'], m['steps']) != ('plain', 800):    # the tables are of plain masks at neus_fast's 800 steps
      sys.exit(f"error: {a.recon}/{o} was reconstructed with masks {m['mask_source']!r} at {m['steps']} steps, "
               "not 'plain' at 800: nothing added")
    elev_path, tex_path = os.path.join(a.elevation, f'recon_{o}.json'), os.path.join(a.texture, f'{o}.md')
    _digests_of(a.recon, o, elev_path, tex_path)
    rec = {'chamfer': m['geometry']['chamfer'], 'iou': m['geometry']['iou'],
           'chamfer_nofloor': m['geometry_nofloor']['chamfer'], 'iou_nofloor': m['geometry_nofloor']['iou'],
           'minutes': m['seconds']['total'] / 60, 'mask_source': m['mask_source'], 'steps': m['steps']}
    elev = {}
    for r in _recon_estimates(elev_path, o):
      elev.setdefault(r['kind'][len('recon:'):], {})[str(r['true_deg'])] = [r['error_deg'], r['seconds']]
    rec['elevation'] = elev
    rows = [l.strip() for l in open(tex_path) if l.startswith(f'| {o} |')]
    rec['texture_row'] = rows[0]
    rec['machine'] = machine()
    old = data.get(o, {})
    if old.get('machine', EARLIER) != rec['machine'] and 'chamfer' in old:    # keep the other machine's figures
      rec['earlier'] = {k: old[k] for k in ('machine', 'chamfer', 'iou', 'texture_row') if k in old}
      rec['earlier'].setdefault('machine', EARLIER)
    elif 'earlier' in old:
      rec['earlier'] = old['earlier']
    data[o] = rec
  os.makedirs(os.path.dirname(RECORDS), exist_ok=True)
  tmp = RECORDS + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, RECORDS)
  print(f'{len(data)} objects: {" ".join(sorted(data))}')


def gt_alpha_table() -> dict:
  """object -> (Chamfer, IoU) of docs/neus.md's GT-alpha table."""
  gt = {}
  for line in open(os.path.join(ROOT, 'docs', 'neus.md')):
    m = re.match(r'\| (\w+) \| ([\d.]+) \| ([\d.]+) \|', line)
    if m and m.group(1) not in gt:
      gt[m.group(1)] = (float(m.group(2)), float(m.group(3)))
  return gt


def tables(_):
  d = json.load(open(RECORDS))
  gt = gt_alpha_table()
  objs = [o for o in sorted(d) if 'chamfer' in d[o]]
  print(f'## NeuS with plain masks: {len(objs)} objects\n')
  print('| object | Chamfer, plain masks | volume IoU, plain masks | Chamfer, GT alpha (docs/neus.md) | IoU, GT alpha | minutes |')
  print('|---|---|---|---|---|---|')
  for o in objs:
    r = d[o]
    print(f"| {o} | {r['chamfer']:.4f} | {r['iou']:.3f} | {gt[o][0]:.4f} | {gt[o][1]:.3f} | {r['minutes']:.1f} |")
  c, i = (np.array([d[o][k] for o in objs]) for k in ('chamfer', 'iou'))
  gc, gi = (np.array([gt[o][k] for o in objs]) for k in (0, 1))
  print(f'| **mean of {len(objs)}** | **{c.mean():.4f}** | **{i.mean():.3f}** | {gc.mean():.4f} | {gi.mean():.3f} | |')
  print(f'\nplain minus GT alpha: Chamfer mean {np.mean(c - gc):+.4f} ({np.min(c - gc):+.4f} .. {np.max(c - gc):+.4f}), '
        f'IoU mean {np.mean(i - gi):+.3f} ({np.min(i - gi):+.3f} .. {np.max(i - gi):+.3f}); plain better in Chamfer on '
        f'{int((c < gc).sum())} of {len(objs)}')
  objs = [o for o in sorted(d) if 'elevation' in d[o]]
  print(f'\n## elevation (b): {len(objs)} objects\n')
  print('| object | mesh | -5° | 5° | 15° | 25° | 35° |\n|---|---|---|---|---|---|---|')
  errs, secs = {k: [] for k in MESHES}, {k: [] for k in MESHES}
  for o in objs:
    for k in MESHES:
      v = d[o]['elevation'][k]
      print(f'| {o} | {k} | ' + ' | '.join(f'{v[e][0]:+.2f}' for e in ELEVATIONS) + ' |')
      errs[k] += [abs(v[e][0]) for e in ELEVATIONS]
      secs[k] += [v[e][1] for e in ELEVATIONS if v[e][1] is not None]
  print('\n| mesh | objects | estimates | median \\|error\\| | p90 | max | mean | s/estimate |\n|---|---|---|---|---|---|---|---|')
  for k in MESHES:
    e = np.array(errs[k])
    print(f'| NeuS {k} | {len(objs)} | {e.size} | {np.median(e):.2f}° | {np.percentile(e, 90):.2f}° | {e.max():.2f}° '
          f'| {e.mean():.2f}° | {np.mean(secs[k]):.2f} ({len(secs[k])} timed) |')
  rows = [d[o]['texture_row'] for o in sorted(d) if d[o].get('texture_row')]
  print(f'\n## texture: {len(rows)} objects\n')
  print('| object | faces (NeuS) | faces (textured) | PSNR vertex colours | PSNR texture | gain dB | bake s (atlas / views) | texels seen |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')
  print('\n'.join(rows))
  v = np.array([[float(x) for x in r.split('|')[4:6]] for r in rows])
  bake = np.array([float(r.split('|')[7].split()[0]) for r in rows])
  gain = v[:, 1] - v[:, 0]
  print(f'| **mean** | | | {v[:, 0].mean():.2f} | {v[:, 1].mean():.2f} | {gain.mean():+.2f} | {bake.mean():.1f} | |')
  print(f'\ntexture better on {int((gain > 0).sum())} of {len(rows)}; gains {gain.min():+.2f} .. {gain.max():+.2f} dB')


def machines_paragraph(d) -> str:
  """Which machine made which rows, and the objects reconstructed on two machines side by side."""
  by = {}
  for o in sorted(d):
    by.setdefault(d[o].get('machine', EARLIER), []).append(o)
  where = '; '.join(f'{m}: {", ".join(objs)}' for m, objs in by.items())
  both = [o for o in sorted(d) if 'earlier' in d[o]]
  if not both:
    return f'Machines: {where}.'
  pairs = ', '.join(f"{o} {d[o]['earlier']['chamfer']:.4f} -> {d[o]['chamfer']:.4f} "
                    f"({d[o]['earlier']['iou']:.3f} -> {d[o]['iou']:.3f})" for o in both)
  dc = np.array([d[o]['chamfer'] - d[o]['earlier']['chamfer'] for o in both])
  return (f'Machines: {where}. Reconstructed on both, same settings and seed (Chamfer, IoU in brackets, earlier -> '
          f'later): {pairs}; mean Chamfer change {dc.mean():+.4f}, largest {np.abs(dc).max():.4f}. The same code on '
          f'the same machine repeats to every digit (alarm and hat, 2026-11-30 and 2026-12-01), but another CPU '
          f'rounds its vector code differently and 800 float32 NeuS steps carry that into the mesh. A per-object '
          f'difference of that size between two mask methods (the GT-alpha column was measured in an earlier session, on an earlier machine) is '
          f'noise; the means over the 20 objects are what the table says.')


def texture_machines(d) -> str:
  both = [o for o in sorted(d) if d[o].get('earlier', {}).get('texture_row')]
  gain = lambda row: float(row.split('|')[6])
  text = ('Each row is from the reconstruction of the same object in docs/matting.md, on the machine named there. '
          'alarm and hat, reconstructed twice on one machine (2026-11-30 and 2026-12-01), gave the same PSNRs to '
          '0.01 dB; only the bake times differed, with the load.')
  if both:
    text += (' Reconstructed on both machines (gain in dB, earlier -> later): ' +
             ', '.join(f"{o} {gain(d[o]['earlier']['texture_row']):+.2f} -> {gain(d[o]['texture_row']):+.2f}" for o in both)
             + '.')
  return text


def write_docs(_):
  """Rewrites the three partial tables (and the sentences that count them) in docs/ from the records."""
  import contextlib
  import io
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    tables(None)
  out = buf.getvalue()
  os.chdir(ROOT)
  sec = dict(re.findall(r'## (\w[^:\n]*?): \d+ objects?\n\n(.*?)(?=\n## |\Z)', out, re.S))
  def part(name):   # the table lines of one section (blank lines between its tables kept)
    text = [s for k, s in sec.items() if k.startswith(name)][0].strip()
    return '\n'.join(l for l in text.split('\n') if l.startswith('|') or not l.strip()).strip()
  nm = int(re.search(r'NeuS with plain masks: (\d+)', out).group(1))
  m_ = re.search(r'Chamfer mean ([+-][\d.]+) \(([+-][\d.]+) \.\. ([+-][\d.]+)\), IoU mean ([+-][\d.]+) \(([+-][\d.]+) \.\. ([+-][\d.]+)\); plain better in Chamfer on (\d+)', out)
  mean_row = re.search(r'\| \*\*mean of \d+\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \| ([\d.]+) \| ([\d.]+)', out)
  diff_sentence = (f"Over these {nm} objects the masks from `plain` against the GT alpha: mean Chamfer {mean_row.group(1)} against {mean_row.group(3)}, "
                   f"mean IoU {mean_row.group(2)} against {mean_row.group(4)}. Per object the differences go both ways: Chamfer {m_.group(2)} to {m_.group(3)}, "
                   f"IoU {m_.group(5)} to {m_.group(6)}; `plain` is better in Chamfer on {m_.group(7)} of the {nm}. Their views' masks score 0.9957 "
                   f"mean IoU on exact white (below)." + (f" The other {20 - nm} objects are still to run." if nm < 20 else ''))
  ne = int(re.search(r'elevation \(b\): (\d+)', out).group(1))
  nt = int(re.search(r'texture: (\d+)', out).group(1))
  # matting.md
  p = 'docs/matting.md'; s = open(p).read()
  a = s.index('### The NeuS table with `plain` masks'); b = s.index('`PYTHONPATH=. python benchmarks/matting.py')
  count = 'all 20 objects' if nm == 20 else f'partial ({nm} of the 20 objects)'
  new = f"""### The NeuS table with `plain` masks: {count}

`PYTHONPATH=. python benchmarks/neus_gso.py --gso PATH/gso-eval --no-alpha --extra=--config.matting=plain --objects OBJ[,OBJ...]` (then `benchmarks/gso_records.py add`, see its docstring)
reconstructs from the GT views composited on white without alpha, so the masks come from `plain`. The configuration is the same as docs/neus.md's table (configs/neus_fast.py, 800 steps, the same seed); only the masks differ from the GT alpha.
The objects are run one at a time in the background, across sessions (a machine's files do not outlive its session), and each
finished object's figures go into `docs/data/gso_plain_masks.json`; `PYTHONPATH=. python benchmarks/gso_records.py tables`
prints this table from it. Minutes are on a 2-core CPU shared with CI runs and other work, so they are not comparable
between objects (alone: about 10 minutes).

{part('NeuS with plain masks')}

{machines_paragraph(json.load(open(RECORDS)))}

{diff_sentence}

"""
  s = s[:a] + new + s[b:]
  open(p, 'w').write(s)
  # elevation.md (b)
  p = 'docs/elevation.md'; s = open(p).read()
  a = s.index('**Partial: ') if '**Partial: ' in s else s.index('**All 20 objects.**')
  b = s.index('The weak cases are')
  el = part('elevation (b)')
  if ne == 20:     # the verdict on the targets (b): median <= 5 deg, p90 <= 10 deg, for each mesh
    rows = re.findall(r'\| NeuS (\S+) \| 20 \| \d+ \| ([\d.]+)° \| ([\d.]+)° \|', el)
    verdict = ' '.join(f'{m}: median {md}°, p90 {p9}°, target {"met" if float(md) <= 5 and float(p9) <= 10 else "NOT met"}.'
                       for m, md, p9 in rows)
    head, judged = '**All 20 objects.**', f'Targets (median ≤ 5°, p90 ≤ 10°), {verdict}'
  else:
    head, judged = f'**Partial: {ne} objects of 20.**', 'The targets are judged on all 20.'
  new = f"""{head} The NeuS reconstructions from the GT views are run object by object
(`benchmarks/neus_gso.py --no-alpha --extra=--config.matting=plain`, about 5–35 min each on a 2-core CPU,
depending on the machine and its load), in the background across sessions; each finished object's estimates go into
`docs/data/gso_plain_masks.json`, and `PYTHONPATH=. python benchmarks/gso_records.py tables` prints this table.
{judged} (The s/estimate column times only the estimates run since that file exists.)

{el}

"""
  s = s[:a] + new + s[b:]
  open(p, 'w').write(s)
  # export.md
  p = 'docs/export.md'; s = open(p).read()
  s = re.sub(r'\*\*(partial, \d+ of the 20|all 20) objects with a GT mesh\*\*',
             '**all 20 objects with a GT mesh**' if nt == 20 else f'**partial, {nt} of the 20 objects with a GT mesh**', s)
  a = s.index(' objects baked'); a = s.rindex('\n', 0, a) + 1
  b = s.index('The textured mesh re-renders the views better')
  table = part('texture')
  new = f"""{nt} objects baked, run object by object as their reconstructions finish (the records: `docs/data/gso_plain_masks.json`;
`PYTHONPATH=. python benchmarks/gso_records.py tables` prints this table). The bake seconds depend on the machine's load.

{table}

{texture_machines(json.load(open(RECORDS)))}

"""
  s = s[:a] + new + s[b:]
  gains = [float(r.split('|')[6]) for r in table.split('\n')[2:-1]]
  so_far = '' if nt == 20 else ' so far'
  better = f'all {nt} objects{so_far}' if min(gains) > 0 else f'{sum(g > 0 for g in gains)} of {nt} objects{so_far}'
  mean_gain = re.search(r'\| \*\*mean\*\* \| \| \| [\d.]+ \| [\d.]+ \| ([+-][\d.]+)', table).group(1)
  s = re.sub(r'The textured mesh re-renders the views better on [\w ]+? objects( so far)? \(mean [+-][\d.]+ dB\)',
             f'The textured mesh re-renders the views better on {better} (mean {mean_gain} dB)', s)
  open(p, 'w').write(s)
  print(f'docs updated: {nm} objects in docs/matting.md, {ne} in docs/elevation.md, {nt} in docs/export.md')



def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='cmd', required=True)
  a = sub.add_parser('add')
  a.add_argument('--recon', required=True)
  a.add_argument('--elevation', required=True)
  a.add_argument('--texture', required=True)
  a.add_argument('objects', nargs='+')
  a.set_defaults(fn=add)
  sub.add_parser('tables').set_defaults(fn=tables)
  sub.add_parser('docs').set_defaults(fn=write_docs)
  args = p.parse_args(argv)
  args.fn(args)


if __name__ == '__main__':
  main()
