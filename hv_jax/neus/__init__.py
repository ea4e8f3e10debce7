"""NeuS surface reconstruction of HarmonyView (renderer/ of the original) in JAX.

  hv_jax.neus.fields   SDF / colour / variance networks (param dicts + pure functions), geometric init, NeuSConfig
  hv_jax.neus.render   near/far, hierarchical depth sampling, NeuS alpha compositing, losses
  (convert/neus.py in the checkout: PyTorch NeuSRenderer state_dict <-> param tree)

(The submodules are not shadowed: `from hv_jax.neus import render` gives the module.)
"""
from hv_jax.neus.fields import ColorConfig, NeuSConfig, SDFConfig, init_params  # noqa: F401
