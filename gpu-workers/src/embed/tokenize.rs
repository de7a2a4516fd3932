//! The tokenizer as the embedder drives it: no padding (texts are packed, see
//! `packed_bert.rs`), truncation at the model's sequence length as sentence-transformers does.
//!
//! Why not `tokenizer.json` as shipped: it pads every input to 128 tokens (a batch of short
//! sentences would be ~90 % padding) and truncates at 128, where sentence-transformers
//! truncates at `max_seq_length` (256 for this model).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use super::error::EmbedError;
use super::packed_bert::Packing;

/// Token ids of a batch's texts, one after another, and each text's length.
pub(crate) struct Packed {
    pub(crate) ids: Vec<u32>,
    pub(crate) packing: Packing,
}

/// Loads `tokenizer.json` without padding and truncating at `max_len`.
pub(crate) fn load(path: &Path, max_len: usize) -> Result<Tokenizer, EmbedError> {
    let file_error = |detail: String| EmbedError::ModelFile { path: path.to_owned(), detail };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| file_error(e.to_string()))?;
    tokenizer.with_padding(None);
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

/// Tokenizes `texts` (with the special tokens), packed.
pub(crate) fn encode(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Packed, EmbedError> {
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
    let mut ids = Vec::with_capacity(encodings.iter().map(|e| e.get_ids().len()).sum());
    let mut lengths = Vec::with_capacity(encodings.len());
    for encoding in &encodings {
        ids.extend_from_slice(encoding.get_ids());
        lengths.push(encoding.get_ids().len());
    }
    Ok(Packed { ids, packing: Packing { lengths } })
}
