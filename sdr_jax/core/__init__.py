"""Floor 1: what every other package may use (paths and layouts, errors, the device mesh,
storage `io`, small `numerics`)."""
