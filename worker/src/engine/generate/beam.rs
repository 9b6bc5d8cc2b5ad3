//! Beam search as transformers 4.57 implements it (`_beam_search`): top `2 * num_beams` continuations per step
//! (or sampled without replacement when `do_sample`), finished hypotheses scored with the length penalty,
//! the early-stopping heuristic, and the cache reordered to the surviving beams.

use super::{GenerateConfig, draw, process_row, processors};
use crate::engine::error::Result;
use crate::engine::model::Decoder;
use crate::engine::rng::{Purpose, Stream};

const NEG: f32 = -1.0e9;

/// One candidate continuation.
#[derive(Clone)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

/// Indices of the `k` largest values, largest first (lower index first on ties).
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k < values.len() {
        idx.select_nth_unstable_by(k, |&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx
}

/// Beam search over `prompts`; `context` holds the tokens each prompt's decoder saw before generating.
pub fn beam_search(
    model: &dyn Decoder,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
    context: &[Vec<u32>],
) -> Result<Vec<Vec<u32>>> {
    let n = cfg.num_beams;
    let batch = prompts.len();
    let eos = cfg.eos_for(model);
    let vocab = model.vocab_size();
    let keep = (2usize).max(1 + eos.len()) * n;
    let min_keep = eos.len() + 1;
    let lp = cfg.length_penalty as f32;
    let max_new = cfg.max_new_tokens;

    let expanded: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), n))
        .collect();
    let (mut state, mut logits) = model.start(&expanded)?;

    let mut running: Vec<Vec<Vec<u32>>> = vec![vec![Vec::new(); n]; batch];
    let mut running_scores: Vec<Vec<f32>> = (0..batch)
        .map(|_| (0..n).map(|i| if i == 0 { 0.0 } else { NEG }).collect())
        .collect();
    let mut finished: Vec<Vec<Vec<u32>>> = vec![vec![Vec::new(); n]; batch];
    let mut finished_scores: Vec<Vec<f32>> = vec![vec![NEG; n]; batch];
    let mut is_finished: Vec<Vec<bool>> = vec![vec![false; n]; batch];
    let mut unsatisfied = vec![true; batch];
    let mut generated = 0usize;

    loop {
        let table = logits.to_vec2::<f32>()?;
        let mut all_hit = true;
        let mut reorder = Vec::with_capacity(batch * n);
        let mut next_tokens = Vec::with_capacity(batch * n);
        for b in 0..batch {
            // Accumulated log-probabilities of every (beam, token).
            let mut acc = Vec::with_capacity(n * vocab);
            for i in 0..n {
                let row = &table[b * n + i][..vocab];
                let mut scores = processors::log_softmax(row);
                let seen: Vec<u32> = context[b].iter().chain(&running[b][i]).copied().collect();
                process_row(&mut scores, &seen, cfg, min_keep, generated, &eos);
                let base = running_scores[b][i];
                acc.extend(scores.iter().map(|s| s + base));
            }
            let picked: Vec<usize> = if cfg.do_sample {
                let mut weights = processors::softmax(&acc);
                let mut stream =
                    Stream::new(cfg.seed, Purpose::Sampling, &[b as u64, generated as u64]);
                let mut out = Vec::with_capacity(keep);
                for _ in 0..keep {
                    let j = draw(&weights, &mut stream);
                    weights[j] = 0.0;
                    out.push(j);
                }
                out
            } else {
                top_indices(&acc, keep)
            };
            let cands: Vec<Candidate> = picked
                .iter()
                .map(|&j| Candidate {
                    score: acc[j],
                    beam: j / vocab,
                    token: (j % vocab) as u32,
                })
                .collect();
            let hits: Vec<bool> = cands
                .iter()
                .map(|c| eos.contains(&c.token) || generated + 1 >= max_new)
                .collect();
            all_hit &= hits.iter().all(|&h| h);

            // Running beams for the next step: the best non-finished candidates.
            let running_vals: Vec<f32> = cands
                .iter()
                .zip(&hits)
                .map(|(c, &h)| c.score + if h { NEG } else { 0.0 })
                .collect();
            let next_idx = top_indices(&running_vals, n);

            // Finished hypotheses: merge the old ones with candidates among the top n that just finished.
            let all_done = is_finished[b].iter().all(|&f| f) && cfg.early_stopping;
            let denom = ((generated + 1) as f32).powf(lp);
            let mut merged_scores = finished_scores[b].clone();
            let mut merged_seqs = finished[b].clone();
            let mut merged_flags = is_finished[b].clone();
            for (k, c) in cands.iter().enumerate() {
                let just_finished = hits[k] && k < n;
                let mut s = c.score / denom;
                if all_done {
                    s += NEG;
                }
                if !unsatisfied[b] {
                    s += NEG;
                }
                if !just_finished {
                    s += NEG;
                }
                merged_scores.push(s);
                let mut seq = running[b][c.beam].clone();
                seq.push(c.token);
                merged_seqs.push(seq);
                merged_flags.push(just_finished);
            }
            let best = top_indices(&merged_scores, n);
            finished[b] = best.iter().map(|&j| merged_seqs[j].clone()).collect();
            finished_scores[b] = best.iter().map(|&j| merged_scores[j]).collect();
            is_finished[b] = best.iter().map(|&j| merged_flags[j]).collect();

            let mut new_running = Vec::with_capacity(n);
            let mut new_scores = Vec::with_capacity(n);
            for &j in &next_idx {
                let c = &cands[j];
                let mut seq = running[b][c.beam].clone();
                seq.push(c.token);
                new_running.push(seq);
                new_scores.push(running_vals[j]);
                reorder.push(b * n + c.beam);
                next_tokens.push(c.token);
            }
            running[b] = new_running;
            running_scores[b] = new_scores;
        }
        generated += 1;
        // Early-stopping heuristic (early_stopping = False uses the current length).
        let mut any_unsatisfied = false;
        for b in 0..batch {
            let best_possible = running_scores[b][0] / (generated as f32).powf(lp);
            let min_finished = finished_scores[b]
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            let improvable = is_finished[b]
                .iter()
                .any(|&f| best_possible > if f { min_finished } else { NEG });
            unsatisfied[b] &= improvable;
            any_unsatisfied |= unsatisfied[b];
        }
        let open_beam = !(is_finished.iter().all(|f| f.iter().all(|&x| x)) && cfg.early_stopping);
        if !(any_unsatisfied && open_beam && !all_hit) || generated >= max_new {
            break;
        }
        state.select(&reorder)?;
        logits = model.step(state.as_mut(), &next_tokens)?;
    }
    Ok(finished
        .into_iter()
        .map(|mut beams| {
            let mut best = beams.swap_remove(0);
            while best.last().is_some_and(|t| eos.contains(t)) {
                best.pop();
            }
            best
        })
        .collect())
}
