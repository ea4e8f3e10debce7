"""The one user-facing error type: a problem the user can fix (input, settings, output folder, weights).

CLIs print it as one `error: ...` line and exit with code 2 (hv_jax.cli); nothing partial is left on disk.
"""


class UserError(Exception):
  """Bad input, settings or environment: reported as one line, non-zero exit, nothing partial written."""
