"""The experiment scripts' own logic (their runs are experiments, not tests)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from jobs import for_command, load_presets  # noqa: E402
from sliced_eval import pooled  # noqa: E402


def test_chunks_pool_to_question_weighted_means():
    a = {"n": 3, "accuracy": 1 / 3, "answered": 1.0,
         "sampling": {"n": 3, "k": 8, "temperature": 1.0, "top_p": 1.0, "voting@8": 2 / 3, "pass@8": 1.0}}
    b = {"n": 1, "accuracy": 1.0, "answered": 0.0,
         "sampling": {"n": 1, "k": 8, "temperature": 1.0, "top_p": 1.0, "voting@8": 0.0, "pass@8": 0.0}}
    p = pooled([a, b])
    assert p["n"] == 4 and p["accuracy"] == pytest.approx(0.5) and p["answered"] == pytest.approx(0.75)
    s = p["sampling"]
    assert s["n"] == 4 and s["k"] == 8 and s["temperature"] == 1.0
    assert s["voting@8"] == pytest.approx(0.5) and s["pass@8"] == pytest.approx(0.75)
    assert "sampling" not in pooled([a, {k: v for k, v in b.items() if k != "sampling"}])  # greedy-only chunk


def test_each_command_gets_only_the_overrides_it_accepts():
    over = ["data.min_steps=3", "rl.lr=1e-4", "sft.epochs=2", "model.name_or_path=x", "model.max_length=64"]
    assert for_command("eval", over) == ["data.min_steps=3", "model.max_length=64"]
    assert for_command("rl", over) == ["data.min_steps=3", "rl.lr=1e-4", "model.max_length=64"]
    assert for_command("sft", over) == ["data.min_steps=3", "sft.epochs=2", "model.max_length=64"]


def test_every_presets_default_variants_exist_and_settings_are_strings():
    presets, defaults = load_presets()
    assert set(presets) == set(defaults) >= {"estimators", "precision", "reft", "r3"}
    for name, variants in presets.items():
        assert defaults[name] and set(defaults[name]) <= set(variants), name
        for label, settings in variants.values():
            assert label and all(isinstance(v, str) for v in settings.values())
    assert presets["reft"]["big_lr1e-4_extra"][1] == {**presets["reft"]["big_lr1e-4"][1], "rl.use_extra": "true"}


def test_paper_long_counts_each_stages_compute_and_rl_epochs(tmp_path):
    import json

    import yaml
    from paper_long import collect, table

    run = tmp_path / "n100" / "seed-0"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.jsonl").write_text("{}\n" * 100)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"rl": {"ppo_epochs": 1, "minibatches": 2, "prompts_per_step": 64, "num_generations": 8}}))
    recs = [{"stage": "pretrain", "step": 1, "time": 0.0},
            {"stage": "warmup", "step": 8, "time": 60.0, "loss": 1.0},
            {"stage": "sft", "step": 10, "time": 120.0, "loss": 1.0}, {"stage": "sft", "step": 20, "time": 180.0, "loss": 0.5},
            {"stage": "sft", "step": 20, "time": 190.0, "epoch": 2.0, "val_accuracy": 0.5},
            {"stage": "reft", "step": 0, "time": 250.0, "val_accuracy": 0.4},
            {"stage": "reft", "step": 1, "time": 250.0, "rollout_tokens": 1000.0, "accuracy": 0.25},
            {"stage": "reft", "step": 2, "time": 310.0, "rollout_tokens": 3000.0, "accuracy": 0.5},
            {"stage": "reft", "step": 2, "time": 320.0, "val_accuracy": 0.45},
            {"stage": "eval", "step": 0, "time": 330.0, "accuracy": 0.4},
            # a stage added by a later --resume: it starts at its first iteration, not at the previous record
            {"stage": "online_st", "step": 0, "time": 5000.0, "val_accuracy": 0.4},  # logged with step 1
            {"stage": "online_st", "step": 1, "time": 5000.0, "rollout_tokens": 900.0, "accuracy": 0.3,
             "rollout_s": 20.0, "scoring_s": 5.0, "update_s": 15.0},
            {"stage": "online_st", "step": 2, "time": 5040.0, "rollout_tokens": 800.0, "accuracy": 0.4,
             "rollout_s": 20.0, "scoring_s": 5.0, "update_s": 15.0},
            # stopped after step 2, resumed from step 1's checkpoint an hour later: step 2 redone, the pause not counted
            {"stage": "online_st", "step": 2, "time": 8640.0, "rollout_tokens": 700.0, "accuracy": 0.4,
             "rollout_s": 20.0, "scoring_s": 5.0, "update_s": 15.0},
            # stopped again, restarted two hours later, where a validation record comes first: not counted either
            {"stage": "online_st", "step": 0, "time": 15840.0, "val_accuracy": 0.4},
            {"stage": "online_st", "step": 3, "time": 15880.0, "rollout_tokens": 600.0, "accuracy": 0.4,
             "rollout_s": 20.0, "scoring_s": 5.0, "update_s": 15.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "results.json").write_text(json.dumps({"sft/val": {"accuracy": 0.5}, "reft/val": {"accuracy": 0.45},
                                                  "reft/test": {"accuracy": 0.4}}))
    found = collect(tmp_path, [0, 1])
    c = found[100]["compute"]
    assert c["warmup"]["optimizer_steps"] == [8] and c["warmup"]["minutes"] == [1.0]
    assert c["sft"]["optimizer_steps"] == [20] and c["sft"]["minutes"] == [130 / 60]     # 60 s .. 190 s
    assert "rollout_tokens" not in c["sft"]
    assert c["reft"] == {"optimizer_steps": [4], "rollout_tokens": [4000.0], "minutes": [130 / 60],
                         "rl_epochs": [2 * 64 * 8 / 100], "rollout_s": [0.0], "scoring_s": [0.0], "update_s": [0.0],
                         "iteration_s": [0.0]}
    assert c["online_st"]["minutes"] == [160 / 60] and c["online_st"]["rollout_tokens"] == [2200.0]
    assert c["online_st"]["iteration_s"] == [40.0] and c["online_st"]["update_s"] == [15.0]  # step 2 counted once
    assert found[100]["curves"]["reft"] == [[(0.0, 40.0), (2 * 64 * 8 / 100, 45.0)]]
    assert found[100]["curves"]["reft/train"] == [[(64 * 8 / 100, 25.0), (2 * 64 * 8 / 100, 50.0)]]
    md = table(found)
    assert "| 100 | (c) ReFT from warm-up | 45.0 ± 0.0 | 40.0 ± 0.0 | 4 | 10 | 4000 | 2.2 | 0.0 |" in md
    # the same size with other settings (OUT/n<N>_<tag>): rows of its own; folders of another name are not runs
    import shutil
    shutil.copytree(tmp_path / "n100", tmp_path / "n100_warmup3e-5")
    (tmp_path / "notes").mkdir()
    found = collect(tmp_path, [0])
    assert list(found) == [100, "100, warmup3e-5"] and found["100, warmup3e-5"]["acc"] == found[100]["acc"]
    assert "| 100, warmup3e-5 | (c) ReFT from warm-up | 45.0 ± 0.0 |" in table(found)


def test_paper_long_reads_the_self_training_and_longer_rl_rows(tmp_path):
    """scripts/paper_selftrain.py's and paper_reft_longer.py's runs beside a paper_long run: their accuracy, their
    compute (every round's SFT steps; sampled tokens re-tokenized, EOS counted for finished samples) and curves."""
    import json
    import os

    import yaml
    from paper_long import collect, table

    from reftune.model.modeling import train_tokenizer

    run = tmp_path / "n100" / "seed-0"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.jsonl").write_text("{}\n" * 100)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"rl": {"ppo_epochs": 1, "minibatches": 2, "prompts_per_step": 64, "num_generations": 8}}))
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 5, "time": 10.0, "loss": 1.0}) + "\n")
    (run / "results.json").write_text(json.dumps({"sft/val": {"accuracy": 0.5}, "sft/test": {"accuracy": 0.5}}))
    tok_dir = tmp_path / "tok"
    train_tokenizer(["1 + 2 = 3\nThe answer is 3"] * 4, 280).save_pretrained(tok_dir)
    for rounds, val in ((1, 0.3), (3, 0.4)):
        d = run / f"selftrain-r{rounds}"
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tok_dir)}}))
        os.utime(d / "config.yaml", (1000.0, 1000.0))
        recs = [{"stage": "selftrain", "step": 1, "time": 1010.0, "round": 1.0}]
        for r in range(1, rounds + 1):
            stage = "selftrain" if rounds == 1 else f"selftrain_round{r}"
            recs += [{"stage": stage, "step": 4 * r, "time": 1010.0 + 10 * r, "loss": 0.5},
                     {"stage": stage, "step": 4 * r, "time": 1015.0 + 10 * r, "epoch": 1.0, "val_accuracy": val}]
        recs.append({"stage": "eval", "step": 0, "time": 9999.0, "accuracy": 0.0})
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        samples = [{"text": "1 + 2 = 3", "finished": True}, {"text": "1 + 2 = 3", "finished": False}]
        (d / "samples_train.jsonl").write_text(json.dumps({"id": "q", "samples": samples}) + "\n")
        (d / "results.json").write_text(json.dumps({"selftrain/val": {"accuracy": val},
                                                    "selftrain/test": {"accuracy": val + 0.01}}))
    longer = run / "reft_extra_x60"
    longer.mkdir()
    (longer / "config.yaml").write_text(yaml.safe_dump(
        {"rl": {"ppo_epochs": 1, "minibatches": 2, "prompts_per_step": 64, "num_generations": 8}}))
    (longer / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"stage": "rl", "step": 0, "time": 5000.0, "val_accuracy": 0.4},
        {"stage": "rl", "step": 1, "time": 5010.0, "rollout_tokens": 500.0, "accuracy": 0.3, "rollout_s": 5.0,
         "scoring_s": 2.0, "update_s": 3.0},
        {"stage": "rl", "step": 1, "time": 5015.0, "val_accuracy": 0.5}]))
    (longer / "results.json").write_text(json.dumps({"rl/val": {"accuracy": 0.5}, "rl/test": {"accuracy": 0.55}}))
    found = collect(tmp_path, [0])
    e = found[100]
    tokens_per_text = len(train_tokenizer(["1 + 2 = 3\nThe answer is 3"] * 4, 280)("1 + 2 = 3")["input_ids"])
    assert e["acc"]["offline_st"] == {"val": [30.0], "test": [31.0]}
    assert e["compute"]["offline_st"]["optimizer_steps"] == [4]
    assert e["compute"]["expert_iter"]["optimizer_steps"] == [4 + 8 + 12]  # every round's SFT
    assert e["compute"]["offline_st"]["rollout_tokens"] == [2 * tokens_per_text + 1]  # + EOS of the finished one
    assert e["compute"]["offline_st"]["rl_epochs"] == [2 / 100]
    assert e["compute"]["offline_st"]["minutes"] == [(1025.0 - 1000.0) / 60]  # config written .. last record
    assert e["acc"]["reft_extra_x60"] == {"val": [50.0], "test": [pytest.approx(55.0)]}
    assert e["compute"]["reft_extra_x60"]["rollout_tokens"] == [500.0]
    assert e["compute"]["reft_extra_x60"]["iteration_s"] == [10.0]
    assert e["curves"]["reft_extra_x60"] == [[(0.0, 40.0), (64 * 8 / 100, 50.0)]]
    md = table(found)
    assert "| 100 | (f) offline self-training from warm-up (best val epoch) | 30.0 ± 0.0 | 31.0 ± 0.0 | 4 |" in md
    assert "| 100 | (d) ReFT + answer-only questions, 60 iterations | 50.0 ± 0.0 | 55.0 ± 0.0 | 2 | 5 | 500 |" in md
    assert "| 100 | (f) offline self-training from warm-up (best val epoch) | 30.0 ± 0.0 | 31.0 ± 0.0 | 4 |" in md


def test_start_state_accuracy_is_averaged_over_each_end_of_the_run(tmp_path):
    import json
    from compare_rl import by_start_state

    it = lambda step, **m: {"step": step, "rollout_tokens": 10, **m}  # noqa: E731
    recs = [it(1, **{"acc_k/0": 0.0, "acc_k/2": 1.0, "start_k": 1.0}), {"step": 1, "val_accuracy": 0.3},
            it(2, **{"acc_k/0": 0.2, "start_k": 0.0}), it(3, **{"acc_k/0": 0.4, "acc_k/2": 0.5, "start_k": 1.0}),
            it(4, **{"acc_k/0": 0.6, "acc_k/2": 0.0, "start_k": 1.0}),
            it(4, **{"acc_k/0": 0.8, "acc_k/2": 0.0, "start_k": 2.0})]  # step 4 again (resumed): the last counts
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    got = by_start_state(tmp_path, window=2)
    assert list(got) == ["k=0", "k=2", "start_k"]
    assert got["k=0"] == pytest.approx([0.1, 0.6])      # steps 1-2, then 3-4
    assert got["k=2"] == pytest.approx([1.0, 0.25])     # only the iterations that drew k = 2
    assert got["start_k"] == pytest.approx([0.5, 1.5])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metrics.jsonl").write_text("\n".join(json.dumps(it(s, accuracy=a, kl=k)) for s, a, k in
                                                  [(1, 0.2, 0.5), (2, 0.4, 1.5)]))
    assert by_start_state(plain, window=1) == {"k=0": pytest.approx([0.2, 0.4]), "kl": [0.5, 1.5]}
    assert by_start_state(tmp_path, window=1)["k=2"] == [1.0, 0.0]
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "metrics.jsonl").write_text("\n".join(json.dumps(it(s, **{f"acc_k/{k}": a})) for s, k, a in
                                                    [(1, 4, 0.9), (2, 4, 0.7), (3, 0, 0.1)]))
    assert by_start_state(staged, window=2) == {"k=0": [None, 0.1], "k=4": [pytest.approx(0.8), 0.7]}


def test_lr_sweep_reads_each_runs_best_validation_epoch_and_its_test(tmp_path):
    import json
    from sft_lr import run_summary

    recs = [{"stage": "sft", "step": 3, "loss": 1.0}, {"stage": "sft", "step": 3, "epoch": 2.0, "val_accuracy": 0.5},
            {"stage": "sft", "step": 6, "epoch": 4.0, "val_accuracy": 0.4},
            {"stage": "sft", "step": 9, "epoch": 6.0, "val_accuracy": 0.5}]  # a tie: the first best is kept
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = run_summary(tmp_path)
    assert got == {"val": {2: 0.5, 4: 0.4, 6: 0.5}, "best_val": 0.5, "best_epoch": 2, "test": None}
    (tmp_path / "results.json").write_text(json.dumps({"sft/val": {"accuracy": 0.5}, "sft/test": {"accuracy": 0.55}}))
    assert run_summary(tmp_path)["test"] == 0.55


def test_self_training_rows_take_the_run_with_the_most_rounds_per_schedule(tmp_path):
    import json
    from paper_long import selftrain_runs

    for name in ("selftrain-r1", "selftrain-r3", "selftrain-r10", "selftrain-r1-sftrun", "selftrain-r2-sftrun"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"selftrain/test": {"accuracy": 0.5}}))
    (tmp_path / "selftrain-r20").mkdir()  # unfinished: no results
    assert selftrain_runs(tmp_path) == {"offline_st": tmp_path / "selftrain-r1", "expert_iter": tmp_path / "selftrain-r10",
                                        "offline_st_sftrun": tmp_path / "selftrain-r1-sftrun",
                                        "expert_iter_sftrun": tmp_path / "selftrain-r2-sftrun"}


def test_claim_table_pairs_each_row_with_sft_and_reads_the_warmups_last_checkpoint(tmp_path):
    """scripts/claim_table.py: accuracy per row and seed, the SFT row chosen among its candidates on validation (not
    on test), the paired difference to it on the seeds both have, a warm-up's last validation (not its best epoch),
    and an RL run's compute, its minutes from its first iteration when the folder was copied from another run
    (config newer than its records)."""
    import json
    import os

    import yaml
    from claim_table import collect, table

    def make(run, stage, results, recs, cfg=None, config_time=None):
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(results))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"stage": stage, **r}) + "\n" for r in recs))
        (run / "config.yaml").write_text(yaml.safe_dump(cfg or {}))
        if config_time is not None:
            os.utime(run / "config.yaml", (config_time, config_time))

    rl_cfg = {"rl": {"ppo_epochs": 1, "minibatches": 2, "prompts_per_step": 4, "num_generations": 2}}
    for s, (sft_val, sft_test, rl_val, rl_test) in enumerate([(0.50, 0.52, 0.56, 0.55), (0.54, 0.50, 0.53, 0.58)]):
        make(tmp_path / f"warm-{s}", "sft", {"sft/val": {"accuracy": 0.45}},  # best epoch 1; RL starts from epoch 2
             [{"step": 3, "time": 10.0, "epoch": 1.0, "val_accuracy": 0.45},
              {"step": 6, "time": 20.0, "epoch": 2.0, "val_accuracy": 0.30}], config_time=0.0)
        make(tmp_path / f"sft-{s}", "sft", {"sft/val": {"accuracy": sft_val}, "sft/test": {"accuracy": sft_test}},
             [{"step": 5, "time": 60.0, "loss": 1.0}, {"step": 10, "time": 120.0, "epoch": 2.0, "val_accuracy": 0.5}],
             config_time=0.0)
        make(tmp_path / f"sft-other-lr-{s}", "sft", {"sft/val": {"accuracy": 0.4}, "sft/test": {"accuracy": 0.9}},
             [{"step": 10, "time": 120.0, "epoch": 2.0, "val_accuracy": 0.4}], config_time=0.0)  # worse on val
        iters = [{"step": t, "time": 1000.0 + 30 * t, "rollout_tokens": 100.0, "accuracy": 0.5, "rollout_s": 10.0,
                  "scoring_s": 5.0, "update_s": 15.0} for t in (1, 2, 3)]
        make(tmp_path / f"rl-{s}", "rl", {"rl/val": {"accuracy": rl_val}, "rl/test": {"accuracy": rl_test}}, iters,
             rl_cfg, config_time=5000.0)  # copied and resumed later: work began at 1000
    spec = {"sizes": {8: {
        "warmup": {"label": "warm-up", "run": str(tmp_path / "warm-{s}"), "stage": "sft", "checkpoint": "last"},
        "sft": {"label": "SFT", "stage": "sft", "candidates": {"lr 1": str(tmp_path / "sft-other-lr-{s}"),
                                                                "lr 2": str(tmp_path / "sft-{s}"),
                                                                "lr 3": str(tmp_path / "sft-{s}")}},  # a tie: lr 2 kept
        "hybrid": {"label": "RL", "run": str(tmp_path / "rl-{s}"), "stage": "rl"}}}}
    found = collect(spec, [0, 1, 2])  # seed 2 has no runs
    rows = found[8]
    assert rows["warmup"]["acc"] == {"val": {0: 30.0, 1: 30.0}}
    assert rows["warmup"]["curves"] == {0: {3: 45.0, 6: 30.0}, 1: {3: 45.0, 6: 30.0}}  # what the plot draws
    assert rows["hybrid"]["acc"]["val"] == pytest.approx({0: 56.0, 1: 53.0})
    assert rows["hybrid"]["acc"]["test"] == pytest.approx({0: 55.0, 1: 58.0})
    c = rows["hybrid"]["compute"]
    assert c["optimizer_steps"] == [6, 6] and c["rollout_tokens"] == [300.0, 300.0] and c["rl_epochs"] == [3.0, 3.0]
    assert c["minutes"] == [1.5, 1.5] and c["iteration_s"] == [30.0, 30.0]
    assert rows["sft"]["compute"]["minutes"] == [2.0, 2.0]
    assert rows["sft"]["label"] == "SFT, lr 2" and rows["sft"]["candidates"] == pytest.approx(
        {"lr 1": 40.0, "lr 2": 52.0, "lr 3": 52.0})
    md = table(found, None).splitlines()
    hybrid = next(line for line in md if "| RL |" in line)
    # val: +6, -1 -> +2.5 ± 4.9 (1 of 2 ahead); test: +3, +8 -> +5.5 ± 3.5 (2 of 2)
    assert "+2.5 ± 4.9 (1/2) / +5.5 ± 3.5 (2/2)" in hybrid
    assert "| 24 (300) |" in hybrid and "| 0, 1 |" in hybrid
