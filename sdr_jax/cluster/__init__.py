"""sdr_jax.cluster."""
