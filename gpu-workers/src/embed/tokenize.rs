//! The tokenizer as sentence-transformers drives it: pad to the longest text of the batch,
//! truncate at the model's sequence length.
//!
//! Why not `tokenizer.json` as shipped: it pads every input to 128 tokens (a batch of short
//! sentences would be ~90 % padding) and truncates at 128, where sentence-transformers
//! truncates at `max_seq_length` (256 for this model).

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

use super::error::EmbedError;

/// Token ids and attention masks of a batch, row-major `[batch, tokens]`.
pub(crate) struct Batch {
    pub(crate) ids: Vec<u32>,
    pub(crate) mask: Vec<u32>,
    pub(crate) rows: usize,
    pub(crate) tokens: usize,
}

/// Loads `tokenizer.json` with batch-longest padding and truncation at `max_len` tokens
/// (special tokens included).
pub(crate) fn load(path: &Path, max_len: usize) -> Result<Tokenizer, EmbedError> {
    let file_error = |detail: String| EmbedError::ModelFile { path: path.to_owned(), detail };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| file_error(e.to_string()))?;
    let pad = tokenizer.get_padding().cloned().unwrap_or_default();
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_to_multiple_of: None,
        ..pad
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            ..TruncationParams::default()
        }))
        .map_err(|e| file_error(e.to_string()))?;
    Ok(tokenizer)
}

/// Tokenizes `texts` into one padded batch.
pub(crate) fn encode(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Batch, EmbedError> {
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
    let tokens = encodings.first().map_or(0, |e| e.get_ids().len());
    let mut ids = Vec::with_capacity(encodings.len() * tokens);
    let mut mask = Vec::with_capacity(encodings.len() * tokens);
    for encoding in &encodings {
        if encoding.get_ids().len() != tokens {
            return Err(EmbedError::Tokenize(format!(
                "padding gave rows of {} and {tokens} tokens",
                encoding.get_ids().len()
            )));
        }
        ids.extend_from_slice(encoding.get_ids());
        mask.extend_from_slice(encoding.get_attention_mask());
    }
    Ok(Batch { ids, mask, rows: encodings.len(), tokens })
}
