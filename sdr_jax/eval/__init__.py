"""sdr_jax.eval."""
