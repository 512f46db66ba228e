"""Specification of the Bradley-Terry reward model (`reftune rm`) and of a trained reward model as an RL reward.

The loss and the pairwise metrics are checked against numbers worked out by hand; pairs are built from scripted
graded samples and read from JSONL files; the command runs end to end on the synthetic task with a tiny random
model (hidden size 16), from pair files and from (scripted) graded samples; the `reward_model` reward function
scores with a saved verifier and a saved Bradley-Terry checkpoint.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from reftune import commands
from reftune.model.checkpoint import VALUE_HEAD_FILE, is_checkpoint, read_reward_model_info, save_checkpoint
from reftune.cli import COMMANDS, main
from reftune.config import RLJob, RMJob, load_config
from reftune.example import Example
from reftune.data.pairs import Pair, load_pairs, pairs_from_samples
from reftune.errors import ConfigError, DataError, UserError
from reftune.train.logger import read_metrics
from reftune.model.modeling import PolicyWithValue, build_tiny_model, train_tokenizer
from reftune.model.prompts import build_prompt
from reftune.rewards.functions import REWARD_FUNCTIONS, compute_rewards
from reftune.rewards.scorer import load_reward_scorer
from reftune.train.reward_model import bradley_terry_loss, encode_pairs, pairwise_metrics
from reftune.data.synthetic import generate_splits
from reftune.rewards.scorer import encode_solution

T = torch.tensor


# --- the loss and the metrics, by hand ----------------------------------------------------------------

def test_bradley_terry_loss_by_hand():
    assert bradley_terry_loss(T([2.0]), T([0.0])).item() == pytest.approx(0.126928, abs=1e-6)  # log(1 + e^-2)
    assert bradley_terry_loss(T([0.0]), T([0.0])).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(T([-1.0]), T([1.0])).item() == pytest.approx(2.126928, abs=1e-6)  # log(1 + e^2)
    both = bradley_terry_loss(T([2.0, -1.0]), T([0.0, 1.0])).item()
    assert both == pytest.approx((0.126928 + 2.126928) / 2, abs=1e-6)                          # mean over pairs
    assert bradley_terry_loss(T([0.0]), T([1000.0])).item() == pytest.approx(1000.0)           # finite when far off
    assert bradley_terry_loss(T([3.0]), T([1.0])) == bradley_terry_loss(T([12.0]), T([10.0]))  # only differences


def test_pairwise_metrics_by_hand():
    m = pairwise_metrics(T([2.0, 0.0, 1.0, 5.0]), T([0.0, 0.0, 3.0, 1.0]))  # differences 2, 0, -2, 4
    assert m["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)           # a tie counts 1/2
    assert m["margin"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx((0.126928 + math.log(2) + 2.126928 + math.log(1 + math.exp(-4))) / 4, abs=1e-6)
    assert m["n"] == 4
    empty = pairwise_metrics(T([]), T([]))
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])


# --- pairs ---------------------------------------------------------------------------------------------

def _graded(*labels: bool, tag: str = "") -> list[dict]:
    return [{"text": f"{tag}{'right' if ok else 'wrong'}{i}", "correct": ok} for i, ok in enumerate(labels)]


EXAMPLES = [Example(id=f"q{i}", question=f"Question {i}?", answer="1") for i in range(4)]
SAMPLES = [_graded(True, False, True, False, False, tag="a"),   # 2 correct x 3 wrong = 6 pairs
           _graded(True, True, True, tag="b"),                  # only correct: none
           _graded(False, False, tag="c"),                      # only wrong: none
           _graded(False, True, tag="d")]                       # 1 x 1 = 1 pair


def test_pairs_from_samples_are_every_correct_incorrect_pair_of_a_question():
    pairs = pairs_from_samples(EXAMPLES, SAMPLES, max_per_question=100)
    assert [p.question for p in pairs] == ["Question 0?"] * 6 + ["Question 3?"]
    assert [(p.chosen, p.rejected) for p in pairs[:6]] == [(c, r) for c in ("aright0", "aright2")
                                                            for r in ("awrong1", "awrong3", "awrong4")]
    assert (pairs[6].chosen, pairs[6].rejected) == ("dright1", "dwrong0")


def test_pairs_from_samples_cap_each_question_deterministically_by_seed():
    full = pairs_from_samples(EXAMPLES, SAMPLES, max_per_question=100)
    capped = pairs_from_samples(EXAMPLES, SAMPLES, max_per_question=4, seed=3)
    assert len(capped) == 4 + 1
    assert capped[:4] == [p for p in full[:6] if p in capped[:4]]  # a subset of the question's pairs, in order
    assert len(set(capped[:4])) == 4 and capped[4] == full[6]
    assert pairs_from_samples(EXAMPLES, SAMPLES, max_per_question=4, seed=3) == capped
    draws = {tuple(pairs_from_samples(EXAMPLES, SAMPLES, 4, seed=s)) for s in range(10)}
    assert len(draws) > 1                                           # the seed does choose


def _write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_pairs_reads_question_or_prompt(tmp_path):
    f = _write(tmp_path / "p.jsonl", [json.dumps({"question": "Q?", "chosen": "a", "rejected": "b", "extra": 1}), "",
                                      json.dumps({"prompt": "Question:\nQ?\n", "chosen": "c", "rejected": ""})])
    assert load_pairs(f) == [Pair("a", "b", question="Q?"), Pair("c", "", prompt="Question:\nQ?\n")]
    assert Pair("c", "", prompt="P").to_record() == {"chosen": "c", "rejected": "", "prompt": "P"}


@pytest.mark.parametrize("bad, fragment", [
    ('{"question": "Q?", "chosen": "a"', "malformed JSON line"),
    ('["Q?", "a", "b"]', "expected a JSON object"),
    ('{"question": "Q?", "rejected": "b"}', "field 'chosen'"),
    ('{"question": "Q?", "chosen": "a", "rejected": 3}', "field 'rejected'"),
    ('{"chosen": "a", "rejected": "b"}', "exactly one of 'question' and 'prompt'"),
    ('{"question": "Q", "prompt": "P", "chosen": "a", "rejected": "b"}', "exactly one of"),
    ('{"question": " ", "chosen": "a", "rejected": "b"}', "field 'question'"),
])
def test_a_malformed_pairs_line_names_file_and_line(tmp_path, bad, fragment):
    good = json.dumps({"question": "Q?", "chosen": "a", "rejected": "b"})
    f = _write(tmp_path / "pairs.jsonl", [good, "", bad, good])
    with pytest.raises(DataError, match=fragment) as err:
        load_pairs(f)
    assert str(err.value).startswith(f"{f}:3: ")


def test_a_missing_or_empty_pairs_file(tmp_path):
    with pytest.raises(UserError, match="no such pairs file"):
        load_pairs(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match="no pairs"):
        load_pairs(_write(tmp_path / "empty.jsonl", [""]))


# --- a tiny model, its checkpoints -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic():
    return generate_splits(0, {"train": 16, "val": 4})


@pytest.fixture(scope="module")
def tokenizer(synthetic):
    return train_tokenizer([e.question + "\n" + e.cot for e in synthetic["train"]], 280)


def test_encode_pairs_templates_questions_and_keeps_prompts(tokenizer):
    prompt = build_prompt("Q?", "reft")
    (c, r), (c2, _) = encode_pairs(tokenizer, [Pair("a", "b", question="Q?"), Pair("a", "b", prompt="P")], "reft", 64)
    assert c == encode_solution(tokenizer, prompt, "a", 64) and r == encode_solution(tokenizer, prompt, "b", 64)
    assert c2 == encode_solution(tokenizer, "P", "a", 64)


def _checkpoint(path, tokenizer, kind: str | None, template: str = "reft"):
    """A tiny random model with a random (non-zero) score head, saved as a reward model of `kind`."""
    policy = PolicyWithValue(build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0))
    torch.manual_seed(0)
    torch.nn.init.normal_(policy.value_head.weight, std=2.0)
    info = None if kind is None else {"kind": kind, "template": template, "max_length": 256}
    return save_checkpoint(path, policy.lm, tokenizer, value_head=policy.value_head, reward_model=info)


TINY = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0",
        "data.min_steps=2", "data.max_steps=4", "data.max_value=999", "model.max_length=256"]


def _wrong(cot: str, answer: str) -> str:
    return cot.replace(f"The answer is {answer}", f"The answer is {int(answer) + 1}")


def test_rm_command_from_pair_files_end_to_end(synthetic, tokenizer, tmp_path):
    """`reftune rm` on the synthetic task: pairs (gold CoT ≻ the same CoT with a wrong answer) from files; writes
    best/ (kind bradley_terry), per-epoch validation pairwise accuracy, and the pairs it used."""
    start = save_checkpoint(tmp_path / "start", build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0), tokenizer)
    files = {}
    for split in ("train", "val"):
        files[split] = _write(tmp_path / f"{split}.jsonl", [json.dumps(
            {"question": e.question, "chosen": e.cot, "rejected": _wrong(e.cot, e.answer)}) for e in synthetic[split]])
    out = tmp_path / "rm"
    assert COMMANDS["rm"] is RMJob
    code = main(["rm", "--model", str(start), f"out_dir={out}", *TINY, f"rm.pairs_path={files['train']}",
                 f"rm.val_pairs_path={files['val']}", "rm.epochs=2", "rm.batch_size=8", "rm.lr=1e-3"])
    assert code == 0
    assert is_checkpoint(out / "best") and (out / "best" / VALUE_HEAD_FILE).is_file()
    assert read_reward_model_info(out / "best") == {"kind": "bradley_terry", "template": "reft", "max_length": 256}
    epochs = [r for r in read_metrics(out) if r["stage"] == "rm" and "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["val_n"] == 4
        assert all(math.isfinite(r[k]) for k in ("train_loss", "val_loss", "val_margin"))
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == {"train": 16, "val": 4} and results["best_epoch"] in (1, 2)
    best = next(r for r in epochs if r["epoch"] == results["best_epoch"])
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in epochs)
    assert load_pairs(out / "pairs_train.jsonl") == load_pairs(files["train"])
    report = (out / "report.md").read_text()
    assert f"Best epoch (on validation): {results['best_epoch']}" in report and "| accuracy |" in report
    assert (out / "plots" / "val_accuracy.png").is_file() and "plots/val_loss.png" in report


def test_rm_builds_pairs_from_graded_samples(synthetic, tokenizer, tmp_path, monkeypatch):
    """Without pair files, each question's samples are graded and paired; the val split's pairs validate."""
    def scripted(lm, tok, examples, k, *, seed, **kw):  # even-numbered questions: 1 correct + 2 wrong; odd: all wrong
        return [[{"text": f"The answer is {e.answer}" if j == 0 and int(e.id.split("-")[1]) % 2 == 0 else f"x{j}",
                  "correct": j == 0 and int(e.id.split("-")[1]) % 2 == 0, "pred": None, "finished": True}
                 for j in range(k)] for e in examples]

    monkeypatch.setattr("reftune.eval.sampling.sample_and_grade", scripted)
    start = save_checkpoint(tmp_path / "start", build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0), tokenizer)
    cfg = load_config(RMJob, None, [f"out_dir={tmp_path / 'rm'}", f"model.name_or_path={start}", *TINY,
                                    "rm.num_samples=3", "rm.max_pairs_per_question=1", "rm.epochs=1"])
    info = commands.rm(cfg)
    assert info["pairs"] == {"train": 8, "val": 2}           # 1 pair (capped from 2) per even-numbered question
    assert len((tmp_path / "rm" / "samples_train.jsonl").read_text().splitlines()) == 16
    pairs = load_pairs(tmp_path / "rm" / "pairs_train.jsonl")
    assert all(p.chosen.startswith("The answer is") and p.rejected in ("x1", "x2") for p in pairs)
    assert info["best_epoch"] == 1 and 0.0 <= info["val"]["accuracy"] <= 1.0


def test_rm_without_any_mixed_question_says_what_to_do(tokenizer, tmp_path):
    start = save_checkpoint(tmp_path / "start", build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0), tokenizer)
    cfg = load_config(RMJob, None, [f"out_dir={tmp_path / 'rm'}", f"model.name_or_path={start}", *TINY,
                                    "rm.num_samples=2", "rm.max_new_tokens=4"])
    with pytest.raises(UserError, match="no training pairs.*rm.pairs_path"):
        commands.rm(cfg)  # a random model answers nothing right: no question has a correct sample


# --- a reward model as an RL reward -----------------------------------------------------------------------

def _batch(synthetic):
    examples = synthetic["val"]
    prompts = [build_prompt(e.question, "reft") for e in examples]
    return prompts, [e.cot for e in examples[:2]] + ["no idea", ""], examples


def test_the_reward_model_reward_scores_with_a_verifier_checkpoint(synthetic, tokenizer, tmp_path):
    path = _checkpoint(tmp_path / "verifier", tokenizer, "verifier")
    prompts, completions, examples = _batch(synthetic)
    scorer = load_reward_scorer(path, template="reft")
    values = REWARD_FUNCTIONS["reward_model"](prompts, completions, examples, reward_scorer=scorer)
    assert len(values) == 4 and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert len(set(values)) > 1                                  # it does read the completions
    scores, parts, _ = compute_rewards(prompts, completions, examples, "reft:1,reward_model:0.5", reward_scorer=scorer)
    assert parts["reward_model"] == values
    assert scores.tolist() == pytest.approx([r + 0.5 * v for r, v in zip(parts["reft"], values)])
    assert load_reward_scorer(_checkpoint(tmp_path / "legacy", tokenizer, None))(prompts, completions) == \
        pytest.approx(values)                                    # no reward_model.json: read as a verifier


def test_a_bradley_terry_checkpoint_gives_its_raw_score_or_the_sigmoid(synthetic, tokenizer, tmp_path):
    path = _checkpoint(tmp_path / "bt", tokenizer, "bradley_terry")
    prompts, completions, _ = _batch(synthetic)
    raw = load_reward_scorer(path)(prompts, completions)
    squashed = load_reward_scorer(path, sigmoid=True)(prompts, completions)
    assert squashed == pytest.approx(torch.sigmoid(T(raw)).tolist())
    assert any(not 0.0 <= v <= 1.0 for v in raw)                 # unbounded: not a probability
    with pytest.raises(ConfigError, match="rl.reward_model: .*template 'reft', this run uses 'r1'"):
        load_reward_scorer(path, template="r1")


def test_the_reward_model_reward_needs_rl_reward_model(synthetic, tokenizer, tmp_path):
    prompts, completions, examples = _batch(synthetic)
    with pytest.raises(ConfigError, match="needs rl.reward_model"):
        REWARD_FUNCTIONS["reward_model"](prompts, completions, examples)
    with pytest.raises(ConfigError, match="needs rl.reward_model"):
        load_config(RLJob, None, ["rl.rewards=reft:1,reward_model:0.5"])
    with pytest.raises(ConfigError, match="rl.reward_model: .* is not a checkpoint"):
        load_config(RLJob, None, ["rl.rewards=reward_model", f"rl.reward_model={tmp_path}"])
    path = _checkpoint(tmp_path / "v", tokenizer, "verifier")
    with pytest.raises(ConfigError, match="rl.rewards=.* does not use it"):
        load_config(RLJob, None, [f"rl.reward_model={path}"])
    assert load_config(RLJob, None, ["rl.rewards=reft:1,reward_model:0.5", f"rl.reward_model={path}"]).rl.reward_model
    no_head = save_checkpoint(tmp_path / "policy", build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0), tokenizer)
    with pytest.raises(ConfigError, match="rl.reward_model: .*no value_head"):
        load_reward_scorer(no_head)


# --- the standard HF export ------------------------------------------------------------------------------

def test_a_trained_reward_model_is_also_an_hf_sequence_classifier(synthetic, tokenizer, tmp_path):
    """`reftune rm` writes hf_classifier/ next to best/: AutoModelForSequenceClassification loads it without reftune,
    and its logit for prompt + completion + EOS is reftune's score minus the head's bias (kept in the config)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = save_checkpoint(tmp_path / "start", build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0), tokenizer)
    files = {split: _write(tmp_path / f"{split}.jsonl", [json.dumps(
        {"question": e.question, "chosen": e.cot, "rejected": _wrong(e.cot, e.answer)}) for e in synthetic[split]])
        for split in ("train", "val")}
    out = tmp_path / "rm"
    assert main(["rm", "--model", str(start), f"out_dir={out}", *TINY, f"rm.pairs_path={files['train']}",
                 f"rm.val_pairs_path={files['val']}", "rm.epochs=1", "rm.batch_size=8", "rm.lr=1e-3"]) == 0
    hf = AutoModelForSequenceClassification.from_pretrained(out / "hf_classifier").eval()
    hf_tok = AutoTokenizer.from_pretrained(out / "hf_classifier")
    assert hf.config.num_labels == 1 and hf.config.reftune_reward_model["kind"] == "bradley_terry"
    bias = hf.config.reftune_score_bias
    score = load_reward_scorer(out / "best")
    examples = synthetic["val"][:3]
    prompts = [build_prompt(e.question, "reft", hf_tok) for e in examples]
    completions = [e.cot for e in examples] + [_wrong(examples[0].cot, examples[0].answer)]
    prompts.append(prompts[0])
    ours = score(prompts, completions)
    with torch.no_grad():
        theirs = [hf(input_ids=T([encode_solution(hf_tok, p, c, 256)])).logits.item() + bias
                  for p, c in zip(prompts, completions)]
    assert theirs == pytest.approx(ours, abs=1e-4)
    assert len(set(round(x, 4) for x in ours)) > 1  # the scores differ between texts: the comparison means something


def test_the_export_keeps_a_verifier_head_bias_in_the_config(synthetic, tokenizer, tmp_path):
    """A verifier's head has a bias (its prior log-odds), which HF's score layer cannot hold: it goes to the config,
    and logit + reftune_score_bias is reftune's raw score."""
    from transformers import AutoModelForSequenceClassification

    from reftune.model.classifier import save_sequence_classifier
    from reftune.rewards.scorer import verifier_scores

    policy = PolicyWithValue(build_tiny_model(tokenizer, 16, 1, 2, 32, 256, seed=0)).eval()
    with torch.no_grad():
        policy.value_head.weight.normal_(generator=torch.Generator().manual_seed(0))
        policy.value_head.bias.fill_(0.7)
    path = save_sequence_classifier(tmp_path / "cls", policy.lm, policy.value_head, tokenizer, {"kind": "verifier"})
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert hf.config.reftune_score_bias == pytest.approx(0.7)
    prompts = [build_prompt(e.question, "reft", tokenizer) for e in synthetic["val"][:2]]
    completions = [e.cot for e in synthetic["val"][:2]]
    ours = verifier_scores(policy, tokenizer, prompts, completions, max_length=256, squash=False)
    with torch.no_grad():
        theirs = [hf(input_ids=T([encode_solution(tokenizer, p, c, 256)])).logits.item() + 0.7
                  for p, c in zip(prompts, completions)]
    assert theirs == pytest.approx(ours, abs=1e-4)
