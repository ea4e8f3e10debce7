"""Large-scale diversity studies (guidance-scale sweeps over many inputs and seeds, for TPU pods).

Built on `hv_jax.sampling` (traced scales: a sweep compiles once) and `hv_jax.parallel`; see the issue
tracker for the study runner and report that will live here.
"""
