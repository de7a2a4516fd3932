//! The SmolLM2 tokenizer, rebuilt from the GGUF's own metadata.
//!
//! No `tokenizer.json` ships with the model, and candle's `TokenizerFromGguf` treats
//! `pre=smollm` as plain GPT-2 (adds a prefix space, no digit splitting), which gives wrong ids
//! for the ChatML markers. So we assemble the pipeline by hand, as SmolLM2's original
//! `tokenizer.json` declares it: byte-level BPE over `tokenizer.ggml.tokens` /
//! `tokenizer.ggml.merges`, pre-tokenizer `Sequence[Digits(individual), ByteLevel(no prefix
//! space)]`, ByteLevel decoder, and every `token_type == 3` (control) entry as a special token.
//!
//! Decoding for streaming does not go through `tokenizers`: each token's bytes are precomputed
//! (inverting the GPT-2 byte-to-char table), so the streamer can join raw bytes and only emit
//! complete UTF-8 characters, even when a character is split across tokens.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::error::{GenerateError, Result};
use super::gguf::GgufFile;
use candle_core::quantized::gguf_file::Value;

/// GGUF `token_type` of control (special) tokens, as llama.cpp defines it.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined added tokens (matched whole, but not special).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Tokenizer plus the byte table the streaming decoder needs.
pub struct GgufTokenizer {
    inner: Tokenizer,
    /// Raw bytes each token stands for (special tokens: their literal text).
    token_bytes: Vec<Vec<u8>>,
    /// `true` for control tokens (skipped in output text).
    special: Vec<bool>,
    eos: u32,
    bos: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab", &self.token_bytes.len())
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

/// Inverse of GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes were shifted to U+0100.. in byte order.
fn byte_level_char_to_byte() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u8> = Vec::new();
    printable.extend(b'!'..=b'~');
    printable.extend(0xA1u8..=0xAC);
    printable.extend(0xAEu8..=0xFF);
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0u8..=255 {
        let c = if printable.contains(&b) {
            char::from(b)
        } else {
            let c = char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER);
            shifted += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

impl GgufTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub(crate) fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GenerateError::Tokenizer(format!(
                "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let tokens: Vec<&str> = f
            .get_array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(GenerateError::Tokenizer(
                    "tokenizer.ggml.tokens holds a non-string".into(),
                )),
            })
            .collect::<Result<_>>()?;
        let n = tokens.len();
        let id_of = |i: usize| {
            u32::try_from(i).map_err(|_| GenerateError::Tokenizer("vocabulary too large".into()))
        };
        let types: Vec<i64> = match f.metadata().get("tokenizer.ggml.token_type") {
            Some(_) => f
                .get_array("tokenizer.ggml.token_type")?
                .iter()
                .map(|v| {
                    value_as_i64(v)
                        .ok_or_else(|| GenerateError::Tokenizer("non-integer token_type".into()))
                })
                .collect::<Result<_>>()?,
            None => vec![1; n],
        };
        if types.len() != n {
            return Err(GenerateError::Tokenizer(format!(
                "{} token types for {n} tokens",
                types.len()
            )));
        }
        let merges: Vec<(String, String)> = f
            .get_array("tokenizer.ggml.merges")?
            .iter()
            .map(|v| match v {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        GenerateError::Tokenizer(format!("merge {s:?} has no separator"))
                    }),
                _ => Err(GenerateError::Tokenizer(
                    "tokenizer.ggml.merges holds a non-string".into(),
                )),
            })
            .collect::<Result<_>>()?;

        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert((*t).to_string(), id_of(i)?).is_some() {
                return Err(GenerateError::Tokenizer(format!("duplicate token {t:?}")));
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| GenerateError::Tokenizer(format!("BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let special: Vec<bool> = types.iter().map(|t| *t == TOKEN_TYPE_CONTROL).collect();
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, s)| **s)
            .map(|(t, _)| AddedToken::from((*t).to_string(), true))
            .collect();
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, _)| AddedToken::from((*t).to_string(), false))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| GenerateError::Tokenizer(format!("special tokens: {e}")))?;
        if !user.is_empty() {
            inner
                .add_tokens(user)
                .map_err(|e| GenerateError::Tokenizer(format!("added tokens: {e}")))?;
        }

        let table = byte_level_char_to_byte();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| {
                if *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED {
                    t.as_bytes().to_vec()
                } else {
                    // A char outside the byte-level alphabet should not occur; keep its UTF-8
                    // so nothing is silently dropped.
                    let mut out = Vec::with_capacity(t.len());
                    for c in t.chars() {
                        match table.get(&c) {
                            Some(b) => out.push(*b),
                            None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();

        let eos = f.get_usize("tokenizer.ggml.eos_token_id")?;
        if eos >= n {
            return Err(GenerateError::Tokenizer(format!(
                "eos id {eos} outside the vocabulary"
            )));
        }
        let bos = match f.get_usize_opt("tokenizer.ggml.bos_token_id")? {
            Some(b) if b < n => Some(id_of(b)?),
            _ => None,
        };
        let chat_template = f
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string);
        Ok(Self {
            inner,
            token_bytes,
            special,
            eos: id_of(eos)?,
            bos,
            chat_template,
        })
    }

    /// Token ids of `text`. Special-token strings in the text (`<|im_start|>`…) become their
    /// single ids, as in transformers; no BOS is added (SmolLM2 does not use one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| GenerateError::Tokenizer(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` through the `tokenizers` pipeline (used to cross-check the byte table).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| GenerateError::Tokenizer(format!("decode: {e}")))
    }

    /// Raw bytes of one token; empty for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (never shown in generated text).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// End-of-sequence id (`<|im_end|>` for SmolLM2-Instruct).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Beginning-of-sequence id declared by the file (not prepended by [`GgufTokenizer::encode`]).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The Jinja chat template stored in the file, if any (informational: rendering is done by
    /// [`super::chat`]).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}
