"""Repo-root pytest config: keeps JAX from grabbing all GPU memory when torch shares the process."""
import os

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
