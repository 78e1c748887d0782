"""sdr_jax.train."""
