#!/usr/bin/env python3
"""PyTorch + PEFT on CPU, the comparison for `cargo run --release -p tandem-worker --example bench_engine`.

Same model (SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to float32 by transformers), same settings: LoRA r=32,
alpha=64, dropout 0.05 on q_proj,v_proj, AdamW, batch 2 x 256 random tokens with the loss on every token (`train`)
or on the last --target-tokens of each row, the prompt's labels -100 as a PEFT user masks them (`sft`); greedy
generation and beam search (10 beams) of 64 new tokens for one prompt (KV cache); the same number of threads.
With --dtype bf16 the forward passes run under torch.autocast("cpu", dtype=torch.bfloat16), as a PyTorch user
computes in bf16 on a CPU (the weights and the LoRA adapters stay float32; autocast rounds the matmul inputs).

Pinned: torch==2.9.1 transformers==4.57.3 peft==0.17.1 gguf==0.19.0 (see scripts/parity/requirements.txt).
Usage: python scripts/bench/pytorch_peft.py [--threads 2] [--steps 5] [--model PATH.gguf]
       [--mode all|train|sft|generate|beam] [--target-tokens 64] [--dtype f32|bf16]
"""

import argparse
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DEFAULT = os.path.join(ROOT, ".cache", "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = "Below is a patient's chest X-ray findings: the heart is normal in size. The lungs are clear."


def load(path):
    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    return tok, model


def autocast(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def bench_train(path, steps, dtype, target=None):
    _, model = load(path)
    config = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (2, 256), generator=g)
    labels = ids.clone()
    if target is not None:
        labels[:, : 256 - target] = -100
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with autocast(dtype):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    mean = sum(times[1:]) / len(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = "lora " if target is None else f"sft (loss on {target} of 256 tokens)"
    print(f"{label} train  step {mean:.3f}s (mean of {steps})  {512 / mean:.0f} tokens/s  peak RSS {peak:.0f} MiB")


def bench_generate(path, dtype, beams=1):
    tok, model = load(path)
    model.eval()
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    settings = dict(do_sample=False, num_beams=beams, early_stopping=False, length_penalty=1.0, pad_token_id=0)
    with torch.no_grad(), autocast(dtype):
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **settings)
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=64, min_new_tokens=64, **settings)
        secs = time.perf_counter() - t
    new = out.shape[1] - ids.shape[1]
    what = "greedy" if beams == 1 else f"beam ({beams} beams)"
    print(f"{what} generate  prompt {ids.shape[1]} tokens, {new} new tokens in {secs:.2f}s  {new / secs:.1f} new tokens/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--model", default=DEFAULT)
    ap.add_argument("--mode", default="all", choices=["all", "train", "sft", "generate", "beam"])
    ap.add_argument("--target-tokens", type=int, default=40)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__} + PEFT, {a.threads} threads, compute {a.dtype}, {a.model}")
    if a.mode in ("all", "train"):
        bench_train(a.model, a.steps, a.dtype)
    if a.mode in ("all", "sft"):
        bench_train(a.model, a.steps, a.dtype, a.target_tokens)
    if a.mode in ("all", "generate"):
        bench_generate(a.model, a.dtype)
    if a.mode in ("all", "beam"):
        bench_generate(a.model, a.dtype, 10)


if __name__ == "__main__":
    main()
