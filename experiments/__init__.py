"""Large-scale diversity studies: guidance-scale sweeps over many inputs and seeds, resumable, multi-host.

  diversity.py   the study runner (python -m experiments.diversity --config=experiments/configs/...)
  store.py       the results store: atomic strips + one SQLite shard per process (kill -9 safe)
  report.py      tables, plots and a self-contained HTML page (python -m experiments.report --config.results=RESULTS)
  data/          inputs: the GSO eval set through a TFDS builder, or a folder of the user's images
  configs/       scale_sweep.py (the real study), demo_sweep.py (tiny random model, CPU)

Built on `hv_jax.sampling` (scales are traced data: one compilation per guidance mode serves a sweep),
`hv_jax.parallel` (meshes, per-process shares) and `hv_jax.metrics`. Throughput figures: docs/scaling.md.
"""
