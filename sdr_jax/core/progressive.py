"""Data-aware progressive training: which paths may be trained at which step (DESIGN §2.4).

Stage 0 trains the SDRnet alone; stage s lets the last s SDR blocks vary (the first L-s take all
their groups), until stage L holds all G^L full paths. Without progression (the ablation) every
step is in stage L.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sdr_jax.core.errors import ConfigError
from sdr_jax.core.paths import PathSpec


@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
    spec: PathSpec
    stage_starts: tuple[int, ...]  # first step (1-based) of stages 0..L

    @classmethod
    def make(cls, spec: PathSpec, num_steps: int, stage_fractions=(), progressive: bool = True
             ) -> "ProgressiveSchedule":
        """Stages of the given fractions of `num_steps` (default: L+1 equal stages)."""
        num_stages = spec.num_blocks + 1
        if not progressive:
            return cls(spec, (1,) + (1,) * spec.num_blocks)
        fractions = tuple(stage_fractions) or (1.0 / num_stages,) * num_stages
        if len(fractions) != num_stages:
            raise ConfigError(
                f"sdr.stage_fractions has {len(fractions)} entries, but {spec.num_blocks} SDR "
                f"blocks make {num_stages} stages (0..{spec.num_blocks}); give one per stage.")
        if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
            raise ConfigError(f"sdr.stage_fractions={fractions} must be >= 0 and sum to 1.")
        ends = np.round(np.cumsum(fractions) * num_steps).astype(int)
        return cls(spec, tuple(int(e) + 1 for e in np.concatenate([[0], ends[:-1]])))

    def stage_at(self, step: int) -> int:
        """The stage of a (1-based) step."""
        return int(np.searchsorted(np.asarray(self.stage_starts), step, side="right")) - 1

    def space_size(self, stage: int) -> int:
        return len(self.spec.stage_paths(stage))

    def sample_paths(self, seed: int, step: int, n: int) -> np.ndarray:
        """(n, L) paths for a step: distinct while the stage's space allows, a pure function of
        (seed, step) so that every host and every resumed run draws the same ones."""
        space = self.spec.stage_paths(self.stage_at(step))
        rng = np.random.default_rng([seed, step, 0x5D7])
        return space[rng.choice(len(space), n, replace=n > len(space))]
