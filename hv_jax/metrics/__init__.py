"""Evaluation metrics of HarmonyView, each as the original evaluation scripts compute it.

image (PSNR, SSIM), lpips (VGG LPIPS), raft + flow (E_flow), cd_score (CLIP CD score), geometry (Chamfer
distance, volume IoU), stats (per-object best / average / variance, as the statistics scripts).
`python -m hv_jax.evaluate` runs them all over a GSO evaluation.
"""
