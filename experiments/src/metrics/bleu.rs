//! BLEU exactly as sacrebleu 2.6.0: the `13a` tokeniser, clipped n-gram counts, brevity penalty, corpus BLEU with
//! `exp` smoothing for max order 1..4, and `sentence_bleu` (exp smoothing, effective order). Scores are in [0, 1]
//! (sacrebleu's value / 100).

use std::collections::HashMap;

use super::text::{py_rstrip, py_split};

/// Highest n-gram order kept in the statistics.
pub const MAX_ORDER: usize = 4;

/// sacrebleu's `mteval-v13a` tokenisation of one segment (after its `rstrip()`), tokens joined by one space.
pub fn tokenize_13a(segment: &str) -> String {
    let mut line = py_rstrip(segment)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let src = line.as_bytes();
    // Pass 1: pad the symbols of sacrebleu's first regex: {|}~ [\]^_` space!"#$%& ()*+ :;<=>?@ /
    let mut a = Vec::with_capacity(src.len() * 2 + 2);
    a.push(b' ');
    for &b in src {
        if matches!(b, b'{'..=b'~' | b'['..=b'`' | b' '..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/') {
            a.extend_from_slice(&[b' ', b, b' ']);
        } else {
            a.push(b);
        }
    }
    a.push(b' ');
    // Pass 2: ([^0-9])([\.,]) -> "\1 \2 " (non-overlapping, left to right). Byte-level scanning is equivalent:
    // the patterns only name ASCII bytes, and a UTF-8 continuation byte is never one of them.
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        if i + 1 < a.len() && !a[i].is_ascii_digit() && matches!(a[i + 1], b'.' | b',') {
            b.extend_from_slice(&[a[i], b' ', a[i + 1], b' ']);
            i += 2;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    // Pass 3: ([\.,])([^0-9]) -> " \1 \2".
    let mut c = Vec::with_capacity(b.len() + 16);
    let mut i = 0;
    while i < b.len() {
        if i + 1 < b.len() && matches!(b[i], b'.' | b',') && !b[i + 1].is_ascii_digit() {
            c.extend_from_slice(&[b' ', b[i], b' ', b[i + 1]]);
            i += 2;
        } else {
            c.push(b[i]);
            i += 1;
        }
    }
    // Pass 4: ([0-9])(-) -> "\1 \2 ".
    let mut d = Vec::with_capacity(c.len() + 16);
    let mut i = 0;
    while i < c.len() {
        if i + 1 < c.len() && c[i].is_ascii_digit() && c[i + 1] == b'-' {
            d.extend_from_slice(&[c[i], b' ', b'-', b' ']);
            i += 2;
        } else {
            d.push(c[i]);
            i += 1;
        }
    }
    // Only ASCII was inserted, at character boundaries, so this cannot fail; be safe anyway.
    let spaced =
        String::from_utf8(d).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let mut out = String::with_capacity(spaced.len());
    for token in py_split(&spaced) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(token);
    }
    out
}

/// Sufficient statistics of one candidate/reference pair (orders 1..=4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BleuStats {
    pub hyp_len: usize,
    pub ref_len: usize,
    pub correct: [usize; MAX_ORDER],
    pub total: [usize; MAX_ORDER],
}

impl BleuStats {
    /// Statistics of a pair of raw (untokenised) segments.
    pub fn from_pair(candidate: &str, reference: &str) -> BleuStats {
        let cand = tokenize_13a(candidate);
        let refr = tokenize_13a(reference);
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let hyp = intern(&mut ids, &cand);
        let rf = intern(&mut ids, &refr);
        let mut stats = BleuStats {
            hyp_len: hyp.len(),
            ref_len: rf.len(),
            ..BleuStats::default()
        };
        let mut hyp_grams: Vec<&[u32]> = Vec::with_capacity(hyp.len());
        let mut ref_grams: Vec<&[u32]> = Vec::with_capacity(rf.len());
        for n in 1..=MAX_ORDER {
            hyp_grams.clear();
            ref_grams.clear();
            hyp_grams.extend(hyp.windows(n));
            ref_grams.extend(rf.windows(n));
            stats.total[n - 1] = hyp_grams.len();
            stats.correct[n - 1] = clipped_matches(&mut hyp_grams, &mut ref_grams);
        }
        stats
    }

    /// Adds another pair's statistics (corpus aggregation).
    pub fn add(&mut self, other: &BleuStats) {
        self.hyp_len += other.hyp_len;
        self.ref_len += other.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += other.correct[n];
            self.total[n] += other.total[n];
        }
    }
}

/// Whitespace tokens of `text` as small integer ids (shared between both sides of a pair).
fn intern<'a>(ids: &mut HashMap<&'a str, u32>, text: &'a str) -> Vec<u32> {
    py_split(text)
        .map(|t| {
            let next = ids.len() as u32;
            *ids.entry(t).or_insert(next)
        })
        .collect()
}

/// Sum over distinct n-grams of min(count in a, count in b), by sorting both lists and merging.
pub(crate) fn clipped_matches<T: Ord>(a: &mut [T], b: &mut [T]) -> usize {
    a.sort_unstable();
    b.sort_unstable();
    let (mut i, mut j, mut matches) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                let (mut ca, mut cb) = (0, 0);
                while i + ca < a.len() && a[i + ca] == a[i] {
                    ca += 1;
                }
                while j + cb < b.len() && b[j + cb] == b[j] {
                    cb += 1;
                }
                matches += ca.min(cb);
                i += ca;
                j += cb;
            }
        }
    }
    matches
}

/// sacrebleu's `my_log`: log with log(0) floored to -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// sacrebleu's `BLEU.compute_bleu` with `exp` smoothing, divided by 100.
pub fn compute_bleu(stats: &BleuStats, max_order: usize, effective_order: bool) -> f64 {
    let max_order = max_order.clamp(1, MAX_ORDER);
    let (sys_len, ref_len) = (stats.hyp_len, stats.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    if stats.correct[..max_order].iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = max_order;
    for n in 1..=max_order {
        let total = stats.total[n - 1];
        if total == 0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        let correct = stats.correct[n - 1];
        if correct == 0 {
            smooth_mteval *= 2.0;
            precisions[n - 1] = 100.0 / (smooth_mteval * total as f64);
        } else {
            precisions[n - 1] = 100.0 * correct as f64 / total as f64;
        }
    }
    let log_sum = precisions[..eff_order]
        .iter()
        .fold(0.0f64, |acc, &p| acc + my_log(p));
    bp * (log_sum / eff_order as f64).exp() / 100.0
}

/// Corpus BLEU-n (`sacrebleu.metrics.BLEU(max_ngram_order=n).corpus_score`) from summed statistics.
pub fn corpus_bleu(stats: &BleuStats, order: usize) -> f64 {
    compute_bleu(stats, order, false)
}

/// `sacrebleu.sentence_bleu(candidate, [reference])`: order 4, exp smoothing, effective order.
pub fn sentence_bleu(stats: &BleuStats) -> f64 {
    compute_bleu(stats, MAX_ORDER, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_matches_13a_examples() {
        // Outputs of sacrebleu 2.6.0 Tokenizer13a on the same inputs.
        assert_eq!(tokenize_13a("No acute disease."), "No acute disease .");
        assert_eq!(
            tokenize_13a("a.. b,c 1.5 3-4 x-ray (left)"),
            "a . . b , c 1.5 3 - 4 x-ray ( left )"
        );
        assert_eq!(tokenize_13a("&amp;lt; it's"), "< it's");
        assert_eq!(tokenize_13a("é. ü,1"), "é . ü , 1");
        assert_eq!(tokenize_13a("   "), "");
    }

    #[test]
    fn identical_pair_scores_one_and_empty_scores_zero() {
        let s = BleuStats::from_pair(
            "no acute cardiopulmonary process .",
            "no acute cardiopulmonary process .",
        );
        for n in 1..=4 {
            assert!((corpus_bleu(&s, n) - 1.0).abs() < 1e-12);
        }
        let e = BleuStats::from_pair("", "no acute disease");
        assert_eq!(corpus_bleu(&e, 4), 0.0);
        assert_eq!(sentence_bleu(&e), 0.0);
    }
}
