"""Builds the metric parity fixtures in experiments/tests/fixtures/metrics/ from the IU X-ray impressions.

Pinned reference packages (requirements): sacrebleu==2.6.0 rouge-score==0.1.2 nltk==3.10.4 bert-score==0.3.13
transformers==4.57.3 torch==2.9.1; WordNet 3.0 from Debian wordnet-base 1:3.0-37 (see wordnet_setup.py).
Run from the repository root:  .cache/metrics/venv/bin/python scripts/metrics/make_fixtures.py
Deterministic: a fixed seed for the pairs and for the tiny random BERT.

Writes:
  pairs.jsonl          >= 200 candidate/reference pairs (kind: near-miss, perturbed, exact, empty, one-word,
                       punctuation, case, unicode, synonym, multi-line)
  reference.json       the reference packages' values per pair and per corpus, for the preprocessed ("norm") and
                       the raw text: sacrebleu BLEU-1..4 and sentence_bleu, rouge-score with/without stemmer,
                       nltk METEOR, bert-score on the tiny BERT (num_layers 2 of 3: plain, idf, baseline;
                       num_layers 1; raw text with all 3 layers)
  tiny-bert/           a random 3-layer BERT (hidden 32) with a WordPiece vocabulary from the impressions
  tiny-bert-baseline.tsv  a bert-score baseline file (LAYER,P,R,F) for the rescaling test
  minilm.json          bert-score with .cache/models/all-MiniLM-L6-v2 (num_layers 6) on a few pairs, if present
  stems.json           nltk PorterStemmer().stem for every word of the pairs
  synonyms.json        METEOR's WordNet synonym sets (lower-case lemma names without "_") for many words
"""

import collections
import csv
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wordnet_setup  # noqa: E402

OUT = "experiments/tests/fixtures/metrics"
IU = "experiments/data/iu-xray/indiana_reports.csv"
MINILM = ".cache/models/all-MiniLM-L6-v2"
SEED = 20261126


def normalize(text):
    """The thesis preprocessing, as experiments/src/metrics/text.rs implements it."""
    lines = (" ".join(x.split()) for x in text.lower().split("\n"))
    return "\n".join(line for line in lines if line)


def build_pairs():
    rng = random.Random(SEED)
    rows = [r for r in csv.DictReader(open(IU, encoding="utf-8")) if r["impression"].strip()]
    imps = [" ".join(r["impression"].split()) for r in rows]
    by_problem = collections.defaultdict(list)
    for r, imp in zip(rows, imps):
        by_problem[r["Problems"]].append(imp)
    pairs = []

    def add(kind, cand, ref):
        pairs.append({"candidate": cand, "reference": ref, "kind": kind, "id": len(pairs)})

    # Near-miss: impressions of other reports with the same Problems field.
    groups = [g for g in by_problem.values() if len(set(g)) > 1]
    for _ in range(60):
        g = rng.choice(groups)
        a, b = rng.sample(sorted(set(g)), 2)
        add("near-miss", a, b)
    # Perturbed copies: drop, swap, duplicate or replace words.
    replacements = {"no": "without", "normal": "unremarkable", "acute": "new", "heart": "cardiac",
                    "lungs": "lung", "effusion": "effusions", "small": "tiny", "large": "big",
                    "enlarged": "increased", "disease": "process", "clear": "clean"}
    for _ in range(50):
        words = rng.choice(imps).split()
        op = rng.randrange(4)
        if op == 0 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif op == 1 and len(words) > 1:
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        elif op == 2:
            i = rng.randrange(len(words))
            words.insert(i, words[i])
        else:
            words = [replacements.get(w.lower(), w) for w in words]
        ref = rng.choice(imps) if rng.random() < 0.1 else " ".join(rng.choice(imps).split())
        add("perturbed", " ".join(words), " ".join(words) if op == 3 else ref)
    for _ in range(20):
        imp = rng.choice(imps)
        add("exact", imp, imp)
    for ref in rng.sample(imps, 6):
        add("empty", "", ref)
    add("empty", "   ", rng.choice(imps))
    add("empty", "No acute disease.", "")
    add("empty", "", "")
    for _ in range(15):
        ref = rng.choice(imps)
        word = rng.choice(ref.split() + ["normal", "effusion", "Cardiomegaly.", "no"])
        add("one-word", word, ref)
    for _ in range(15):
        ref = rng.choice(imps)
        cand = "".join(c for c in ref if c.isalnum() or c.isspace()) if rng.random() < 0.5 else \
            ref.replace(".", " . ").replace(",", " ,, ") + " ..."
        add("punctuation", cand, ref)
    add("punctuation", "&amp; &lt;skipped&gt; 1.5 cm, 3-4 x-ray; (left) [right] {a}~`^_|\\", "1.5cm 3 - 4 x-ray")
    for _ in range(15):
        ref = rng.choice(imps)
        cand = rng.choice([ref.upper(), ref.lower(), ref.title(), ref.swapcase()])
        add("case", cand, ref)
    unicode_bits = ["é", "µm", "5 × 3 cm", "37 °C", "–", "\u00a0", "naïve", "β-blocker", "肺", "🙂", "ΣΊΣΥΦΟΣ",
                    "İstanbul", "ﬁbrosis", "\u2028", "\u200b", "Ⅻ", "K"]
    for bit in unicode_bits:
        ref = rng.choice(imps)
        words = ref.split()
        words.insert(rng.randrange(len(words) + 1), bit)
        add("unicode", " ".join(words), ref)
    add("unicode", "Pneumothorax\x1cresolved\u3000now.", "Pneumothorax resolved.")
    synonym_pairs(rng, imps, add)
    for _ in range(15):
        a, b, c = rng.sample(imps, 3)
        add("multi-line", f"{a}\n{b}", f"{b}\n \n{a}\t\n{c}" if rng.random() < 0.5 else f"{a}  \r\n{c}")
    return pairs


def synonym_pairs(rng, imps, add, wanted=25):
    """Pairs whose METEOR depends on the WordNet stage: one word swapped for a WordNet synonym."""
    from nltk.corpus import wordnet as wn
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import meteor_score

    class NoWordNet:
        def synsets(self, word):
            return []

    stemmer = PorterStemmer()
    made = 0
    for imp in rng.sample(imps, len(imps)):
        words = imp.split()
        for k in rng.sample(range(len(words)), len(words)):
            lw = words[k].lower()
            alts = sorted({l.name() for s in wn.synsets(stemmer.stem(lw)) for l in s.lemmas()
                           if "_" not in l.name() and l.name() == l.name().lower()} - {lw})
            if not alts:
                continue
            cand = " ".join(words[:k] + [rng.choice(alts)] + words[k + 1:])
            ref_t, cand_t = [imp.lower().split()], cand.lower().split()
            if meteor_score(ref_t, cand_t) != meteor_score(ref_t, cand_t, wordnet=NoWordNet()):
                add("synonym", cand, imp)
                made += 1
                break
        if made >= wanted:
            return


def text_reference(cands, refs):
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer
    import sacrebleu
    from sacrebleu.metrics import BLEU

    out = {"pairs": [dict() for _ in cands], "corpus": {}}
    for n in range(1, 5):
        bleu = BLEU(max_ngram_order=n)
        out["corpus"][f"bleu{n}"] = bleu.corpus_score(cands, [refs]).score / 100
        for i, (c, r) in enumerate(zip(cands, refs)):
            out["pairs"][i][f"bleu{n}"] = bleu.corpus_score([c], [[r]]).score / 100
    for i, (c, r) in enumerate(zip(cands, refs)):
        out["pairs"][i]["sentence_bleu"] = sacrebleu.sentence_bleu(c, [r]).score / 100
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    for stem in (False, True):
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
        suffix = "_stem" if stem else ""
        sums = collections.Counter()
        for i, (c, r) in enumerate(zip(cands, refs)):
            s = scorer.score(r, c)
            for t in types:
                out["pairs"][i][t + suffix] = [s[t].precision, s[t].recall, s[t].fmeasure]
                sums[t + suffix] += s[t].fmeasure
        for k, v in sums.items():
            out["corpus"][k] = v / len(cands)
    total = 0.0
    for i, (c, r) in enumerate(zip(cands, refs)):
        m = meteor_score([r.split()], c.split())
        out["pairs"][i]["meteor"] = m
        total += m
    out["corpus"]["meteor"] = total / len(cands)
    return out


def make_tiny_bert(texts, path):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.models.bert.tokenization_bert import BasicTokenizer

    basic = BasicTokenizer(do_lower_case=True)
    counts = collections.Counter(w for t in texts for w in basic.tokenize(t))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({ch for w in counts for ch in w if ch.isascii()})
    vocab = specials + chars + ["##" + ch for ch in chars]
    vocab += [w for w, _ in counts.most_common() if w not in vocab and w.isascii()][:600]
    vocab += ["##s", "##ed", "##ing", "##ly", "##ion"]
    vocab = list(dict.fromkeys(vocab))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as fp:
        fp.write("\n".join(vocab) + "\n")
    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512, initializer_range=0.3)
    model = BertModel(config, add_pooling_layer=False)
    # Less anisotropy than a plain random init (zero token-type embedding, small positions, centred words,
    # LayerNorm gains of random sign), so that some tokens' best cosine is negative and bert-score's zero padding
    # in its matching batches matters (the Rust side reproduces it; the layer-1 variant exercises it).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.randn_like(p))
            elif "LayerNorm.bias" in name or "token_type" in name:
                p.zero_()
            elif "position_embeddings" in name:
                p.mul_(0.1)
            elif "word_embeddings" in name:
                p.sub_(p.mean(0, keepdim=True))
    model.save_pretrained(path, safe_serialization=True)
    os.chmod(os.path.join(path, "model.safetensors"), 0o644)
    tok = BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt"), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(path)


def bertscore_reference(cands, refs, model_dir, num_layers, baseline_path=None):
    import bert_score

    res = {}
    variants = [("plain", False, False), ("idf", True, False)]
    if baseline_path:
        variants.append(("baseline", False, True))
    for name, idf, rescale in variants:
        kwargs = dict(model_type=model_dir, num_layers=num_layers, idf=idf, device="cpu", batch_size=64)
        if rescale:
            kwargs.update(rescale_with_baseline=True, baseline_path=baseline_path, lang="en")
        p, r, f = bert_score.score(cands, refs, **kwargs)
        res[name] = [[float(a), float(b), float(c)] for a, b, c in zip(p, r, f)]
    return res


def main():
    wordnet_setup.setup(os.environ.get("TANDEM_NLTK_DATA", "/tmp/tandem-nltk-data"))
    os.makedirs(OUT, exist_ok=True)
    pairs = build_pairs()
    with open(os.path.join(OUT, "pairs.jsonl"), "w", encoding="utf-8", newline="\n") as fp:
        for p in pairs:
            fp.write(json.dumps(p, ensure_ascii=False) + "\n")
    raw_c = [p["candidate"] for p in pairs]
    raw_r = [p["reference"] for p in pairs]
    norm_c = [normalize(t) for t in raw_c]
    norm_r = [normalize(t) for t in raw_r]
    reference = {"norm": text_reference(norm_c, norm_r), "raw": text_reference(raw_c, raw_r)}

    tiny = os.path.join(OUT, "tiny-bert")
    rows = [r for r in csv.DictReader(open(IU, encoding="utf-8"))]
    make_tiny_bert([r["impression"] + " " + r["findings"] for r in rows], tiny)
    baseline = os.path.join(OUT, "tiny-bert-baseline.tsv")
    with open(baseline, "w", encoding="utf-8") as fp:
        fp.write("LAYER,P,R,F\n0,0.1,0.2,0.15\n1,0.31,0.27,0.29\n2,0.42,0.38,0.40\n3,0.5,0.5,0.5\n")
    reference["bertscore_tiny"] = bertscore_reference(norm_c, norm_r, tiny, 2, baseline)
    reference["bertscore_tiny_l1"] = bertscore_reference(norm_c, norm_r, tiny, 1)["plain"]
    reference["bertscore_tiny_raw"] = bertscore_reference(raw_c, raw_r, tiny, 3)["plain"]
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as fp:
        json.dump(reference, fp, indent=0)

    if os.path.isfile(os.path.join(MINILM, "model.safetensors")):
        picks = [0, 1, 2, 60, 61, 110, 130, 131, 140, 160, 180, 200]
        picks = [i for i in picks if i < len(pairs)]
        c = [norm_c[i] for i in picks]
        r = [norm_r[i] for i in picks]
        values = bertscore_reference(c, r, MINILM, 6)
        with open(os.path.join(OUT, "minilm.json"), "w", encoding="utf-8") as fp:
            json.dump({"ids": picks, "num_layers": 6, **values}, fp, indent=0)

    from nltk.stem.porter import PorterStemmer
    from nltk.corpus import wordnet as wn

    stemmer = PorterStemmer()
    words = sorted({w for t in norm_c + norm_r + raw_c for w in t.split()} |
                   {w for t in norm_c + norm_r for w in "".join(ch if ch.isalnum() else " " for ch in t).split()})
    with open(os.path.join(OUT, "stems.json"), "w", encoding="utf-8") as fp:
        json.dump({w: stemmer.stem(w) for w in words}, fp, indent=0, ensure_ascii=False)
    queries = sorted(set(words) | {stemmer.stem(w) for w in words} |
                     {"dogs", "churches", "aardwolves", "abaci", "better", "ran", "geese", "hardest", "feet"})
    synonyms = {}
    for w in queries:
        names = {l.name() for s in wn.synsets(w) for l in s.lemmas() if "_" not in l.name()}
        synonyms[w] = sorted(n for n in names if n == n.lower())
    with open(os.path.join(OUT, "synonyms.json"), "w", encoding="utf-8") as fp:
        json.dump(synonyms, fp, indent=0, ensure_ascii=False)
    print(f"{len(pairs)} pairs, {len(words)} words, {sum(1 for v in synonyms.values() if v)} with synonyms")


if __name__ == "__main__":
    main()
