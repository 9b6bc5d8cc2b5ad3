"""Times the Python reference packages on the pairs the Rust bench wrote (target/metrics-bench-pairs.jsonl), so
the two throughputs compare on the same text and machine.

Pinned (requirements): sacrebleu==2.6.0 rouge-score==0.1.2 nltk==3.10.4 bert-score==0.3.13 transformers==4.57.3
torch==2.9.1. Run from the repository root after `cargo bench -p tandem-experiments --bench metrics`:
  .cache/metrics/venv/bin/python scripts/metrics/bench_reference.py [--pairs-file F] [--threads 2] [--bertscore-pairs 512]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wordnet_setup  # noqa: E402
from make_fixtures import normalize  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-file", default="target/metrics-bench-pairs.jsonl")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bertscore-pairs", type=int, default=512)
    ap.add_argument("--model", default=".cache/models/all-MiniLM-L6-v2")
    args = ap.parse_args()
    wordnet_setup.setup(os.environ.get("TANDEM_NLTK_DATA", "/tmp/tandem-nltk-data"))
    import sacrebleu
    from nltk.corpus import wordnet as wn
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    pairs = [json.loads(line) for line in open(args.pairs_file, encoding="utf-8")]
    t = time.perf_counter()
    wn.ensure_loaded()
    wn.synsets("enlarged")
    print(f"nltk WordNet loaded in {time.perf_counter() - t:.3f} s")

    t = time.perf_counter()
    cands = [normalize(p["candidate"]) for p in pairs]
    refs = [normalize(p["reference"]) for p in pairs]
    bleu = [BLEU(max_ngram_order=n).corpus_score(cands, [refs]).score / 100 for n in range(1, 5)]
    for c, r in zip(cands, refs):
        for n in range(1, 5):
            BLEU(max_ngram_order=n).corpus_score([c], [[r]])
        sacrebleu.sentence_bleu(c, [r])
    t_bleu = time.perf_counter() - t
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    t = time.perf_counter()
    rouge_l = sum(scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(cands, refs)) / len(pairs)
    t_rouge = time.perf_counter() - t
    t = time.perf_counter()
    meteor = sum(meteor_score([r.split()], c.split()) for c, r in zip(cands, refs)) / len(pairs)
    t_meteor = time.perf_counter() - t
    total = t_bleu + t_rouge + t_meteor
    print(f"sacrebleu {t_bleu:.2f} s, rouge-score {t_rouge:.2f} s, nltk meteor {t_meteor:.2f} s")
    print(f"BLEU+ROUGE+METEOR (Python, 1 process): {len(pairs)} pairs in {total:.2f} s = "
          f"{len(pairs) / total:.0f} pairs/s (bleu4 {bleu[3]:.4f} rougeL {rouge_l:.4f} meteor {meteor:.4f})")

    if not os.path.isfile(os.path.join(args.model, "model.safetensors")):
        print(f"BERTScore skipped: {args.model} absent")
        return
    import torch
    import bert_score

    torch.set_num_threads(args.threads)
    n = min(args.bertscore_pairs, len(pairs))
    model = bert_score.BERTScorer(model_type=args.model, num_layers=6, device="cpu", batch_size=64)
    t = time.perf_counter()
    _, _, f = model.score(cands[:n], refs[:n])
    secs = time.perf_counter() - t
    print(f"BERTScore bert-score 0.3.13 all-MiniLM-L6-v2 (6 layers), torch threads {args.threads}: {n} pairs in "
          f"{secs:.3f} s = {n / secs:.1f} pairs/s (mean F1 {f.mean().item():.4f})")


if __name__ == "__main__":
    main()
