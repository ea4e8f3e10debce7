"""Evaluation metrics of HarmonyView: geometry (Chamfer distance, volume IoU)."""
