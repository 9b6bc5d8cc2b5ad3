#!/usr/bin/env python3
"""PyTorch + PEFT on CPU, the comparison for `cargo run --release -p tandem-worker --example bench_engine`.

Same model (SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to float32 by transformers), same settings: LoRA r=32,
alpha=64, dropout 0.05 on q_proj,v_proj, AdamW, batch 2 x 256 random tokens with the loss on every token; greedy
generation of 64 new tokens for one prompt (KV cache); the same number of threads.

Pinned: torch==2.9.1 transformers==4.57.3 peft==0.17.1 gguf==0.19.0 (see scripts/parity/requirements.txt).
Usage: python scripts/bench/pytorch_peft.py [--threads 2] [--steps 5] [--model PATH.gguf]
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


def bench_train(path, steps):
    _, model = load(path)
    config = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (2, 256), generator=g)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    mean = sum(times[1:]) / len(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lora  train  step {mean:.3f}s (mean of {steps})  {512 / mean:.0f} tokens/s  peak RSS {peak:.0f} MiB")


def bench_generate(path):
    tok, model = load(path)
    model.eval()
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
        secs = time.perf_counter() - t
    new = out.shape[1] - ids.shape[1]
    print(f"greedy generate  prompt {ids.shape[1]} tokens, {new} new tokens in {secs:.2f}s  {new / secs:.1f} new tokens/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--model", default=DEFAULT)
    ap.add_argument("--mode", default="all", choices=["all", "train", "generate"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__} + PEFT, {a.threads} threads, {a.model}")
    if a.mode in ("all", "train"):
        bench_train(a.model, a.steps)
    if a.mode in ("all", "generate"):
        bench_generate(a.model)


if __name__ == "__main__":
    main()
