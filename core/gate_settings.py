"""Per-concept inference settings (what "Load Rank-1 Concept" sets and "Gate Strength" replaces)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import ConceptError

KEY_LOCKS = ("local", "global")

# (min, max, step, tooltip) for each slider; nodes/ builds the widgets from this table.
SLIDERS = {
    "strength": (0.0, 2.0, 0.01, "How strongly the concept applies (lambda). 0 turns it off; the model is then exactly the base model."),
    "beta": (0.0, 2.0, 0.01, "Gate bias: the similarity at which a token is half edited. Lower = more concept fidelity, higher = more prompt alignment (paper: 0.6-0.75 local, 0.4-0.6 global; above 1 the gate closes even on the trigger itself)."),
    "tau": (0.01, 1.0, 0.01, "Gate temperature: how sharply the gate switches around beta. 0.15 is the paper's recommendation."),
    "start_percent": (0.0, 1.0, 0.001, "Part of the sampling schedule where the concept starts to act (0 = first step)."),
    "end_percent": (0.0, 1.0, 0.001, "Part of the sampling schedule after which the concept stops acting (1 = last step)."),
}


@dataclass(frozen=True)
class GateSettings:
    strength: float = 1.0
    beta: float = 0.7
    tau: float = 0.15
    key_lock: str = "local"
    start_percent: float = 0.0
    end_percent: float = 1.0

    def validated(self, where: str) -> "GateSettings":
        """Return self, or raise ConceptError naming ``where`` and the expected range."""
        for name, (lo, hi, _, _) in SLIDERS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
                raise ConceptError(f"{where}: {name} is {value!r}; expected a number from {lo} to {hi}")
        if self.key_lock not in KEY_LOCKS:
            raise ConceptError(f"{where}: key_lock is {self.key_lock!r}; expected 'local' or 'global'")
        if self.end_percent < self.start_percent:
            raise ConceptError(f"{where}: end_percent ({self.end_percent}) is before start_percent "
                               f"({self.start_percent}); expected start_percent <= end_percent")
        return replace(self, strength=float(self.strength), beta=float(self.beta), tau=float(self.tau),
                       start_percent=float(self.start_percent), end_percent=float(self.end_percent))

    @property
    def scheduled(self) -> bool:
        return self.start_percent > 0.0 or self.end_percent < 1.0
