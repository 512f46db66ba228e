"""What every rollout backend returns (`Samples`) and the interface they share (`Sampler`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Samples:
    """Generations for a list of prompts, `num_samples` each, grouped: sample j of prompt i is row i*G+j.

    response_ids: token ids without padding, ending in EOS when `finished`.
    logprobs: the sampler's log-probability of each response token (at the sampling temperature).
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]
    texts: list[str] = field(default_factory=list)


class Sampler(Protocol):
    def generate(self, prompt_ids: list[list[int]], num_samples: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 128, seeds: list[int] | None = None) -> Samples:
        """seeds: one per prompt, the seed of its samples' own random stream (None: the sampler's default)."""
