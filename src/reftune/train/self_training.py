"""Offline self-training, the ReFT paper's baseline: SFT again on the gold CoTs plus the model's own correct ones.

1. sample `num_samples` solutions per training question from the warm-up model (`eval.sampling.sample_and_grade`);
2. keep, per question, up to `max_correct` *distinct* samples graded correct that ended with EOS
   (a sample cut at `max_new_tokens` would teach the model not to stop), next to the gold CoT;
3. run `sft.train_sft` on that augmented set, continuing from the warm-up model.

Expert iteration (`selftrain.rounds` = N > 1; rejection-sampling fine-tuning in rounds, as in STaR and Havrilla
et al., 2024) repeats this: round r samples from round r-1's chosen model (round 1 from the warm-up), pools
its samples with those of the earlier rounds (`pool_rounds`; earlier rounds first, so a question keeps the
solutions it already had and gains new ones up to `max_correct`), and fine-tunes again, by default from the
warm-up model (`selftrain.round_start=base`, as both papers do: one round's over-fitting is not carried into
the next) or from round r-1's model (`previous`). Each round keeps its best validation epoch; the final model is
the round whose best validation accuracy is highest (`best_round`); the test split is never looked at.

Simplifications: "distinct" means different after collapsing whitespace; questions without a gold CoT
(answer-only data) are not used here. Online self-training (resampling as training goes) is the RL loop's
`rl.objective=online_self_training` (`reftune.rl.loop`).
"""

from __future__ import annotations

from dataclasses import replace

from reftune.example import Example
from reftune.model.prompts import get_template


def _same_text(text: str) -> str:
    return " ".join(text.split())


def augment_with_samples(examples: list[Example], per_question: list[list[dict]], max_correct: int,
                         template: str = "reft") -> list[Example]:
    """Each example with a gold CoT, followed by up to `max_correct` distinct correct finished samples of it.

    per_question[i]: the graded samples of examples[i] ({"text", "correct", "finished"}, as from
    `eval.sampling.sample_and_grade`). A sample identical to the gold CoT or to an earlier kept sample is
    skipped. Added examples copy the question and answer, with id "<id>#st<j>", the sample as `cot` and
    meta["self_generated_from"] = the original id. Under an R1 template (``Template.think``) only the think block (the text
    before "</think>") is kept as the cot: SFT's `prompts.build_target` adds the closing and the answer back.
    """
    think = get_template(template).think
    out = []
    for ex, samples in zip(examples, per_question):
        if not ex.cot:
            continue
        out.append(ex)
        seen = {_same_text(ex.cot)}
        for s in samples:
            if len(seen) - 1 >= max_correct:
                break
            cot = s["text"].split("</think>", 1)[0].strip() if think else s["text"].strip()
            key = _same_text(cot)
            if s["correct"] and s.get("finished", True) and key and key not in seen:
                seen.add(key)
                out.append(replace(ex, id=f"{ex.id}#st{len(seen) - 2}", cot=cot,
                                   meta={**ex.meta, "self_generated_from": ex.id}))
    return out


def augmentation_stats(examples: list[Example], augmented: list[Example]) -> dict:
    """How much self-generated data was added: questions with any, and the mean added per question."""
    added: dict[str, int] = {}
    for e in augmented:
        source = e.meta.get("self_generated_from")
        if source is not None:
            added[source] = added.get(source, 0) + 1
    with_cot = sum(1 for e in examples if e.cot)
    return {"questions": with_cot, "questions_with_correct_samples": len(added),
            "added": sum(added.values()), "added_per_question": sum(added.values()) / max(with_cot, 1),
            "examples": len(augmented)}


def pool_rounds(earlier: list[list[dict]], new: list[list[dict]]) -> list[list[dict]]:
    """Per question, the samples of the earlier rounds followed by this round's (`augment_with_samples` then keeps
    the first `max_correct` distinct correct ones)."""
    return [old + added for old, added in zip(earlier, new)]


def best_round(rounds: list[dict]) -> int:
    """Index of the round whose chosen checkpoint has the highest validation accuracy ("best_val"); the earliest
    on a tie (fewer rounds of training on the model's own samples)."""
    if not rounds:
        raise ValueError("no finished round to choose from")
    return max(range(len(rounds)), key=lambda i: (rounds[i]["best_val"], -i))
