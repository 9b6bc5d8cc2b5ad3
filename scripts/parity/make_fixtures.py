#!/usr/bin/env python3
"""Builds the reference fixtures that the Rust engine's parity tests load (worker/tests/fixtures/).

Pinned environment (see scripts/parity/requirements.txt):
    torch==2.9.1 transformers==4.57.3 peft==0.17.1 tokenizers==0.22.2 safetensors==0.8.0 gguf==0.19.0 numpy==2.4.6

Usage (from the repository root):
    python scripts/parity/make_fixtures.py all          # tiny LLaMA, tiny T5 and, when cached, SmolLM2
    python scripts/parity/make_fixtures.py tiny         # only the tiny random checkpoints
    python scripts/parity/make_fixtures.py smollm2      # only smollm2-logits.json (needs scripts/fetch-models.sh)
    python scripts/parity/make_fixtures.py check-adapter --base DIR --adapter DIR --ids 0,5,9 [--decoder-ids 0,4]
        prints the last-position logits of BASE + ADAPTER as PEFT computes them (to check that an adapter saved
        by Tandem loads in PEFT and gives the same logits as in Tandem).

Everything is deterministic: fixed seeds, one thread, eager attention, float32.
"""

import argparse
import copy
import csv
import json
import math
import os
import pathlib
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: E402
from tokenizers import processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
import transformers  # noqa: E402
import peft  # noqa: E402
import tokenizers  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "worker" / "tests" / "fixtures"
REPORTS_CSV = ROOT / "experiments" / "data" / "iu-xray" / "indiana_reports.csv"
SMOLLM2_DIR = ROOT / ".cache" / "models" / "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

PINNED = {"torch": "2.9.1", "transformers": "4.57.3", "peft": "0.17.1", "tokenizers": "0.22.2"}

# Beam-search settings shared by the LLaMA and T5 generate fixtures.
MAX_NEW_TOKENS = 10
NUM_BEAMS = 3
LENGTH_PENALTY = 0.6
REPETITION_PENALTY = 1.3


def check_versions():
    found = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
    }
    for name, want in PINNED.items():
        if found[name] != want:
            sys.exit(f"make_fixtures.py: {name} {found[name]} installed, the fixtures are pinned to {want}")


def r7(values):
    """Rounds floats to 7 decimals: far below the 1e-4 parity tolerance, and the JSON stays small."""
    return [round(float(v), 7) for v in values]


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def corpus_texts(limit=600):
    """Findings and impressions of the first LIMIT reports (the tokenizers' training text)."""
    texts = []
    with open(REPORTS_CSV, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= limit:
                break
            for column in ("findings", "impression"):
                text = (row.get(column) or "").strip()
                if text:
                    texts.append(text)
    return texts


# Fixed inputs. They are radiology-like sentences written for the fixtures, not patient reports.
LLAMA_TEXTS = [
    "No acute cardiopulmonary abnormality.",
    "The heart size is normal. The lungs are clear without focal consolidation.",
    "Stable cardiomegaly with mild pulmonary vascular congestion and small bilateral pleural effusions.",
]
T5_SOURCES = [
    "summarize: The heart is normal in size. The lungs are clear.",
    "summarize: Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
]
T5_TARGETS = ["Normal chest.", "Cardiomegaly and effusion."]
TOKENIZER_PROBES = [
    "No acute cardiopulmonary abnormality.",
    "  Leading spaces, 2 views;  double  space\nnew line",
    "Unicode: café naïve – 5 mm µ ✓",
    "",
]


# ----------------------------------------------------------------------------------------------------------
# Tokenizers


def byte_level_bpe(texts, vocab_size=400):
    """A LLaMA-3-style byte-level BPE tokenizer: <s>=0, </s>=1, <pad>=2, BOS prepended by the post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    assert fast.convert_tokens_to_ids(["<s>", "</s>", "<pad>"]) == [0, 1, 2]
    return fast


def t5_unigram(texts, vocab_size=300):
    """A T5-style Unigram tokenizer (Metaspace): <pad>=0, </s>=1, <unk>=2, EOS appended by the post-processor.

    The `tokenizers` Unigram trainer is not deterministic across runs, so the vocabulary is built here: every
    character of the corpus (alone and after the word-start mark) plus the most frequent words, scored by their
    log relative frequency; ties are broken by the piece itself.
    """
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    pre = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    words, chars = {}, {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            words[word] = words.get(word, 0) + 1
            for piece in list(word) + ([word[:2]] if len(word) > 1 else []):
                chars[piece] = chars.get(piece, 0) + 1
    total = sum(words.values()) + sum(chars.values())
    pieces = dict(chars)
    budget = vocab_size - 3 - len(pieces)
    ranked = sorted(((c, w) for w, c in words.items() if w not in pieces and len(w) > 2), key=lambda t: (-t[0], t[1]))
    for c, w in ranked[:budget]:
        pieces[w] = c
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, math.log(c / total)) for p, c in sorted(pieces.items(), key=lambda t: (-t[1], t[0]))]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )
    assert fast.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    return fast


def tokenizer_cases(tok):
    return [
        {
            "text": text,
            "ids": tok(text, add_special_tokens=False)["input_ids"],
            "ids_with_special": tok(text, add_special_tokens=True)["input_ids"],
        }
        for text in TOKENIZER_PROBES
    ]


# ----------------------------------------------------------------------------------------------------------
# Shared helpers


def perturb_norms(model, seed):
    """Random norm gains (1 + 0.2 N(0,1)) so that a norm weight the Rust side ignores is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))


def randomise_lora_b(peft_model, seed):
    """PEFT initialises lora_B to zero; random B makes the adapter change the logits."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
                n += 1
    assert n > 0


def lora_config_dict(cfg):
    return {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": sorted(cfg.target_modules),
    }


def save_adapter(peft_model, path):
    """PEFT's save_pretrained, made reproducible: the config names the base by its repository path and lists
    target_modules sorted (PEFT writes a set in hash order)."""
    peft_model.save_pretrained(path, safe_serialization=True)
    (path / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    config_path = path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config["base_model_name_or_path"] = str(path.parent.relative_to(ROOT))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def generate_case(model, name, input_ids, attention_mask, params):
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        **params,
    )
    case = {
        "name": name,
        "params": dict(params, max_new_tokens=MAX_NEW_TOKENS, do_sample=False),
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "sequences": out.sequences.tolist(),
    }
    if getattr(out, "sequences_scores", None) is not None:
        case["sequences_scores"] = r7(out.sequences_scores.tolist())
    return case


# ----------------------------------------------------------------------------------------------------------
# Tiny LLaMA


def llama_config(vocab_size, tie, layers=2):
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        # original_max_position_embeddings=64 puts the 8 RoPE frequencies of head_dim 16 into all three
        # bands of the Llama-3.1 scaling (kept, smoothly interpolated, divided by factor).
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=tie,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        attention_bias=False,
        mlp_bias=False,
    )


def llama_logits_cases(model, tok):
    cases = []
    for i, text in enumerate(LLAMA_TEXTS):
        ids = tok(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        n = ids.shape[1]
        positions = list(range(n)) if i == 0 else [n // 2, n - 1]
        cases.append(
            {
                "text": text,
                "input_ids": ids[0].tolist(),
                "positions": positions,
                "logits": [r7(logits[p].tolist()) for p in positions],
            }
        )
    return cases


def llama_loss_case(model, tok):
    """Causal-LM loss on a right-padded batch: prompt and pad label positions are -100."""
    prompts = ["Findings: clear lungs. Impression:", "Findings: enlarged heart. Impression:"]
    answers = [" Normal.", " Cardiomegaly, no edema."]
    rows, labels = [], []
    for p, a in zip(prompts, answers):
        p_ids = tok(p, add_special_tokens=True)["input_ids"]
        a_ids = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(len(r) for r in rows)
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    labels = [lab + [-100] * (width - len(lab)) for lab in labels]
    rows = [r + [tok.pad_token_id] * (width - len(r)) for r in rows]
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(rows), attention_mask=torch.tensor(mask), labels=torch.tensor(labels)
        )
    return {
        "input_ids": rows,
        "attention_mask": mask,
        "labels": labels,
        "loss": round(float(out.loss), 7),
        "note": "mean token cross-entropy over labels != -100, labels shifted left by one (HF causal LM)",
    }


def llama_generate(model, tok, adapter_model):
    prompts = [LLAMA_TEXTS[0], "Findings: The lungs are"]
    encoded = [tok(p, add_special_tokens=True, return_tensors="pt") for p in prompts]
    cases = []
    for enc, prompt in zip(encoded, prompts):
        ids, mask = enc["input_ids"], enc["attention_mask"]
        base = {"pad_token_id": 2, "eos_token_id": 1}
        cases.append(generate_case(model, "greedy", ids, mask, dict(base, num_beams=1)))
        cases.append(
            generate_case(
                model,
                "beam",
                ids,
                mask,
                dict(base, num_beams=NUM_BEAMS, length_penalty=LENGTH_PENALTY, early_stopping=True),
            )
        )
        cases.append(
            generate_case(
                model, "greedy_repetition_penalty", ids, mask,
                dict(base, num_beams=1, repetition_penalty=REPETITION_PENALTY),
            )
        )
        # The random model never picks </s>; declaring the token greedy picks at step 4 as EOS makes the
        # stopping rules (greedy stop, finished beams, early_stopping) matter.
        greedy_new = cases[-3]["sequences"][0][ids.shape[1]:]
        eos = greedy_new[3]
        cases.append(generate_case(model, "greedy_eos", ids, mask, dict(base, num_beams=1, eos_token_id=eos)))
        for early in (True, False):
            cases.append(
                generate_case(
                    model,
                    f"beam_eos_early_stopping_{str(early).lower()}",
                    ids,
                    mask,
                    dict(
                        base, num_beams=NUM_BEAMS, length_penalty=LENGTH_PENALTY, early_stopping=early,
                        eos_token_id=eos,
                    ),
                )
            )
        cases.append(generate_case(adapter_model, "greedy_with_adapter", ids, mask, dict(base, num_beams=1)))
        for c in cases[-7:]:
            c["prompt"] = prompt
    # A left-padded batch of both prompts (the HF convention for batched decoder-only generation).
    batch = tok(prompts, add_special_tokens=True, padding=True, return_tensors="pt")
    cases.append(
        generate_case(
            model, "greedy_batch_left_padded", batch["input_ids"], batch["attention_mask"],
            {"pad_token_id": 2, "eos_token_id": 1, "num_beams": 1},
        )
    )
    cases[-1]["prompt"] = prompts
    return cases


def build_llama(texts):
    out = FIXTURES / "tiny-llama"
    out_tied = FIXTURES / "tiny-llama-tied"
    tok = byte_level_bpe(texts)
    vocab = len(tok)

    torch.manual_seed(1234)
    model = LlamaForCausalLM._from_config(llama_config(vocab, tie=False), attn_implementation="eager").eval()
    perturb_norms(model, 1235)
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)

    # Reload as the Rust side will see it.
    model = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    logits = llama_logits_cases(model, tok)

    lcfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.05, bias="none", target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(4321)
    adapter_model = get_peft_model(copy.deepcopy(model), lcfg)
    randomise_lora_b(adapter_model, 4322)
    adapter_model.eval()
    save_adapter(adapter_model, out / "adapter")
    adapter_logits = llama_logits_cases(adapter_model, tok)

    # The saved adapter reloads in PEFT to the same logits.
    reloaded = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32),
        out / "adapter",
    ).eval()
    check = llama_logits_cases(reloaded, tok)
    assert check == adapter_logits, "reloaded adapter gives different logits"
    assert adapter_logits[0]["logits"] != logits[0]["logits"]

    write_json(
        out / "logits.json",
        {
            "model": "tiny-llama",
            "cases": logits,
            "adapter": {"dir": "adapter", "lora": lora_config_dict(lcfg), "cases": adapter_logits},
            "loss": llama_loss_case(model, tok),
            "tokenizer": tokenizer_cases(tok),
        },
    )
    write_json(out / "generate.json", {"model": "tiny-llama", "cases": llama_generate(model, tok, adapter_model)})

    # Tied variant, stored sharded (2 shards + index) so the sharded loader is tested too.
    torch.manual_seed(2345)
    # One layer keeps the committed fixtures small; the two-layer path is covered by tiny-llama.
    tied = LlamaForCausalLM._from_config(
        llama_config(vocab, tie=True, layers=1), attn_implementation="eager"
    ).eval()
    perturb_norms(tied, 2346)
    tied.save_pretrained(out_tied, safe_serialization=True, max_shard_size="150KB")
    tok.save_pretrained(out_tied)
    shards = sorted(p.name for p in out_tied.glob("model-*.safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], shards
    tied = LlamaForCausalLM.from_pretrained(out_tied, attn_implementation="eager", dtype=torch.float32)
    write_json(out_tied / "logits.json", {"model": "tiny-llama-tied", "cases": llama_logits_cases(tied.eval(), tok)})


# ----------------------------------------------------------------------------------------------------------
# Tiny T5


def t5_config(vocab_size, variant):
    gated = variant == "gated-gelu"
    return T5Config(
        vocab_size=vocab_size,
        d_model=64,
        # relu: 4 heads x d_kv 8 = inner 32 != d_model, so a d_model used where the attention's inner size is
        # meant fails; gated-gelu: inner 64 == d_model as in t5-base/FLAN-T5-base. d_ff 96 != d_model catches
        # transposed feed-forward weights.
        d_kv=16 if gated else 8,
        d_ff=96,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj=variant,
        tie_word_embeddings=not gated,
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        initializer_factor=1.0,
    )


def t5_logits_cases(model, tok):
    cases = []
    # The long source (> 128 tokens) reaches relative distances past max_distance; the long target reaches the
    # decoder's logarithmic buckets.
    long_source = "summarize: " + " ".join(LLAMA_TEXTS * 12)
    long_target = " ".join(T5_TARGETS * 6)
    sources = T5_SOURCES + [long_source]
    targets = T5_TARGETS + [long_target]
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        enc = tok(src, add_special_tokens=True, return_tensors="pt")["input_ids"]
        labels = tok(tgt, add_special_tokens=True)["input_ids"]
        dec = torch.tensor([[0] + labels[:-1]])
        with torch.no_grad():
            logits = model(input_ids=enc, decoder_input_ids=dec).logits[0]
        n = dec.shape[1]
        positions = list(range(n)) if i == 0 else [0, n // 2, n - 1]
        cases.append(
            {
                "source": src if i < 2 else "long: LLAMA_TEXTS x 12",
                "input_ids": enc[0].tolist(),
                "decoder_input_ids": dec[0].tolist(),
                "positions": positions,
                "logits": [r7(logits[p].tolist()) for p in positions],
            }
        )
    # A right-padded encoder batch with its attention mask.
    enc = tok(T5_SOURCES, add_special_tokens=True, padding=True, return_tensors="pt")
    dec = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=dec).logits
    cases.append(
        {
            "source": "batch of both sources, right-padded",
            "input_ids": enc["input_ids"].tolist(),
            "attention_mask": enc["attention_mask"].tolist(),
            "decoder_input_ids": dec.tolist(),
            "positions": [3],
            "logits": [r7(logits[b, 3].tolist()) for b in range(2)],
            "note": "batched: logits[b] is the last decoder position of row b",
        }
    )
    return cases


def t5_loss_case(model, tok):
    """Decoder cross-entropy on a padded batch: labels padded with -100 (HF shifts labels right itself)."""
    enc = tok(T5_SOURCES, add_special_tokens=True, padding=True, return_tensors="pt")
    label_rows = [tok(t, add_special_tokens=True)["input_ids"] for t in T5_TARGETS]
    width = max(len(r) for r in label_rows)
    labels = [r + [-100] * (width - len(r)) for r in label_rows]
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=torch.tensor(labels))
    return {
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "labels": labels,
        "loss": round(float(out.loss), 7),
        "note": "decoder_input_ids = [decoder_start_token_id] + labels[:-1] with -100 -> pad; mean CE over labels != -100",
    }


def t5_generate(model, tok, adapter_model):
    cases = []
    for src in T5_SOURCES:
        enc = tok(src, add_special_tokens=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        base = {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
        first = len(cases)
        cases.append(generate_case(model, "greedy", ids, mask, dict(base, num_beams=1)))
        cases.append(
            generate_case(
                model, "beam", ids, mask,
                dict(base, num_beams=NUM_BEAMS, length_penalty=LENGTH_PENALTY, early_stopping=True),
            )
        )
        cases.append(
            generate_case(
                model, "greedy_repetition_penalty", ids, mask,
                dict(base, num_beams=1, repetition_penalty=REPETITION_PENALTY),
            )
        )
        # As for LLaMA: the token greedy picks at step 4 stands in for EOS so that stopping rules matter.
        eos = cases[first]["sequences"][0][4]
        cases.append(generate_case(model, "greedy_eos", ids, mask, dict(base, num_beams=1, eos_token_id=eos)))
        for early in (True, False):
            cases.append(
                generate_case(
                    model,
                    f"beam_eos_early_stopping_{str(early).lower()}",
                    ids,
                    mask,
                    dict(
                        base, num_beams=NUM_BEAMS, length_penalty=LENGTH_PENALTY, early_stopping=early,
                        eos_token_id=eos,
                    ),
                )
            )
        cases.append(generate_case(adapter_model, "greedy_with_adapter", ids, mask, dict(base, num_beams=1)))
        for c in cases[first:]:
            c["source"] = src
    batch = tok(T5_SOURCES, add_special_tokens=True, padding=True, return_tensors="pt")
    cases.append(
        generate_case(
            model, "greedy_batch_padded", batch["input_ids"], batch["attention_mask"],
            {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "num_beams": 1},
        )
    )
    cases[-1]["source"] = T5_SOURCES
    return cases


def build_t5(texts):
    tok = t5_unigram(texts)
    # Like t5-base (32128 vs 32100), the model's vocabulary is larger than the tokenizer's.
    vocab = (len(tok) + 15) // 16 * 16
    for k, variant in enumerate(["relu", "gated-gelu"]):
        out = FIXTURES / "tiny-t5" / variant
        torch.manual_seed(5000 + k)
        model = T5ForConditionalGeneration(t5_config(vocab, variant)).eval()
        perturb_norms(model, 6000 + k)
        with torch.no_grad():
            # T5 initialises the bucket embedding with std d_model**-0.5; make the position bias matter more.
            for name, p in model.named_parameters():
                if "relative_attention_bias" in name:
                    p.mul_(8.0)
            if variant == "relu":
                # With T5's init the tied embedding (std 1) dominates the residual stream and the tied head
                # makes the model copy its last input token forever; a smaller embedding and larger sublayer
                # outputs give varied generations.
                model.shared.weight.mul_(0.3)
                for name, p in model.named_parameters():
                    if name.endswith(".o.weight") or name.endswith(".wo.weight"):
                        p.mul_(3.0)
            if variant == "gated-gelu":
                # T5 initialises the untied head with std 1, which makes the tiny model's next-token
                # distribution nearly one-hot; greedy, beam and the repetition penalty would then agree.
                model.lm_head.weight.mul_(0.15)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        model = T5ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
        logits = t5_logits_cases(model, tok)

        lcfg = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.05, bias="none", target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"
        )
        torch.manual_seed(7000 + k)
        adapter_model = get_peft_model(copy.deepcopy(model), lcfg)
        randomise_lora_b(adapter_model, 7100 + k)
        adapter_model.eval()
        save_adapter(adapter_model, out / "adapter")
        adapter_logits = t5_logits_cases(adapter_model, tok)
        reloaded = PeftModel.from_pretrained(
            T5ForConditionalGeneration.from_pretrained(out, dtype=torch.float32), out / "adapter"
        ).eval()
        assert t5_logits_cases(reloaded, tok) == adapter_logits, "reloaded adapter gives different logits"
        assert adapter_logits[0]["logits"] != logits[0]["logits"]

        write_json(
            out / "logits.json",
            {
                "model": f"tiny-t5/{variant}",
                "cases": logits,
                "adapter": {"dir": "adapter", "lora": lora_config_dict(lcfg), "cases": adapter_logits},
                "loss": t5_loss_case(model, tok),
                "tokenizer": tokenizer_cases(tok),
            },
        )
        write_json(out / "generate.json", {"model": f"tiny-t5/{variant}", "cases": t5_generate(model, tok, adapter_model)})


# ----------------------------------------------------------------------------------------------------------
# SmolLM2 GGUF (transformers' own GGUF loading)


SMOLLM2_PROMPTS = [
    "Summarize the findings: The heart is normal in size. The lungs are clear.",
    "<|im_start|>user\nWhat is a chest X-ray?<|im_end|>\n<|im_start|>assistant\n",
]
SMOLLM2_TOKENIZER_PROBES = TOKENIZER_PROBES + [
    "<|im_start|>system\nYou are a radiologist.<|im_end|>\n",
    "1234567 tokens, 3.14159; tabs\tand\r\nCRLF",
    "Emoji 🫁 and CJK 胸部",
]


def build_smollm2():
    path = SMOLLM2_DIR / SMOLLM2_FILE
    if not path.exists():
        print(f"skipping smollm2-logits.json: {path} is absent (run scripts/fetch-models.sh)")
        return
    tok = AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        SMOLLM2_DIR, gguf_file=SMOLLM2_FILE, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prompts = []
    for i, text in enumerate(SMOLLM2_PROMPTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            last = model(input_ids=torch.tensor([ids])).logits[0, -1]
        top = torch.topk(last, 20)
        entry = {
            "text": text,
            "input_ids": ids,
            "top": [{"id": int(t), "logit": round(float(v), 5)} for v, t in zip(top.values, top.indices)],
        }
        if i == 0:
            # 4 decimals: far below the 1e-3 tolerance, and the file stays under 1 MB.
            entry["last_logits"] = [round(float(v), 4) for v in last.tolist()]
        prompts.append(entry)
    probes = [
        {
            "text": text,
            "ids": tok(text, add_special_tokens=False)["input_ids"],
            "ids_with_special": tok(text, add_special_tokens=True)["input_ids"],
        }
        for text in SMOLLM2_TOKENIZER_PROBES
    ]
    write_json(
        FIXTURES / "smollm2-logits.json",
        {
            "model": f".cache/models/smollm2/{SMOLLM2_FILE}",
            "loader": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=...), float32 (dequantised Q4_1)",
            "vocab_size": model.config.vocab_size,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "prompts": prompts,
            "tokenizer": probes,
        },
    )


# ----------------------------------------------------------------------------------------------------------
# check-adapter


def check_adapter(base, adapter, ids, decoder_ids):
    config = json.loads((pathlib.Path(base) / "config.json").read_text())
    seq2seq = config.get("is_encoder_decoder", False)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = PeftModel.from_pretrained(cls.from_pretrained(base, dtype=torch.float32), adapter).eval()
    with torch.no_grad():
        if seq2seq:
            out = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([decoder_ids or [0]]))
        else:
            out = model(input_ids=torch.tensor([ids]))
    print(json.dumps({"last_logits": r7(out.logits[0, -1].tolist())}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("all")
    sub.add_parser("tiny")
    sub.add_parser("smollm2")
    check = sub.add_parser("check-adapter")
    check.add_argument("--base", required=True)
    check.add_argument("--adapter", required=True)
    check.add_argument("--ids", required=True)
    check.add_argument("--decoder-ids", default="")
    args = parser.parse_args()

    check_versions()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.command == "check-adapter":
        parse = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
        check_adapter(args.base, args.adapter, parse(args.ids), parse(args.decoder_ids))
        return
    if args.command in ("all", "tiny"):
        texts = corpus_texts()
        build_llama(texts)
        build_t5(texts)
    if args.command in ("all", "smollm2"):
        build_smollm2()


if __name__ == "__main__":
    main()
