"""sdr_jax.jobs.cluster."""
