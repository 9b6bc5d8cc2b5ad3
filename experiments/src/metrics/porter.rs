//! The Porter stemmer exactly as NLTK 3.10's `PorterStemmer()` (mode NLTK_EXTENSIONS), which both rouge-score and
//! NLTK's METEOR use.

/// Irregular forms NLTK maps directly (its `pool`).
const POOL: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// Entries kept per thread by [`stem_cached`] before the cache is cleared.
const CACHE_LIMIT: usize = 200_000;

thread_local! {
    static CACHE: std::cell::RefCell<std::collections::HashMap<String, String>> = Default::default();
}

/// [`stem`] with a per-thread memo (report vocabularies are small, so most words repeat).
pub fn stem_cached(word: &str) -> String {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(s) = cache.get(word) {
            return s.clone();
        }
        let s = stem(word);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_string(), s.clone());
        s
    })
}

/// Stems one word (lower-casing it first, as NLTK's `stem(word)` does).
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((_, base)) = POOL.iter().find(|(form, _)| *form == lower) {
        return (*base).to_string();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Vec<char> = lower.chars().collect();
    w = step1a(w);
    w = step1b(w);
    w = step1c(w);
    w = step2(w);
    w = step3(w);
    w = step4(w);
    w = step5a(w);
    w = step5b(w);
    w.into_iter().collect()
}

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

fn is_consonant(w: &[char], mut i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i] == 'y' {
        let mut negate = false;
        while i > 0 && w[i] == 'y' {
            negate = !negate;
            i -= 1;
        }
        return is_vowel(w[i]) == negate;
    }
    true
}

/// Number of "vc" transitions in the consonant/vowel pattern.
fn measure(stem: &[char]) -> usize {
    let mut count = 0;
    let mut prev_consonant: Option<bool> = None;
    for (i, &c) in stem.iter().enumerate() {
        let consonant = if is_vowel(c) {
            false
        } else if c == 'y' {
            if i == 0 {
                true
            } else {
                !prev_consonant.unwrap_or(true)
            }
        } else {
            true
        };
        if prev_consonant == Some(false) && consonant {
            count += 1;
        }
        prev_consonant = Some(consonant);
    }
    count
}

fn contains_vowel(stem: &[char]) -> bool {
    let mut prev_consonant = true;
    for (i, &c) in stem.iter().enumerate() {
        let consonant = if is_vowel(c) {
            false
        } else if c == 'y' {
            if i == 0 { true } else { !prev_consonant }
        } else {
            true
        };
        if !consonant {
            return true;
        }
        prev_consonant = consonant;
    }
    false
}

fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    n <= w.len() && w[w.len() - n..].iter().copied().eq(suffix.chars())
}

fn strip(w: &[char], suffix: &str) -> Vec<char> {
    w[..w.len() - suffix.chars().count()].to_vec()
}

fn append(mut stem: Vec<char>, replacement: &str) -> Vec<char> {
    stem.extend(replacement.chars());
    stem
}

type Condition<'a> = Option<&'a dyn Fn(&[char]) -> bool>;

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides (applied or not).
fn apply_rules(word: Vec<char>, rules: &[(&str, &str, Condition<'_>)]) -> Vec<char> {
    for (suffix, replacement, condition) in rules {
        if ends_with(&word, suffix) {
            let stem = strip(&word, suffix);
            return if condition.is_none_or(|c| c(&stem)) {
                append(stem, replacement)
            } else {
                word
            };
        }
    }
    word
}

fn positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn measure_gt_1(stem: &[char]) -> bool {
    measure(stem) > 1
}

fn step1a(word: Vec<char>) -> Vec<char> {
    if ends_with(&word, "ies") && word.len() == 4 {
        return append(strip(&word, "ies"), "ie");
    }
    apply_rules(
        word,
        &[
            ("sses", "ss", None),
            ("ies", "i", None),
            ("ss", "ss", None),
            ("s", "", None),
        ],
    )
}

fn step1b(word: Vec<char>) -> Vec<char> {
    if ends_with(&word, "ied") {
        let replacement = if word.len() == 4 { "ie" } else { "i" };
        return append(strip(&word, "ied"), replacement);
    }
    if ends_with(&word, "eed") {
        let stem = strip(&word, "eed");
        return if measure(&stem) > 0 {
            append(stem, "ee")
        } else {
            word
        };
    }
    let mut intermediate = None;
    for suffix in ["ed", "ing"] {
        if ends_with(&word, suffix) {
            let stem = strip(&word, suffix);
            if contains_vowel(&stem) {
                intermediate = Some(stem);
                break;
            }
        }
    }
    let Some(stem) = intermediate else {
        return word;
    };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends_with(&stem, suffix) {
            return append(strip(&stem, suffix), replacement);
        }
    }
    if ends_double_consonant(&stem) {
        let last = stem[stem.len() - 1];
        return if !matches!(last, 'l' | 's' | 'z') {
            let mut shorter = stem[..stem.len() - 2].to_vec();
            shorter.push(last);
            shorter
        } else {
            stem
        };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        append(stem, "e")
    } else {
        stem
    }
}

fn step1c(word: Vec<char>) -> Vec<char> {
    let condition = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(word, &[("y", "i", Some(&condition))])
}

fn step2(word: Vec<char>) -> Vec<char> {
    if ends_with(&word, "alli") && positive_measure(&strip(&word, "alli")) {
        return step2(append(strip(&word, "alli"), "al"));
    }
    let pm: Condition<'_> = Some(&positive_measure);
    let logi_base = word[..word.len().saturating_sub(3)].to_vec();
    let logi = move |_: &[char]| positive_measure(&logi_base);
    apply_rules(
        word,
        &[
            ("ational", "ate", pm),
            ("tional", "tion", pm),
            ("enci", "ence", pm),
            ("anci", "ance", pm),
            ("izer", "ize", pm),
            ("bli", "ble", pm),
            ("alli", "al", pm),
            ("entli", "ent", pm),
            ("eli", "e", pm),
            ("ousli", "ous", pm),
            ("ization", "ize", pm),
            ("ation", "ate", pm),
            ("ator", "ate", pm),
            ("alism", "al", pm),
            ("iveness", "ive", pm),
            ("fulness", "ful", pm),
            ("ousness", "ous", pm),
            ("aliti", "al", pm),
            ("iviti", "ive", pm),
            ("biliti", "ble", pm),
            ("fulli", "ful", pm),
            ("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(word: Vec<char>) -> Vec<char> {
    let pm: Condition<'_> = Some(&positive_measure);
    apply_rules(
        word,
        &[
            ("icate", "ic", pm),
            ("ative", "", pm),
            ("alize", "al", pm),
            ("iciti", "ic", pm),
            ("ical", "ic", pm),
            ("ful", "", pm),
            ("ness", "", pm),
        ],
    )
}

fn step4(word: Vec<char>) -> Vec<char> {
    let gt1: Condition<'_> = Some(&measure_gt_1);
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        word,
        &[
            ("al", "", gt1),
            ("ance", "", gt1),
            ("ence", "", gt1),
            ("er", "", gt1),
            ("ic", "", gt1),
            ("able", "", gt1),
            ("ible", "", gt1),
            ("ant", "", gt1),
            ("ement", "", gt1),
            ("ment", "", gt1),
            ("ent", "", gt1),
            ("ion", "", Some(&ion)),
            ("ou", "", gt1),
            ("ism", "", gt1),
            ("ate", "", gt1),
            ("iti", "", gt1),
            ("ous", "", gt1),
            ("ive", "", gt1),
            ("ize", "", gt1),
        ],
    )
}

fn step5a(word: Vec<char>) -> Vec<char> {
    if ends_with(&word, "e") {
        let stem = strip(&word, "e");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    word
}

fn step5b(word: Vec<char>) -> Vec<char> {
    let base = word[..word.len().saturating_sub(1)].to_vec();
    let condition = move |_: &[char]| measure(&base) > 1;
    apply_rules(word, &[("ll", "l", Some(&condition))])
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn known_nltk_stems() {
        // Values from nltk 3.10.4 PorterStemmer().stem(...).
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("effusions", "effus"),
            ("cardiomegaly", "cardiomegali"),
            ("pneumothorax", "pneumothorax"),
            ("dying", "die"),
            ("is", "is"),
            ("radiologically", "radiolog"),
            ("opacities", "opac"),
            ("controlling", "control"),
            ("fall", "fall"),
            ("analogi", "analog"),
        ];
        for (word, expected) in cases {
            assert_eq!(stem(word), expected, "stem({word})");
        }
    }
}
