"""The one user-facing error type: a problem the user can fix (input, settings, output folder, weights).

CLIs print it as one `error: ...` line and exit with code 2 (hv_jax.cli); nothing partial is left on disk.
"""


class UserError(Exception):
  """Bad input, settings or environment: reported as one line, non-zero exit, nothing partial written."""


class ConversionError(UserError):
  """Weights that cannot be read or do not fit the model: an original (PyTorch) file that `convert/` refuses,
  or a converted file (.npz) that does not hold the expected params. The first line is the message; a
  mismatch lists the offending keys on the following lines (two-space indented)."""
