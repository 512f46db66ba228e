"""The two batch types of an RL iteration: what the rollout collected (`Rollout`) and what scoring made of it
(`ScoredBatch`, torchtune's `Trajectory` in spirit). Row i*G+j is sample j of the batch's question i."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reftune.example import Example
from reftune.grading.grade import Grade
from reftune.model.sampler import Samples


@dataclass
class Rollout:
    """Rollout and reward for some questions: G samples each and their rewards.

    idx: the questions' positions in the training list; starts: the R^3 start state of each question (None
    without a curriculum); samples: the sampler's output (prompt and response ids, its log-probs, finished,
    texts); examples: the example of each row; scores [n*G]: the summed reward of each row; parts: each reward
    function's value per row (None = skipped); grades: the task's grade per row.
    """

    idx: list[int]
    starts: list | None
    samples: Samples
    examples: list[Example]
    scores: torch.Tensor
    parts: dict[str, list]
    grades: list[Grade]

    def groups(self, keep: list[int], G: int) -> Rollout:
        """The questions at positions `keep`, in that order, with their G rows each."""
        rows = [q * G + j for q in keep for j in range(G)]

        def pick(xs):
            return [xs[r] for r in rows]

        s = self.samples
        starts = None if self.starts is None else [self.starts[q] for q in keep]
        return Rollout([self.idx[q] for q in keep], starts,
                       Samples(pick(s.prompt_ids), pick(s.response_ids), pick(s.logprobs), pick(s.finished),
                               pick(s.texts)),
                       pick(self.examples), self.scores[rows], {k: pick(v) for k, v in self.parts.items()},
                       pick(self.grades))

    def __add__(self, other: Rollout) -> Rollout:
        s, o = self.samples, other.samples
        return Rollout(self.idx + other.idx, None if self.starts is None else self.starts + other.starts,
                       Samples(s.prompt_ids + o.prompt_ids, s.response_ids + o.response_ids,
                               s.logprobs + o.logprobs, s.finished + o.finished, s.texts + o.texts),
                       self.examples + other.examples, torch.cat([self.scores, other.scores]),
                       {k: v + other.parts[k] for k, v in self.parts.items()}, self.grades + other.grades)


@dataclass
class ScoredBatch:
    """A rollout as tensors on the training device, with what the trainer computed of it before the update.

    ids, attn [B, P+R]: prompt (left-padded to width P) + response (right-padded); mask [B, R]: 1 on response
    tokens; prompt_width: P; group_ids [B]: the question of each row; old_logp [B, R]: the policy's log-probs of
    the sampled tokens before the update; old_values [B, R]: its values (zeros without a value head);
    ref_logp [B, R] or None: the frozen reference's; sampler_logp [B, R]: the sampler's own (its precision);
    is_weights [B, R] or None: truncated importance weights min(p_trainer / p_sampler, tis_cap);
    update_forward: (log-probs, values or None, entropies) of the policy's scoring pass with their autograd graph, when
    that pass is the update's forward (`scoring.reuses_update_forward`), else None; prompt_ids, response_ids: each
    row's tokens unpadded (None: the update runs one padded forward of ids), pad_id: the padding token.
    """

    ids: torch.Tensor
    attn: torch.Tensor
    mask: torch.Tensor
    prompt_width: int
    group_ids: torch.Tensor
    old_logp: torch.Tensor
    old_values: torch.Tensor
    ref_logp: torch.Tensor | None
    sampler_logp: torch.Tensor
    is_weights: torch.Tensor | None = None
    update_forward: tuple | None = None
    prompt_ids: list[list[int]] | None = None
    response_ids: list[list[int]] | None = None
    pad_id: int = 0

    def __len__(self) -> int:
        return self.ids.shape[0]

    def take_update_forward(self, rows: torch.Tensor) -> tuple | None:
        """`update_forward` at `rows` (None if there is none), handed out once: after the first optimizer step
        it is no longer the current weights' forward."""
        fwd, self.update_forward = self.update_forward, None
        if fwd is None:
            return None
        logp, values, entropy = fwd
        return logp[rows], values[rows] if values is not None else None, entropy[rows]


def informative_groups(scores: torch.Tensor, G: int) -> list[int]:
    """DAPO's dynamic-sampling filter: positions of the groups (G consecutive rows of scores [n*G]) whose scores
    are not all equal. A group that scored the same everywhere has zero group-relative advantage."""
    by_group = scores.view(-1, G)
    return torch.nonzero((by_group != by_group[:, :1]).any(-1)).flatten().tolist()
