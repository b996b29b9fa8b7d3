"""ae_jax: autoencoders (AE, CAE and their denoising variants) in JAX and Flax."""


class UserError(Exception):
  """A problem the user can fix; the message names it and the fix. main prints it as one line."""
