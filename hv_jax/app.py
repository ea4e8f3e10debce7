"""The photo-to-asset pipeline as a local web app (Gradio): upload a photo, generate N instances of 16 views,
reconstruct the chosen one, download the mesh.

  python -m hv_jax.app --config=configs/app.py                    # the demo: tiny random model (a banner says so)
  python -m hv_jax.app --config=configs/app.py --config.checkpoint=checkpoints/syncdreamer.ckpt --config.port=7860

The weights are loaded and the sampler compiled once, at start; requests wait in Gradio's queue and run one at a
time on the devices. Every request's outputs are written to OUTPUT/<run id>/ as `python -m hv_jax.image_to_3d`
writes them (hv_jax.pipeline.service). Needs the extra: pip install -e '.[app]'. docs/app.md.
"""

import dataclasses
import html
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, List, Tuple

import numpy as np
from absl import logging
from PIL import Image

from hv_jax import cli, optional
from hv_jax.errors import UserError, in_block
from hv_jax.pipeline import image_to_3d
from hv_jax.pipeline.image_to_3d import ImageTo3DSettings
from hv_jax.pipeline.service import Cancelled, Choices, Job, Run, Service
from hv_jax.sample import convert_ckpt

OWNED = ('input', 'output_dir', 'checkpoint', 'select', 'overwrite')   # fields of the request blocks the app sets
GUIDANCE = [('HarmonyView (s1, s2)', 'harmonyview'), ('CFG (scale)', 'cfg'), ('none', 'none')]
BANNER = ('RANDOM WEIGHTS: this demo runs a tiny randomly initialised model, so its views are noise and its mesh '
          'a blob; it shows the pipeline, not HarmonyView. Start the app with --config.checkpoint=... for real '
          'results (docs/app.md).')
POLL_S = 0.25      # how often a request's progress is shown


@dataclasses.dataclass(frozen=True)
class AppSettings:
  """Every setting of `python -m hv_jax.app` (configs/app.py)."""
  host: str = '127.0.0.1'          # address to serve on (0.0.0.0: every network interface)
  port: int = 7860
  output_dir: str = 'outputs/app'  # every request's outputs, in a run folder each (the command's layout)
  checkpoint: str = 'random'       # as hv_jax.image_to_3d's; 'random': the demo (the `demo` block, a banner)
  max_file_size: str = '50mb'      # largest upload
  queue_size: int = 16             # requests waiting at most (more are refused)
  warm_up: bool = True             # compile the sampler at start (else on the first request)
  image_to_3d: ImageTo3DSettings = ImageTo3DSettings()   # a request with real weights; the widgets start here
  demo: ImageTo3DSettings = ImageTo3DSettings()          # a request with checkpoint='random'

  def request_base(self) -> ImageTo3DSettings:
    """The settings every request starts from: the block of the weights, with the checkpoint."""
    block = 'demo' if self.checkpoint == 'random' else 'image_to_3d'
    for name in OWNED:
      if getattr(getattr(self, block), name) != getattr(ImageTo3DSettings(), name):
        how = {'checkpoint': ': use --config.checkpoint', 'output_dir': ': use --config.output_dir',
               'input': ' (the uploaded image)', 'select': ' (the instance picked on the page)'}.get(name, '')
        raise UserError(f'--config.{block}.{name} is set by the app{how}')
    return dataclasses.replace(getattr(self, block), checkpoint=self.checkpoint)

  def validate(self) -> None:
    if not 1 <= int(self.port) <= 65535:
      raise UserError(f'--config.port={self.port}: must be in [1, 65535]')
    if int(self.queue_size) < 1:
      raise UserError(f'--config.queue_size={self.queue_size}: must be >= 1')
    if not self.output_dir:
      raise UserError('no output folder: set --config.output_dir=DIR')
    block = 'demo' if self.checkpoint == 'random' else 'image_to_3d'
    # every request setting but the image, named as the app's flags (--config.demo.sample.s1); the other block,
    # unused with these weights, is checked too (a mistake there is one all the same)
    base = dataclasses.replace(self.request_base(), input='-')      # (its own messages name the app's flags)
    in_block(f'{block}.', base.validate)
    other = 'image_to_3d' if block == 'demo' else 'demo'
    in_block(f'{other}.', lambda: dataclasses.replace(getattr(self, other), input='-').validate())


# ----------------------------------------------------------------------------------------------- requests

def run_job(service: Service, session: str, work: Callable[[Run], Any], progress) -> Any:
  """work(run) in a thread holding the devices, its progress shown through `progress` (gr.Progress works in
  the request's thread only) until it ends; returns its result or raises its exception."""
  box: dict = {}

  def target():
    try:
      with service.running(session) as run:
        box['run'] = run
        box['value'] = work(run)
    except BaseException as e:  # noqa: BLE001  (handed to the request's thread)
      box['error'] = e

  worker = threading.Thread(target=target, name='hv_jax.app job', daemon=True)
  worker.start()
  while worker.is_alive():
    run = box.get('run')
    progress(run.fraction if run else 0.0, desc=run.text if run else 'waiting for the device')
    worker.join(POLL_S)
  if 'error' in box:
    if box.get('run') is not None and box['run'].cancelled:
      raise Cancelled
    raise box['error']
  return box['value']


def one_line(e: BaseException) -> str:
  """The status line of a failed request: a UserError's line as the command prints it, else the error's kind
  (its traceback goes to the log)."""
  if isinstance(e, Cancelled):
    return 'cancelled'
  if isinstance(e, UserError):
    return 'error: ' + cli.one_line(str(e).splitlines()[0] if str(e) else type(e).__name__)
  logging.error('request failed:\n%s', ''.join(traceback.format_exception(e)))
  return f'error: internal error ({type(e).__name__}: {cli.one_line(str(e))[:300]}); the log has the traceback'


def status_html(text: str) -> str:
  kind = 'error' if text.startswith(('error:', 'cancelled')) else 'ok'
  return f'<div class="hv-status hv-{kind}">{html.escape(text)}</div>'


def thumbnail(path: Path, side: int = 256) -> np.ndarray:
  img = Image.open(path)
  img.thumbnail((side, side))
  return np.asarray(img.convert('RGBA'))


def on_checkerboard(rgba: np.ndarray, cell: int = 8) -> np.ndarray:
  """An RGBA cut-out over a grey checkerboard: what was cut away shows."""
  h, w = rgba.shape[:2]
  yy, xx = np.mgrid[:h, :w]
  board = np.where(((yy // cell) + (xx // cell)) % 2, 205, 245).astype(np.float32)[..., None]
  a = rgba[..., 3:].astype(np.float32) / 255
  return (rgba[..., :3] * a + board * (1 - a)).round().astype(np.uint8)


def gallery_items(job: Job) -> Tuple[list, list, int]:
  """(gallery items: the 16 views of each instance as one row, the chosen one marked; radio choices; chosen)."""
  record = job.rounds[-1]
  chosen = int(record['chosen'])
  items, choices = [], []
  for k, views in enumerate(job.views()):
    total = record['scores'][k].get('total')
    mark = ' ★ best' if k == chosen else ''
    for j, v in enumerate(views):
      items.append((v, f'#{k}{mark}' if j == 0 else None))
    score = f'score {total:.3f}' if isinstance(total, (int, float)) and np.isfinite(total) else 'no usable mask'
    choices.append((f'#{k}{mark} ({score})', k))
  return items, choices, chosen


def downloads(report: dict, job: Job) -> List[str]:
  """The files to download: GLB, OBJ + MTL + texture, the chosen views' strip, report.json."""
  out = report['outputs']
  names = [out.get(k) for k in ('glb', 'obj', 'mtl', 'texture')]
  names += [str(Path(report['final_round']) / 'views.png'), image_to_3d.REPORT]
  return [str(job.folder / n) for n in names if n and (job.folder / n).is_file()]


# ----------------------------------------------------------------------------------------------- the page

CSS = '''
#hv-banner {background: #c62828; color: #fff; font-weight: 600; padding: 10px 14px; border-radius: 6px;}
.hv-status {padding: 6px 10px; border-radius: 4px; font-family: monospace;}
.hv-error {background: #fdecea; color: #b71c1c;}
.hv-ok {background: #eef5ee; color: #1b5e20;}
#views .grid-container {grid-template-columns: repeat(16, minmax(0, 1fr)) !important; grid-template-rows: none !important;
  grid-auto-rows: auto !important; gap: 4px !important;}
#views .grid-wrap.fixed-height {min-height: 0 !important; max-height: none !important; overflow-y: visible !important;}
'''


def build(service: Service, s: AppSettings):
  """The Gradio page wired to `service`."""
  gr = optional.gradio()
  base = service.base
  c = Choices.of(base)
  auto = c.elevation == 'auto'
  elevation0 = float(base.elevation_prior if auto else base.elevation_deg())
  device = dict(concurrency_limit=1, concurrency_id='device')

  # Gradio's copies of the shown and downloadable files: removed a day after they were made (checked hourly)
  with gr.Blocks(title='hv_jax: one image to 3D', delete_cache=(3600, 86400)) as page:
    gr.HTML(f'<div id="hv-banner">{html.escape(BANNER)}</div>', visible=service.random_weights)
    gr.Markdown('## hv_jax: one image → 16 views (HarmonyView) → mesh\n'
                f'Weights: `{html.escape(base.checkpoint)}`. Outputs: `{html.escape(str(service.output))}/<run>/`.')
    job = gr.State(None)
    with gr.Row():
      with gr.Column():
        upload = gr.File(label='image (any photo, or an RGBA cut-out)', file_types=['image'], type='filepath',
                         elem_id='upload')
        with gr.Row():
          photo = gr.Image(label='photo', interactive=False, height=220, elem_id='photo')
          cutout = gr.Image(label='cut-out, framed (the model input)', interactive=False, height=220,
                            elem_id='cutout')
      with gr.Column():
        elevation_auto = gr.Checkbox(value=auto, label="elevation 'auto' (estimated from a first reconstruction)")
        elevation = gr.Slider(-10, 40, value=elevation0, step=0.5, label='input elevation (degrees)',
                              interactive=not auto, elem_id='elevation')
        guidance = gr.Radio(GUIDANCE, value=c.guidance, label='guidance')
        with gr.Row():
          s1 = gr.Slider(0, 5, value=c.s1, step=0.1, label='s1 (consistency)')
          s2 = gr.Slider(0, 5, value=c.s2, step=0.1, label='s2 (diversity)')
          cfg = gr.Slider(0, 10, value=c.cfg_scale, step=0.1, label='CFG scale')
        with gr.Row():
          steps = gr.Slider(1, 200, value=c.sample_steps, step=1, label='DDIM steps', elem_id='steps')
          instances = gr.Slider(1, 8, value=c.sample_num, step=1, label='instances', elem_id='instances')
          seed = gr.Number(value=c.seed, precision=0, label='seed', elem_id='seed')
        with gr.Row():
          generate = gr.Button('Generate', variant='primary', elem_id='generate')
          cancel = gr.Button('Cancel', variant='stop', elem_id='cancel')
    status = gr.HTML(status_html('upload an image'), elem_id='status')
    gallery = gr.Gallery(label='16 views per instance (one row each; ★ = the best score)', columns=16,
                         allow_preview=False, elem_id='views')
    with gr.Row():
      chosen = gr.Radio([], label='instance to reconstruct', elem_id='instance')
      reconstruct = gr.Button('Reconstruct', variant='primary', elem_id='reconstruct')
    with gr.Row():
      mesh = gr.Model3D(label='mesh', height=420, elem_id='mesh')
      files = gr.File(label='downloads', file_count='multiple', interactive=False, elem_id='downloads')

    def on_upload(path):
      cleared = (None, gr.update(choices=[], value=None), None, None)
      if not path:
        return (None, None, None, status_html('upload an image')) + cleared
      try:
        j = service.upload(path)
      except UserError as e:
        return (None, None, None, status_html(one_line(e))) + cleared
      notes = ''.join(f'; {n}' for n in j.prep.get('notes', []))
      text = (f"cut out with the {j.prep['matting']} matte{notes}, framed to {base.crop_size} px of 256; "
              f'run folder {j.run_dir}')
      return (j, thumbnail(j.photo), on_checkerboard(np.asarray(Image.open(j.cutout).convert('RGBA'))),
              status_html(text)) + cleared

    def on_generate(j, is_auto, el, mode, v1, v2, v3, n_steps, v_seed, n, request: gr.Request,
                    progress=gr.Progress()):
      if j is None:
        return j, gr.update(), gr.update(), status_html('error: upload an image first')
      choice = Choices('auto' if is_auto else f'{float(el):g}', mode, v1, v2, v3, n_steps, v_seed, n)
      t0 = time.time()
      try:
        j = run_job(service, request.session_hash, lambda run: service.generate(j, choice, run), progress)
      except Exception as e:  # noqa: BLE001  (one line; the app goes on serving)
        return gr.update(), [], gr.update(choices=[], value=None), status_html(one_line(e))
      items, choices, best = gallery_items(j)
      text = (f'{len(choices)} instances at {j.rounds[-1]["elevation_deg"]:.1f} deg in {time.time() - t0:.0f} s; '
              f'#{best} has the best score; {j.folder}')
      return j, items, gr.update(choices=choices, value=best), status_html(text)

    def on_reconstruct(j, k, request: gr.Request, progress=gr.Progress()):
      if j is None or j.settings is None or k is None:
        return None, None, status_html('error: generate the views first')
      t0 = time.time()
      try:
        report = run_job(service, request.session_hash, lambda run: service.reconstruct(j, int(k), run), progress)
      except Exception as e:  # noqa: BLE001
        return None, None, status_html(one_line(e))
      text = f'instance #{int(k)} reconstructed in {time.time() - t0:.0f} s: {j.folder / "mesh.glb"}'
      return str(j.folder / report['outputs']['glb']), downloads(report, j), status_html(text)

    def on_cancel(request: gr.Request):      # Gradio drops the session's events; its running job stops too
      service.cancel(request.session_hash)
      return status_html('cancelled')

    def on_pick(evt: gr.SelectData):
      return evt.index // 16 if isinstance(evt.index, int) else gr.update()

    outputs = [job, photo, cutout, status, gallery, chosen, mesh, files]
    upload.upload(on_upload, upload, outputs)
    upload.clear(on_upload, upload, outputs)
    elevation_auto.change(lambda a: gr.update(interactive=not a), elevation_auto, elevation, queue=False)
    gen = generate.click(on_generate, [job, elevation_auto, elevation, guidance, s1, s2, cfg, steps, seed, instances],
                         [job, gallery, chosen, status], **device)
    gallery.select(on_pick, None, chosen, queue=False)
    rec = reconstruct.click(on_reconstruct, [job, chosen], [mesh, files, status], **device)
    cancel.click(on_cancel, None, status, cancels=[gen, rec], queue=False)
  return page


# ----------------------------------------------------------------------------------------------- the command

def serve(s: AppSettings) -> int:
  s.validate()
  base = s.request_base()
  gr = optional.gradio()            # a missing extra is one line, before the weights are loaded
  t0 = time.time()
  print(f'loading the weights ({base.checkpoint}) and compiling the sampler ...', flush=True)
  service = Service(base, s.output_dir, convert_ckpt, warm_up=bool(s.warm_up))
  print(f'ready in {time.time() - t0:.0f} s (compiling and one warm-up batch: {service.warm_up_seconds:.0f} s)',
        flush=True)
  if service.random_weights:
    print('RANDOM WEIGHTS: the app serves the tiny random demo model (set --config.checkpoint)', flush=True)
  page = build(service, s)
  page.queue(max_size=int(s.queue_size), default_concurrency_limit=1)
  page.launch(server_name=str(s.host), server_port=int(s.port), share=False, inbrowser=False, show_error=False,
              max_file_size=str(s.max_file_size), allowed_paths=[str(Path(s.output_dir).resolve())],
              ssr_mode=False, css=CSS, theme=gr.themes.Default())
  return 0


def main(argv=None) -> int:
  logging.set_verbosity(logging.WARNING)
  return cli.main(argv, AppSettings, serve, prog='python -m hv_jax.app', doc=__doc__,
                  missing_hint='pass --config=configs/app.py')


if __name__ == '__main__':
  sys.exit(main())
