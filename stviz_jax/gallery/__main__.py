"""`python -m stviz_jax.gallery --workdir=DIR`: see `stviz_jax.gallery`."""

from stviz_jax import cli
from stviz_jax.gallery import builder

if __name__ == "__main__":
  builder.define_flags()
  cli.run_absl(builder.main)
