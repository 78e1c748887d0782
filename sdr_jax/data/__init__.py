"""sdr_jax.data."""
