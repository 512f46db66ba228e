"""Phases 1-2 of an RL iteration: which questions, the rollout (G samples each) and their rewards; DAPO's
dynamic sampling. Everything that stays fixed across iterations is one `RolloutSetup`."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field

import torch

from reftune.config import RLConfig
from reftune.example import Example
from reftune.model.batching import encode
from reftune.model.prompts import build_prompt
from reftune.rewards.functions import compute_rewards
from reftune.rl.batch import Rollout, informative_groups
from reftune.train.accel import DTYPES, all_sum, gather_lists, num_processes, shard
from reftune.train.context import RunContext


@dataclass
class RolloutSetup:
    """What every rollout of a run uses.

    sampler: a `reftune.model.sampler.Sampler` on the policy; questions: the training examples; prompt_texts /
    prompt_ids: their prompts, built and tokenized once; reward_fns: `resolve_rewards(rl.rewards)`;
    reward_scorer: the frozen reward model of `rl.reward_model` (or None); curriculum: R^3's start states (or
    None); device_type: where the sampler runs ("cpu", "cuda"), for autocast to `rl.rollout_precision`.
    """

    sampler: object
    questions: list[Example]
    cfg: RLConfig
    ctx: RunContext
    reward_fns: list
    reward_scorer: object = None
    curriculum: object = None
    device_type: str = "cpu"
    prompt_texts: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)

    @classmethod
    def build(cls, sampler, tokenizer, questions: list[Example], cfg: RLConfig, ctx: RunContext, **kw) -> RolloutSetup:
        texts = [build_prompt(e.question, ctx.template, tokenizer) for e in questions]
        return cls(sampler, questions, cfg, ctx, prompt_texts=texts, prompt_ids=[encode(tokenizer, t) for t in texts],
                   **kw)


def batch_indices(k: int, n: int, per_step: int, seed: int) -> list[int]:
    """The questions (of n) of iteration k: consecutive slices of per-pass shuffles (deterministic, resumable)."""
    out = []
    for pos in range(k * per_step, (k + 1) * per_step):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + pos // n))
        out.append(int(perm[pos % n]))
    return out


def sample_seed(seed: int, k: int, position: int, stream: int = 0) -> int:
    """The seed of the samples of the question at `position` of iteration k's batch (stream: a refill round of
    dynamic sampling): the same whichever process rolls it out, and different for a question drawn twice."""
    return (((seed * 1_000_003 + k) * 1_000_033 + stream) * 1_000_037 + position) % 2**63


def collect(setup: RolloutSetup, idx: list[int], k: int, first: int = 0, stream: int = 0,
            batch: list[int] | None = None) -> Rollout:
    """Rollout and reward of iteration k for the questions `idx`: G samples each, in `rl.rollout_precision`;
    with R^3, each sample continues its question's start state and the whole solution is graded.

    idx[i] is question `first + i` of the iteration's batch (first > 0: this process's shard starts there; batch:
    the whole batch, of which idx = batch[first:first + len(idx)], default idx); its samples come from their own
    stream, `sample_seed(seed, k, first + i, stream)`. R^3's start states are drawn for the whole batch, in its
    order, and this shard's taken: the same draws in one process or many."""
    cfg, G, cur = setup.cfg, setup.cfg.num_generations, setup.curriculum
    examples = [setup.questions[i] for i in idx for _ in range(G)]
    starts = None
    if cur is not None:
        starts = cur.choose([setup.questions[i] for i in (idx if batch is None else batch)], k)
        starts = starts if batch is None else starts[first:first + len(idx)]
    prompts = ([setup.prompt_ids[i] + s.ids for i, s in zip(idx, starts)] if starts
               else [setup.prompt_ids[i] for i in idx])
    dtype = DTYPES[cfg.rollout_precision]  # the hf sampler runs under autocast to it; vllm was built in it
    with torch.autocast(setup.device_type, dtype=dtype, enabled=dtype != torch.float32 and not engine(setup)):
        samples = setup.sampler.generate(prompts, G, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                                         seeds=[sample_seed(setup.ctx.seed, k, first + i, stream)
                                                for i in range(len(idx))])
    if starts:
        samples.texts = cur.complete(starts, samples.texts, G)
    ctx = setup.ctx
    scores, parts, grades = compute_rewards(
        [setup.prompt_texts[i] for i in idx for _ in range(G)], samples.texts, examples, setup.reward_fns,
        cot=ctx.cot, sandbox=ctx.sandbox, template=ctx.template, correct_reward=cfg.correct_reward,
        partial_reward=cfg.partial_reward, completion_ids=samples.response_ids, max_new_tokens=cfg.max_new_tokens,
        overlong_penalty=cfg.overlong_penalty, reward_scorer=setup.reward_scorer)
    return Rollout(idx, starts, samples, examples, scores, parts, grades)


def dynamic_sampling(setup: RolloutSetup, batch: Rollout, k: int) -> tuple[Rollout, float]:
    """DAPO: keep the groups whose rewards differ; while fewer than prompts_per_step, roll out new questions (up
    to max_refill_rounds rounds, seeded by (seed, k, round)).

    Returns (the first prompts_per_step kept groups, share of all drawn groups that differ). When none differs at
    all, the first batch is kept as is (its group advantages are zero). Rows are fewer than prompts_per_step * G
    when the rounds run out.

    With several processes, `batch` is this process's shard of the iteration's questions, and each refill round's
    questions are sharded the same way (their samples are those one process draws: `collect`'s streams). The
    processes count the kept groups together (one all-reduce per round), then exchange them, take the first
    prompts_per_step in one process's order (round by round, shard by shard) and each its contiguous share of
    those: the batch one process trains on. If fewer groups than processes are kept, every process keeps its first
    batch as is (one process would train on the few kept groups)."""
    cfg, G, n, N = setup.cfg, setup.cfg.num_generations, len(setup.questions), num_processes()
    rounds = [batch.groups(informative_groups(batch.scores, G), G)]  # this process's kept groups, per round
    total, drawn = _count(rounds[-1], setup.device_type), cfg.prompts_per_step
    for r in range(cfg.max_refill_rounds):
        if total >= cfg.prompts_per_step:
            break
        g = torch.Generator().manual_seed(setup.ctx.seed * 7919 + 1_000_003 * (r + 1) + k)
        questions = torch.randperm(n, generator=g)[:cfg.prompts_per_step].tolist()
        mine = shard(len(questions))
        more = collect(setup, questions[mine.start:mine.stop], k, first=mine.start, stream=r + 1, batch=questions)
        rounds.append(more.groups(informative_groups(more.scores, G), G))
        total, drawn = total + _count(rounds[-1], setup.device_type), drawn + len(questions)
    fraction = total / drawn
    if total == 0 or (N > 1 and min(total, cfg.prompts_per_step) < N):
        return batch, fraction
    if N > 1:  # one process's order: round by round, and within a round process by process
        rounds = [ro for _, ro in sorted(gather_lists(list(enumerate(rounds))), key=lambda x: x[0])]
    kept = functools.reduce(operator.add, rounds)
    kept = kept.groups(list(range(min(len(kept.idx), cfg.prompts_per_step))), G)
    return (kept if N == 1 else kept.groups(list(shard(len(kept.idx))), G)), fraction


def _count(rollout: Rollout, device_type: str) -> int:
    """Questions in `rollout` summed over every process."""
    return int(all_sum(torch.tensor(len(rollout.idx), device=device_type)))


def engine(setup: RolloutSetup) -> bool:
    """Whether the sampler is a separate engine with its own copy of the weights (vllm), not the policy itself."""
    return hasattr(setup.sampler, "load_weights")


def release_engine(setup: RolloutSetup) -> None:
    """Before the update: a sleeping-capable engine (vllm on GPU, rollout.sleep) frees its memory."""
    if engine(setup) and setup.ctx.rollout is not None and setup.ctx.rollout.sleep:
        setup.sampler.sleep()


def sync_engine(setup: RolloutSetup, lm) -> None:
    """After the update: an engine is woken (if asleep) and given the policy's new weights, in memory."""
    if engine(setup):
        if setup.ctx.rollout is not None and setup.ctx.rollout.sleep:
            setup.sampler.wake_up()
        setup.sampler.load_weights(lm)
