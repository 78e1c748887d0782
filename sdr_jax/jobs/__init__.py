"""Floor 6: the jobs (clustering, routing, evaluation, the pipeline stage runner)."""
