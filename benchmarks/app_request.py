"""One request of the web app (python -m hv_jax.app) end to end, as a person makes it, timed (docs/app.md).

  PYTHONPATH=. python benchmarks/app_request.py [--image PATH] [--json F] [-- app flags ...]

Starts the app (configs/app.py and the flags after `--`; by default the demo: tiny random model) on a free port
in a subprocess, opens the page in headless Chromium (Playwright with the system's /usr/bin/chromium), uploads
the image (default: the bundled GSO view), clicks Generate, waits for the views, clicks Reconstruct (the best
instance) and waits for the mesh. Prints the seconds of the start-up, of each click and of the request (upload to
mesh), wall-clock and the app process's CPU seconds (the wall time depends on what else the machine runs). Every request the page makes outside the app is refused and listed (the page must work offline).

tests/test_app.py drives the app with these functions.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = '/usr/bin/chromium'
GSO_VIEW = ROOT / 'hv_jax' / 'assets' / 'demo' / 'bell' / '000.png'
# WebGL in a headless browser without a GPU: Chromium's software renderer, for the 3D viewer
BROWSER_ARGS = ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Served(str):
  """The app's URL, with its process (`.process`)."""
  process: subprocess.Popen

  def cpu_seconds(self) -> float:
    """CPU seconds the app's process has used (user + system; Linux)."""
    fields = Path(f'/proc/{self.process.pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


@contextlib.contextmanager
def serving(flags, out: Path, log: Path, start_s: float = 1800, env=None):
  """python -m hv_jax.app with configs/app.py and `flags`, outputs in `out`, until the context ends: yields its URL
  (a `Served`) once the page answers."""
  port = free_port()
  cmd = [sys.executable, '-m', 'hv_jax.app', f'--config={ROOT}/configs/app.py', f'--config.port={port}',
         f'--config.output_dir={out}', *flags]
  env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
  with open(log, 'w') as f:
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
  url = Served(f'http://127.0.0.1:{port}/')
  url.process = p
  t0 = time.time()
  try:
    while True:
      if p.poll() is not None or time.time() - t0 > start_s:
        raise RuntimeError(f'the app did not start ({time.time() - t0:.0f} s):\n' + log.read_text()[-3000:])
      try:
        urllib.request.urlopen(url, timeout=5)
        break
      except OSError:
        time.sleep(1)
    yield url
  finally:
    p.terminate()
    try:
      p.wait(30)
    except subprocess.TimeoutExpired:
      p.kill()


def open_page(browser, url: str, width: int = 1400, height: int = 1700):
  """The app's page; `page.external` lists the requests it tried outside the app (refused)."""
  page = browser.new_page(viewport={'width': width, 'height': height})
  page.external = []

  def route(r):
    if r.request.url.startswith(url):
      r.continue_()
    else:
      page.external.append(r.request.url)
      r.abort()
  page.route('**/*', route)
  page.goto(url)
  page.wait_for_selector('#generate', timeout=60_000)
  return page


def status(page, *words, timeout_s: float = 1800) -> str:
  """The status line, once it holds one of `words`."""
  page.wait_for_function('words => words.some(w => document.querySelector("#status").innerText.includes(w))',
                         arg=list(words), timeout=timeout_s * 1000, polling=200)
  return page.inner_text('#status').strip()


def upload(page, path) -> str:
  """Uploads `path` (after clearing the upload box, which resets the page); returns the status line."""
  clear = page.locator('#upload button[aria-label="Clear"]')
  if clear.count():
    clear.click()
  status(page, 'upload an image', timeout_s=60)
  page.set_input_files('#upload input[type=file]', str(path))
  return status(page, 'run folder', 'error:')


def generate(page, instances: int, timeout_s: float = 1800):
  """Clicks Generate; returns (the DDIM-step progress texts shown meanwhile, the status line)."""
  seen = set()
  page.click('#generate')
  t0 = time.time()
  while page.locator('#views img').count() < instances * 16 and 'error' not in page.inner_text('#status'):
    if time.time() - t0 > timeout_s:
      raise TimeoutError(f'no views after {timeout_s} s: {page.inner_text("#status")}')
    seen.update(re.findall(r'DDIM step \d+ of \d+', page.inner_text('body')))
    time.sleep(0.1)
  return seen, status(page, 'instances at', 'error:', timeout_s=timeout_s)


def reconstruct(page, instance=None, timeout_s: float = 1800) -> str:
  """Picks `instance` (None: the one marked best), clicks Reconstruct; returns the status line."""
  if instance is not None:
    page.locator('#instance label').nth(int(instance)).click()
  page.click('#reconstruct')
  return status(page, 'reconstructed', 'error:', timeout_s=timeout_s)


def save_screenshot(page, path, width: int = 1000) -> None:
  """The whole page as a small PNG (docs/app.png): scaled to `width` px, 256 colours."""
  from PIL import Image
  img = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert('RGB')
  img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
  img.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--image', default=str(GSO_VIEW))
  ap.add_argument('--out', default='outputs/app_request')
  ap.add_argument('--json', default='')
  ap.add_argument('flags', nargs='*', help='app flags (after --)')
  a = ap.parse_args(argv)
  from playwright.sync_api import sync_playwright   # lazy: the optional extra app
  out = Path(a.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  times = {}
  t0 = time.time()
  with serving(a.flags, out, out / 'app.log') as url, sync_playwright() as pw:
    times['start_s'], times['start_cpu_s'] = time.time() - t0, url.cpu_seconds()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    page = open_page(browser, url)
    instances = int(page.locator('#instances input[type=number]').input_value())
    t1, c1 = time.time(), url.cpu_seconds()
    for name, step in (('upload', lambda: upload(page, a.image)), ('generate', lambda: generate(page, instances)[1]),
                       ('reconstruct', lambda: reconstruct(page))):
      t, c = time.time(), url.cpu_seconds()
      print(step(), flush=True)
      times[f'{name}_s'], times[f'{name}_cpu_s'] = time.time() - t, url.cpu_seconds() - c
    times['request_s'], times['request_cpu_s'] = time.time() - t1, url.cpu_seconds() - c1
    times['load_average'] = os.getloadavg()
    times['external_requests'] = page.external
    browser.close()
  print(json.dumps(times, indent=1))
  if a.json:
    Path(a.json).write_text(json.dumps(times, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
