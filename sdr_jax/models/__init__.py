"""sdr_jax.models."""
