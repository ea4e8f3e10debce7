"""The one user-facing error type: a problem the user can fix (input, settings, output folder, weights).

CLIs print it as one `error: ...` line and exit with code 2 (hv_jax.cli); nothing partial is left on disk.
"""


class UserError(Exception):
  """Bad input, settings or environment: reported as one line, non-zero exit, nothing partial written."""


class ConversionError(UserError):
  """Weights that cannot be read or do not fit the model: an original (PyTorch) file that `convert/` refuses,
  or a converted file (.npz) that does not hold the expected params. The first line is the message; a
  mismatch lists the offending keys on the following lines (two-space indented)."""


def in_block(prefix: str, check) -> None:
  """Runs `check()` (a nested settings block's validate) and names its fields from the outer config: a
  UserError's `--config.x` becomes `--config.<prefix>x` (prefix 'sample.' in hv_jax.image_to_3d)."""
  try:
    check()
  except UserError as e:
    raise type(e)(str(e).replace('--config.', f'--config.{prefix}')) from None
