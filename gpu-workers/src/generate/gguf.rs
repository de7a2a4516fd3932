//! Reading a llama-architecture GGUF file: header, hyper-parameters and tensors.
//!
//! candle's reader already bounds-checks lengths and counts; this module turns its untyped
//! metadata map into the few typed values the model and tokenizer need, and reports any
//! absence or type mismatch as [`GenerateError::CorruptModel`] instead of panicking.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use super::error::{GenerateError, Result};

/// An opened GGUF file: parsed header plus a reader positioned anywhere (tensor reads seek).
pub(crate) struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens and parses the header; tensor data stays on disk until [`GgufFile::tensor`].
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| GenerateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| GenerateError::CorruptModel(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// All metadata entries.
    pub(crate) fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| GenerateError::CorruptModel(format!("missing metadata key {key}")))
    }

    /// A metadata value that must be an unsigned integer (any width GGUF writers use).
    pub(crate) fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n: Option<u64> = match v {
            Value::U8(x) => Some(u64::from(*x)),
            Value::U16(x) => Some(u64::from(*x)),
            Value::U32(x) => Some(u64::from(*x)),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            GenerateError::CorruptModel(format!("metadata {key} is not a count: {v:?}"))
        })
    }

    /// Like [`GgufFile::get_usize`] but absent keys give `None`.
    pub(crate) fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        if self.content.metadata.contains_key(key) {
            self.get_usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A metadata value that must be a float.
    pub(crate) fn get_f32(&self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(GenerateError::CorruptModel(format!(
                "metadata {key} is not a float: {v:?}"
            ))),
        }
    }

    /// A metadata value that must be a string.
    pub(crate) fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s.as_str()),
            v => Err(GenerateError::CorruptModel(format!(
                "metadata {key} is not a string: {:?}",
                v.value_type()
            ))),
        }
    }

    /// A metadata array (elements still untyped).
    pub(crate) fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a.as_slice()),
            v => Err(GenerateError::CorruptModel(format!(
                "metadata {key} is not an array: {:?}",
                v.value_type()
            ))),
        }
    }

    /// Whether a tensor of that name exists.
    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor onto `device`, checking its shape when `expect` is given
    /// (dimensions in candle's row-major order: `[out, in]` for a weight matrix).
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        expect: &[usize],
        device: &Device,
    ) -> Result<QTensor> {
        let t = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| {
                GenerateError::CorruptModel(format!("{}: tensor {name}: {e}", self.path.display()))
            })?;
        if t.shape().dims() != expect {
            return Err(GenerateError::CorruptModel(format!(
                "tensor {name} has shape {:?}, expected {expect:?}",
                t.shape().dims()
            )));
        }
        Ok(t)
    }
}

/// Largest context length accepted from a file: RoPE tables are built for the whole context
/// at load, so a corrupt header must not be able to ask for an absurd allocation.
const MAX_CONTEXT: usize = 1 << 20;

/// The llama hyper-parameters this worker needs, read from `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Per-head dimension (`hidden / n_head`).
    pub head_dim: usize,
    /// MLP inner size.
    pub ffn_hidden: usize,
    /// Vocabulary size (rows of the token embedding).
    pub vocab: usize,
    /// Context window the model was trained for.
    pub context_length: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
}

impl LlamaConfig {
    /// Reads and sanity-checks the hyper-parameters (the checks keep a corrupt header from
    /// turning into a division by zero or a giant allocation later).
    pub(crate) fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(GenerateError::CorruptModel(format!(
                "architecture {arch:?} is not supported (only llama)"
            )));
        }
        let n_layer = f.get_usize("llama.block_count")?;
        let hidden = f.get_usize("llama.embedding_length")?;
        let n_head = f.get_usize("llama.attention.head_count")?;
        let n_kv_head = f.get_usize("llama.attention.head_count_kv")?;
        let ffn_hidden = f.get_usize("llama.feed_forward_length")?;
        let context_length = f.get_usize("llama.context_length")?;
        let rms_eps = f64::from(f.get_f32("llama.attention.layer_norm_rms_epsilon")?);
        let rope_theta = match f.metadata().get("llama.rope.freq_base") {
            Some(_) => f.get_f32("llama.rope.freq_base")?,
            None => 10_000.0,
        };
        let bad = |what: &str| {
            GenerateError::CorruptModel(format!("inconsistent hyper-parameters: {what}"))
        };
        if n_layer == 0 || hidden == 0 || n_head == 0 || n_kv_head == 0 || ffn_hidden == 0 {
            return Err(bad("zero-sized dimension"));
        }
        if hidden % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(bad("heads do not divide the hidden size"));
        }
        if context_length > MAX_CONTEXT {
            return Err(bad(&format!(
                "context length {context_length} exceeds the supported {MAX_CONTEXT}"
            )));
        }
        let head_dim = hidden / n_head;
        if head_dim % 2 != 0 {
            return Err(bad("odd head dimension"));
        }
        if let Some(rope_dim) = f.get_usize_opt("llama.rope.dimension_count")? {
            if rope_dim != head_dim {
                return Err(bad("partial rotary embeddings are not supported"));
            }
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rope_theta.is_finite() && rope_theta > 0.0)
            || context_length == 0
        {
            return Err(bad("eps, rope base or context length not positive"));
        }
        let vocab = match f.content.tensor_infos.get("token_embd.weight") {
            Some(info) => match info.shape.dims() {
                [v, h] if *h == hidden => *v,
                d => return Err(bad(&format!("token_embd.weight shape {d:?}"))),
            },
            None => {
                return Err(GenerateError::CorruptModel(
                    "missing tensor token_embd.weight".into(),
                ))
            }
        };
        Ok(Self {
            n_layer,
            hidden,
            n_head,
            n_kv_head,
            head_dim,
            ffn_hidden,
            vocab,
            context_length,
            rms_eps,
            rope_theta,
        })
    }
}
