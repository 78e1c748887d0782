"""Floor 3: self-supervised methods (their heads, extra state and losses) and distillation."""
