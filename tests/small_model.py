"""The random model of the behaviour tests: the tiny model, smaller, lowered literally.

Tests that check what a run does -- its files, resume, determinism on 1, 8 and 2x4 devices, the memory knobs, the
app, the photo-to-asset command -- and compare the port with itself, not with the recorded fixtures, sample with
this model. It is `ModelConfig.tiny()` with:

- spatial transformers only in the middle block (`attention_resolutions=()`): that one still cross-attends to the
  CLIP embedding, and all ten DepthTransformers still attend into the frustum volumes, so every module type runs;
- a 1-layer CLIP image tower;
- the literal lowering (`conv_impl='xla'`, `attn_impl='reference'`).

It compiles in about 40% of the time of the tiny model under the CPU default lowering (docs/speed.md, "A smaller
model for the behaviour tests"). The tiny dims under both lowerings are checked against the PyTorch original by
test_model_parity.py, and under the default lowering up to the DDIM trajectory by test_sampler_parity.py.

Commands take it as a file (`--config.model=PATH`): tests/fixtures/small_model.json, which must be SMALL's
`to_json()`; if `ModelConfig.tiny()` changes, rewrite it with
`python -c "import sys; sys.path.insert(0, 'tests'); import small_model; small_model.write()"`.
"""
from __future__ import annotations

import dataclasses

from parity import ROOT

from hv_jax.models.config import ModelConfig

_TINY = ModelConfig.tiny()
SMALL = dataclasses.replace(_TINY, unet=dataclasses.replace(_TINY.unet, attention_resolutions=()),
                            clip=dataclasses.replace(_TINY.clip, vision_layers=1)).with_lowering('xla', 'reference')
PATH = ROOT / 'tests' / 'fixtures' / 'small_model.json'


def write() -> None:
  PATH.write_text(SMALL.to_json() + '\n')


if ModelConfig.from_json(PATH.read_text()) != SMALL:
  raise RuntimeError(f'{PATH} is not small_model.SMALL: rewrite it with small_model.write() (see its docstring)')
