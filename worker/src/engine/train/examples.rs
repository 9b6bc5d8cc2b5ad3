//! Turning (input, target) text rows into tokenised training examples with the stage's prompt template.

use crate::engine::error::{EngineError, Result};
use crate::engine::load::TextModel;
use crate::engine::model::{Architecture, TrainExample};

/// The placeholder a prompt template must contain.
pub const PLACEHOLDER: &str = "{input}";

/// Fills `template` with `input`.
pub fn fill_template(template: &str, input: &str) -> Result<String> {
    if !template.contains(PLACEHOLDER) {
        return Err(EngineError::Input(format!(
            "prompt template {template:?} has no {PLACEHOLDER} placeholder"
        )));
    }
    Ok(template.replace(PLACEHOLDER, input))
}

/// What to do with a row longer than `max_length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Stop with an error naming the row (the default: no silent truncation).
    #[default]
    Error,
    /// Cut the prompt's end so the row fits.
    TruncatePrompt,
}

/// Tokenises rows: prompt = template filled with the input (with the tokenizer's special tokens, e.g. BOS);
/// target = the target text (decoder-only models: after a space) followed by EOS.
pub fn build_examples(
    loaded: &dyn TextModel,
    rows: &[(String, String)],
    template: &str,
    max_length: usize,
    overlong: Overlong,
) -> Result<Vec<TrainExample>> {
    let arch = loaded.decoder().architecture();
    let eos = loaded.decoder().special_tokens().eos.first().copied();
    let mut out = Vec::with_capacity(rows.len());
    for (i, (input, target)) in rows.iter().enumerate() {
        let prompt_text = fill_template(template, input)?;
        let mut prompt = loaded
            .tokenizer()
            .encode(prompt_text.as_str(), true)
            .map_err(|e| EngineError::Input(format!("row {i}: cannot tokenise the prompt: {e}")))?
            .get_ids()
            .to_vec();
        let target_text = match arch {
            Architecture::DecoderOnly => format!(" {}", target.trim_start()),
            Architecture::EncoderDecoder => target.clone(),
        };
        let mut target_ids = loaded
            .tokenizer()
            .encode(target_text.as_str(), false)
            .map_err(|e| EngineError::Input(format!("row {i}: cannot tokenise the target: {e}")))?
            .get_ids()
            .to_vec();
        if let Some(e) = eos {
            target_ids.push(e);
        }
        let total = match arch {
            Architecture::DecoderOnly => prompt.len() + target_ids.len(),
            Architecture::EncoderDecoder => prompt.len().max(target_ids.len()),
        };
        if total > max_length {
            match overlong {
                Overlong::Error => {
                    return Err(EngineError::Input(format!(
                        "row {i}: {} prompt + {} target tokens exceed max_length {max_length} \
                         (raise training.max_length or allow truncation)",
                        prompt.len(),
                        target_ids.len()
                    )));
                }
                Overlong::TruncatePrompt => {
                    let room = match arch {
                        Architecture::DecoderOnly => max_length.saturating_sub(target_ids.len()),
                        Architecture::EncoderDecoder => max_length,
                    };
                    if room == 0 || target_ids.len() > max_length {
                        return Err(EngineError::Input(format!(
                            "row {i}: the target alone ({} tokens) does not fit max_length {max_length}",
                            target_ids.len()
                        )));
                    }
                    prompt.truncate(room);
                }
            }
        }
        out.push(TrainExample {
            prompt,
            target: target_ids,
        });
    }
    Ok(out)
}
