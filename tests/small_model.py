"""The random model of the behaviour tests (tests/fixtures/small_model.json): the tiny model, smaller, lowered
literally.

Tests that check what a run does -- its files, resume, determinism on 1, 8 and 2x4 devices, the memory knobs, the
app, the photo-to-asset command -- and compare the port with itself, not with the recorded fixtures, sample with
this model. It is `ModelConfig.tiny()` with:

- spatial transformers only in the middle block (`attention_resolutions=()`): that one still cross-attends to the
  CLIP embedding, and all ten DepthTransformers still attend into the frustum volumes, so every module type runs;
- a 1-layer CLIP image tower;
- the literal lowering (`conv_impl='xla'`, `attn_impl='reference'`).

It compiles in about 40% of the time of the tiny model under the CPU default lowering (docs/speed.md, "Test
time"). The tiny dims under both lowerings are checked against the PyTorch original by test_model_parity.py and
test_sampler_parity.py; test_sample.py's demo run keeps the tiny model with the default lowering, end to end.
"""
from __future__ import annotations

from parity import ROOT

from hv_jax.models.config import ModelConfig

PATH = ROOT / 'tests' / 'fixtures' / 'small_model.json'
SMALL = ModelConfig.from_json(PATH.read_text())
FLAG = f'--config.model={PATH}'
