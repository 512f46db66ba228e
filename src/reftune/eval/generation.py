"""The one generation loop of evaluation: chunk the questions, prompt them, generate k completions each,
grade them. Greedy evaluation (`eval.greedy`) and sampled evaluation (`eval.sampling`) both go through it."""

from __future__ import annotations

from collections.abc import Iterator

from tqdm.auto import tqdm

from reftune.example import Example
from reftune.grading.grade import Grade, grade
from reftune.model.batching import encode
from reftune.model.prompts import build_prompt
from reftune.model.sampler import Sampler


def generate_and_grade(sampler: Sampler, tokenizer, examples: list[Example], num_samples: int, *,
                       questions_per_chunk: int, temperature: float = 1.0, top_p: float = 1.0,
                       max_new_tokens: int = 96, template: str = "reft", cot: str = "nl", sandbox=None,
                       generator=None, desc: str = "eval") -> Iterator[tuple[Example, list[tuple[str, Grade, bool]]]]:
    """For each example in order: (example, its `num_samples` (text, grade, finished) triples), generated
    `questions_per_chunk` questions at a time (one `sampler.generate` call per chunk); temperature 0 is greedy.
    """
    for start in tqdm(range(0, len(examples), questions_per_chunk), desc=desc, leave=False, dynamic_ncols=True):
        chunk = examples[start:start + questions_per_chunk]
        prompts = [encode(tokenizer, build_prompt(e.question, template, tokenizer)) for e in chunk]
        samples = sampler.generate(prompts, num_samples, temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens, generator=generator)
        graded = [e for e in chunk for _ in range(num_samples)]  # sample j of prompt i is row i*k+j
        rows = list(zip(samples.texts, grade(samples.texts, graded, cot, sandbox), samples.finished))
        for i, ex in enumerate(chunk):
            yield ex, rows[i * num_samples:(i + 1) * num_samples]
