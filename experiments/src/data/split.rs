//! Seeded train/val/test splits and k-fold cross-validation, stratified or group-aware.
//!
//! Determinism: every random draw comes from `ChaCha8Rng::seed_from_u64(seed)` as raw `next_u64` values in a
//! fixed order (items in input order, groups in sorted name order), and ties are broken by index, so the same
//! seed gives the same assignment on any machine and any `rand` version that keeps ChaCha8's stream.
//!
//! Stratification key (no group column): the length bucket of the target in words,
//! `0-4 | 5-9 | 10-19 | 20-39 | 40+` ([`length_stratum`]). Rows are ordered by (stratum, random key) and parts
//! are assigned at evenly spaced positions of that order, so each stratum gets its share to within one row and
//! the part sizes are exact: `test = round(n * test)`, `val = round(n * val)`, the rest train.
//!
//! k-fold (no group column): in the same order, row `i` goes to test fold `i mod k`, so test folds differ in
//! size by at most one and every row is tested exactly once. Validation for fold `f` takes
//! `round(n * val_fraction)` of the other rows at evenly spaced positions of the stratified order (rotated by
//! fold so folds differ); the remainder trains.
//!
//! Group-aware (a group column, e.g. patient id): groups are the unit and are never split across parts of
//! one split or fold. Groups are taken largest first (ties by a random key) and each goes to the part (holdout)
//! or fold (k-fold) furthest below its target row count. Validation for fold `f` adds groups outside fold `f` in
//! random order while that brings it closer to `round(n * val_fraction)`, always leaving one group to train.
//! Sizes are then as close as whole groups allow, and stratification does not apply.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde::Serialize;

/// One row to split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitItem {
    /// What the split reports for this row (the 0-based data-row index of the file).
    pub index: usize,
    pub stratum: u32,
    pub group: Option<String>,
}

/// One train/val/test assignment; each list holds item indices in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// One fold of k-fold cross-validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fold {
    pub fold: usize,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("{what} needs at least {needed} {unit}, the data has {got}")]
    TooFew {
        what: String,
        needed: usize,
        got: usize,
        unit: &'static str,
    },
    #[error(
        "the split leaves the {part} part empty ({rows} rows; accepted: more rows or larger fractions)"
    )]
    EmptyPart { part: &'static str, rows: usize },
    #[error(
        "some rows have a group and some do not; a group-aware split needs a group for every row"
    )]
    MixedGroups,
}

/// The stratum of a target text: its length bucket in words (0-4, 5-9, 10-19, 20-39, 40+).
pub fn length_stratum(target: &str) -> u32 {
    match target.split_whitespace().count() {
        0..=4 => 0,
        5..=9 => 1,
        10..=19 => 2,
        20..=39 => 3,
        _ => 4,
    }
}

/// Items for a loaded dataset: row index, target length stratum, group.
pub fn items(examples: &[super::Example]) -> Vec<SplitItem> {
    examples
        .iter()
        .map(|e| SplitItem {
            index: e.row,
            stratum: length_stratum(&e.target),
            group: e.group.clone(),
        })
        .collect()
}

fn rounded(n: usize, fraction: f64) -> usize {
    ((n as f64) * fraction).round().min(n as f64) as usize
}

/// Whether position `i` of `n` is one of `hits` evenly spaced hits.
fn spread_hit(i: usize, hits: usize, n: usize) -> bool {
    ((i + 1) * hits) / n > (i * hits) / n
}

fn grouped(items: &[SplitItem]) -> Result<Option<BTreeMap<&str, Vec<usize>>>, SplitError> {
    let with_group = items.iter().filter(|i| i.group.is_some()).count();
    if with_group == 0 {
        return Ok(None);
    }
    if with_group != items.len() {
        return Err(SplitError::MixedGroups);
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for item in items {
        groups
            .entry(item.group.as_deref().unwrap_or_default())
            .or_default()
            .push(item.index);
    }
    Ok(Some(groups))
}

/// Groups as (members, random key), largest first, ties by key then name.
fn ordered_groups<'a>(
    groups: &BTreeMap<&'a str, Vec<usize>>,
    rng: &mut ChaCha8Rng,
) -> Vec<(&'a str, Vec<usize>, u64)> {
    let mut list: Vec<_> = groups
        .iter()
        .map(|(name, members)| (*name, members.clone(), rng.next_u64()))
        .collect();
    list.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(a.2.cmp(&b.2))
            .then(a.0.cmp(b.0))
    });
    list
}

/// Item positions ordered by (stratum, random key, index).
fn stratified_order(items: &[SplitItem], rng: &mut ChaCha8Rng) -> Vec<usize> {
    let keys: Vec<u64> = items.iter().map(|_| rng.next_u64()).collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&p| (items[p].stratum, keys[p], items[p].index));
    order
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

/// A seeded train/val/test split with the given fractions (which sum to 1).
pub fn holdout(
    items: &[SplitItem],
    fractions: (f64, f64, f64),
    seed: u64,
) -> Result<Split, SplitError> {
    let (train_f, val_f, test_f) = fractions;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = items.len();
    let split = if let Some(groups) = grouped(items)? {
        if groups.len() < 3 {
            return Err(SplitError::TooFew {
                what: "a group-aware split".into(),
                needed: 3,
                got: groups.len(),
                unit: "groups",
            });
        }
        let targets = [n as f64 * train_f, n as f64 * val_f, n as f64 * test_f];
        let mut parts: [Vec<usize>; 3] = Default::default();
        for (_, members, _) in ordered_groups(&groups, &mut rng) {
            let part = (0..3)
                .max_by(|&a, &b| {
                    let da = targets[a] - parts[a].len() as f64;
                    let db = targets[b] - parts[b].len() as f64;
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .expect("three parts");
            parts[part].extend(members);
        }
        let [train, val, test] = parts;
        Split {
            train: sorted(train),
            val: sorted(val),
            test: sorted(test),
        }
    } else {
        let order = stratified_order(items, &mut rng);
        let n_test = rounded(n, test_f);
        let n_val = rounded(n, val_f).min(n - n_test);
        let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
        let mut rest = 0;
        for (i, &p) in order.iter().enumerate() {
            if spread_hit(i, n_test, n) {
                test.push(items[p].index);
            } else {
                if spread_hit(rest, n_val, n - n_test) {
                    val.push(items[p].index);
                } else {
                    train.push(items[p].index);
                }
                rest += 1;
            }
        }
        Split {
            train: sorted(train),
            val: sorted(val),
            test: sorted(test),
        }
    };
    for (part, list, fraction) in [
        ("train", &split.train, train_f),
        ("val", &split.val, val_f),
        ("test", &split.test, test_f),
    ] {
        if list.is_empty() && fraction > 0.0 {
            return Err(SplitError::EmptyPart { part, rows: n });
        }
    }
    Ok(split)
}

/// Seeded k-fold cross-validation: every item in exactly one test fold, `val_fraction` of all items held out
/// for validation from the other folds, the rest trains.
pub fn kfold(
    items: &[SplitItem],
    folds: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<Vec<Fold>, SplitError> {
    if folds < 2 {
        return Err(SplitError::TooFew {
            what: "k-fold".into(),
            needed: 2,
            got: folds,
            unit: "folds",
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = items.len();
    let n_val = rounded(n, val_fraction);
    let mut out = Vec::with_capacity(folds);
    if let Some(groups) = grouped(items)? {
        if groups.len() < folds + 1 {
            return Err(SplitError::TooFew {
                what: format!("{folds}-fold cross-validation by group"),
                needed: folds + 1,
                got: groups.len(),
                unit: "groups",
            });
        }
        let ordered = ordered_groups(&groups, &mut rng);
        let mut fold_of = vec![0usize; ordered.len()];
        let mut sizes = vec![0usize; folds];
        for (g, (_, members, _)) in ordered.iter().enumerate() {
            let fold = (0..folds)
                .min_by_key(|&f| (sizes[f], f))
                .expect("folds >= 2");
            fold_of[g] = fold;
            sizes[fold] += members.len();
        }
        for fold in 0..folds {
            let mut candidates: Vec<(u64, usize)> = (0..ordered.len())
                .filter(|&g| fold_of[g] != fold)
                .map(|g| (rng.next_u64(), g))
                .collect();
            candidates.sort_unstable();
            let mut in_val = vec![false; ordered.len()];
            let mut val_rows = 0usize;
            let mut left_to_train = candidates.len();
            for &(_, g) in &candidates {
                let size = ordered[g].1.len();
                let closer = (val_rows + size).abs_diff(n_val) < val_rows.abs_diff(n_val);
                if closer && left_to_train > 1 {
                    in_val[g] = true;
                    val_rows += size;
                    left_to_train -= 1;
                }
            }
            if val_rows == 0 && n_val > 0 && left_to_train > 1 {
                let smallest = candidates
                    .iter()
                    .map(|&(_, g)| g)
                    .min_by_key(|&g| (ordered[g].1.len(), g));
                if let Some(g) = smallest {
                    in_val[g] = true;
                }
            }
            let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
            for (g, (_, members, _)) in ordered.iter().enumerate() {
                let part = if fold_of[g] == fold {
                    &mut test
                } else if in_val[g] {
                    &mut val
                } else {
                    &mut train
                };
                part.extend(members.iter().copied());
            }
            out.push(Fold {
                fold,
                train: sorted(train),
                val: sorted(val),
                test: sorted(test),
            });
        }
    } else {
        if n < folds + 1 {
            return Err(SplitError::TooFew {
                what: format!("{folds}-fold cross-validation"),
                needed: folds + 1,
                got: n,
                unit: "rows",
            });
        }
        let order = stratified_order(items, &mut rng);
        for fold in 0..folds {
            let others: Vec<usize> = order
                .iter()
                .enumerate()
                .filter(|(i, _)| i % folds != fold)
                .map(|(_, &p)| p)
                .collect();
            let m = others.len();
            let want_val = n_val.min(m.saturating_sub(1));
            let offset = fold * m / folds;
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (j, &p) in others.iter().enumerate() {
                if spread_hit((j + offset) % m, want_val, m) {
                    val.push(items[p].index);
                } else {
                    train.push(items[p].index);
                }
            }
            let test = order
                .iter()
                .enumerate()
                .filter(|(i, _)| i % folds == fold)
                .map(|(_, &p)| items[p].index)
                .collect();
            out.push(Fold {
                fold,
                train: sorted(train),
                val: sorted(val),
                test: sorted(test),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn plain(n: usize, strata: u32) -> Vec<SplitItem> {
        (0..n)
            .map(|i| SplitItem {
                index: i * 3 + 1,
                stratum: (i as u32 * 7) % strata.max(1),
                group: None,
            })
            .collect()
    }

    fn with_groups(sizes: &[usize]) -> Vec<SplitItem> {
        let mut items = Vec::new();
        for (g, &size) in sizes.iter().enumerate() {
            for _ in 0..size {
                let index = items.len();
                items.push(SplitItem {
                    index,
                    stratum: 0,
                    group: Some(format!("patient-{g}")),
                });
            }
        }
        items
    }

    fn all_indices(items: &[SplitItem]) -> Vec<usize> {
        sorted(items.iter().map(|i| i.index).collect())
    }

    fn group_of(items: &[SplitItem]) -> BTreeMap<usize, String> {
        items
            .iter()
            .map(|i| (i.index, i.group.clone().unwrap_or_default()))
            .collect()
    }

    fn assert_no_straddle(items: &[SplitItem], parts: [&Vec<usize>; 3]) {
        let groups = group_of(items);
        let sets: Vec<BTreeSet<&String>> = parts
            .iter()
            .map(|p| p.iter().map(|i| &groups[i]).collect())
            .collect();
        for a in 0..3 {
            for b in (a + 1)..3 {
                assert!(
                    sets[a].is_disjoint(&sets[b]),
                    "a group straddles parts {a} and {b}"
                );
            }
        }
    }

    #[test]
    fn holdout_sizes_are_exact_and_stable_for_a_seed() {
        let items = plain(100, 5);
        let split = holdout(&items, (0.8, 0.1, 0.1), 7).unwrap();
        assert_eq!(
            (split.train.len(), split.val.len(), split.test.len()),
            (80, 10, 10)
        );
        assert_eq!(split, holdout(&items, (0.8, 0.1, 0.1), 7).unwrap());
        assert_ne!(split, holdout(&items, (0.8, 0.1, 0.1), 8).unwrap());
    }

    #[test]
    fn holdout_is_stratified_by_length_bucket() {
        // 50 short and 50 long targets: each part gets half of each, within one row.
        let items: Vec<SplitItem> = (0..100)
            .map(|i| SplitItem {
                index: i,
                stratum: (i % 2) as u32,
                group: None,
            })
            .collect();
        let split = holdout(&items, (0.8, 0.1, 0.1), 3).unwrap();
        let odd = split.test.iter().filter(|i| *i % 2 == 1).count();
        assert!((4..=6).contains(&odd), "test has {odd} of stratum 1");
    }

    #[test]
    fn length_strata_bucket_word_counts() {
        assert_eq!(length_stratum("no acute disease"), 0);
        assert_eq!(length_stratum("one two three four five"), 1);
        assert_eq!(length_stratum(&"w ".repeat(45)), 4);
    }

    #[test]
    fn pinned_assignment_for_seed_42() {
        // Guards cross-machine determinism: a change here changes every experiment's splits.
        let items = plain(10, 2);
        let split = holdout(&items, (0.6, 0.2, 0.2), 42).unwrap();
        let folds = kfold(&items, 3, 0.2, 42).unwrap();
        let text = format!(
            "{split:?} {:?}",
            folds.iter().map(|f| &f.test).collect::<Vec<_>>()
        );
        assert_eq!(text, PINNED_SEED_42);
    }

    const PINNED_SEED_42: &str = "Split { train: [7, 10, 13, 16, 19, 28], val: [1, 22], test: [4, 25] } [[1, 4, 13, 28], [10, 19, 25], [7, 16, 22]]";

    #[test]
    fn too_few_groups_or_rows_is_an_error() {
        let error = kfold(&with_groups(&[3, 3, 3]), 5, 0.1, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "5-fold cross-validation by group needs at least 6 groups, the data has 3"
        );
        assert!(matches!(
            kfold(&plain(4, 1), 5, 0.1, 1),
            Err(SplitError::TooFew { .. })
        ));
        let mut mixed = with_groups(&[2, 2, 2]);
        mixed[0].group = None;
        assert_eq!(
            holdout(&mixed, (0.8, 0.1, 0.1), 1),
            Err(SplitError::MixedGroups)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn holdout_partitions_with_exact_sizes(n in 20usize..400, strata in 1u32..6, seed in any::<u64>()) {
            let items = plain(n, strata);
            let split = holdout(&items, (0.8, 0.1, 0.1), seed).unwrap();
            let mut all = [split.train.clone(), split.val.clone(), split.test.clone()].concat();
            all.sort_unstable();
            prop_assert_eq!(all, all_indices(&items));
            prop_assert_eq!(split.test.len(), rounded(n, 0.1));
            prop_assert_eq!(split.val.len(), rounded(n, 0.1));
        }

        #[test]
        fn kfold_tests_every_item_exactly_once(n in 6usize..300, folds in 2usize..8, seed in any::<u64>()) {
            prop_assume!(n > folds);
            let items = plain(n, 4);
            let result = kfold(&items, folds, 0.1, seed).unwrap();
            prop_assert_eq!(result.len(), folds);
            let mut tested: Vec<usize> = result.iter().flat_map(|f| f.test.clone()).collect();
            tested.sort_unstable();
            prop_assert_eq!(&tested, &all_indices(&items));
            let sizes: Vec<usize> = result.iter().map(|f| f.test.len()).collect();
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            for fold in &result {
                let mut all = [fold.train.clone(), fold.val.clone(), fold.test.clone()].concat();
                all.sort_unstable();
                prop_assert_eq!(&all, &all_indices(&items));
                prop_assert_eq!(fold.val.len(), rounded(n, 0.1).min(n - fold.test.len() - 1));
            }
        }

        #[test]
        fn group_splits_never_straddle(sizes in proptest::collection::vec(1usize..12, 8..30), folds in 2usize..6, seed in any::<u64>()) {
            let items = with_groups(&sizes);
            let split = holdout(&items, (0.8, 0.1, 0.1), seed);
            if let Ok(split) = &split {
                assert_no_straddle(&items, [&split.train, &split.val, &split.test]);
                let mut all = [split.train.clone(), split.val.clone(), split.test.clone()].concat();
                all.sort_unstable();
                prop_assert_eq!(all, all_indices(&items));
            }
            let result = kfold(&items, folds, 0.1, seed).unwrap();
            let mut tested: Vec<usize> = result.iter().flat_map(|f| f.test.clone()).collect();
            tested.sort_unstable();
            prop_assert_eq!(&tested, &all_indices(&items));
            for fold in &result {
                assert_no_straddle(&items, [&fold.train, &fold.val, &fold.test]);
                prop_assert!(!fold.train.is_empty());
                prop_assert!(!fold.test.is_empty());
                let mut all = [fold.train.clone(), fold.val.clone(), fold.test.clone()].concat();
                all.sort_unstable();
                prop_assert_eq!(&all, &all_indices(&items));
            }
            prop_assert_eq!(&result, &kfold(&items, folds, 0.1, seed).unwrap());
        }
    }
}
