//! Requantising a GGUF to Q8_0, once, at install time.
//!
//! Why: SmolLM2 ships as Q4_1, which has no fast CPU kernel in candle 0.11 unless the
//! binary is built with AVX2/FMA target features; Q8_0 has fast kernels on every target
//! (measured 22 -> 66 tok/s on 2 cores, see shared/models.md). Hidden size 576 rules out
//! K-quants (256-element blocks).
//!
//! Each tensor is dequantised to F32 and quantised to Q8_0 when it is at least 2-D with a
//! row length that is a multiple of 32 (Q8_0's block). Others (norm weights, 1-D biases)
//! keep their float type, or become F32 if they were quantised in some other way. Metadata
//! is copied as is (tokenizer, chat template, hyper-parameters), except `general.file_type`
//! (now "mostly Q8_0") and `general.alignment` (candle's writer aligns to 32).

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::error::ModelError;

/// Q8_0's block length.
const Q8_0_BLOCK: usize = 32;
/// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q8_0`.
const FILE_TYPE_MOSTLY_Q8_0: u32 = 7;
/// The alignment candle's GGUF writer uses.
const WRITER_ALIGNMENT: u32 = 32;

/// What a requantisation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequantStats {
    /// Tensors now Q8_0 (requantised or already Q8_0).
    pub q8_0: usize,
    /// Tensors kept in their float type.
    pub kept: usize,
    /// Quantised tensors that could not be Q8_0 and were stored as F32.
    pub to_f32: usize,
}

/// Reads the GGUF at `src`, writes a Q8_0 copy to `dst`; `on_tensor` is called after each
/// tensor (for a progress bar) with the number of tensors in all.
pub fn requantize_gguf_q8_0(
    src: &Path,
    dst: &Path,
    mut on_tensor: impl FnMut(usize),
) -> Result<RequantStats, ModelError> {
    let _span = tracing::info_span!("requantize_q8_0", src = %src.display()).entered();
    let corrupt = |e: candle_core::Error| ModelError::CorruptFile { path: src.to_owned(), detail: e.to_string() };
    let requant = |e: candle_core::Error| ModelError::Requantize { path: src.to_owned(), detail: e.to_string() };
    let file = std::fs::File::open(src).map_err(ModelError::io("open", src))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(corrupt)?;

    // File order (by offset) keeps the output deterministic; the reader's maps are unordered.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|name| content.tensor_infos.get(*name).map(|info| info.offset));
    let mut stats = RequantStats::default();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(&mut reader, name, &Device::Cpu).map_err(corrupt)?;
        let converted = match target_dtype(tensor.dtype(), tensor.shape().dims()) {
            None => {
                stats.kept += 1;
                if tensor.dtype() == GgmlDType::Q8_0 {
                    stats.kept -= 1;
                    stats.q8_0 += 1;
                }
                tensor
            }
            Some(dtype) => {
                let dense = tensor.dequantize(&Device::Cpu).map_err(corrupt)?;
                if dtype == GgmlDType::Q8_0 {
                    stats.q8_0 += 1;
                } else {
                    stats.to_f32 += 1;
                }
                QTensor::quantize(&dense, dtype).map_err(requant)?
            }
        };
        tensors.push((name.as_str(), converted));
        on_tensor(content.tensor_infos.len());
    }

    let file_type = gguf_file::Value::U32(FILE_TYPE_MOSTLY_Q8_0);
    let alignment = gguf_file::Value::U32(WRITER_ALIGNMENT);
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(key, value)| match key.as_str() {
            "general.file_type" => (key.as_str(), &file_type),
            "general.alignment" => (key.as_str(), &alignment),
            _ => (key.as_str(), value),
        })
        .collect();
    metadata.sort_by_key(|(key, _)| *key);
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, t)| (*name, t)).collect();

    let out = std::fs::File::create(dst).map_err(ModelError::io("create", dst))?;
    let mut writer = BufWriter::new(out);
    gguf_file::write(&mut writer, &metadata, &tensor_refs).map_err(requant)?;
    writer.flush().map_err(ModelError::io("write", dst))?;
    let out = writer.into_inner().map_err(|e| ModelError::Io { action: "write", path: dst.to_owned(), source: e.into_error() })?;
    out.sync_all().map_err(ModelError::io("sync", dst))?;
    tracing::info!(q8_0 = stats.q8_0, kept = stats.kept, to_f32 = stats.to_f32, "requantised");
    Ok(stats)
}

/// The type a tensor of `dtype` and `dims` (candle order, row length last) becomes; `None`
/// when it stays as it is.
fn target_dtype(dtype: GgmlDType, dims: &[usize]) -> Option<GgmlDType> {
    let q8_ok = dims.len() >= 2 && dims.last().is_some_and(|row| row % Q8_0_BLOCK == 0);
    match dtype {
        GgmlDType::Q8_0 => None,
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 if !q8_ok => None,
        _ if q8_ok => Some(GgmlDType::Q8_0),
        _ => Some(GgmlDType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn which_tensors_become_q8_0() {
        assert_eq!(target_dtype(GgmlDType::Q4_1, &[1536, 576]), Some(GgmlDType::Q8_0));
        assert_eq!(target_dtype(GgmlDType::F32, &[576, 64]), Some(GgmlDType::Q8_0));
        assert_eq!(target_dtype(GgmlDType::F32, &[576]), None);
        assert_eq!(target_dtype(GgmlDType::F16, &[10, 33]), None);
        assert_eq!(target_dtype(GgmlDType::Q8_0, &[64, 64]), None);
        assert_eq!(target_dtype(GgmlDType::Q4_1, &[64]), Some(GgmlDType::F32));
    }

    #[test]
    fn roundtrip_small_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.gguf");
        let dst = dir.path().join("out.gguf");
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 64.0 * 32.0, &dev).unwrap().reshape((64, 32)).unwrap();
        let w = (w / 2048.0).unwrap();
        let q4 = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let norm = QTensor::quantize(&Tensor::ones(32, candle_core::DType::F32, &dev).unwrap(), GgmlDType::F32).unwrap();
        let name = gguf_file::Value::String("t".into());
        let ftype = gguf_file::Value::U32(3);
        {
            let mut f = std::fs::File::create(&src).unwrap();
            gguf_file::write(&mut f, &[("general.name", &name), ("general.file_type", &ftype)], &[("w", &q4), ("norm", &norm)])
                .unwrap();
        }
        let stats = requantize_gguf_q8_0(&src, &dst, |_| {}).unwrap();
        assert_eq!(stats, RequantStats { q8_0: 1, kept: 1, to_f32: 0 });
        let mut r = std::fs::File::open(&dst).unwrap();
        let content = gguf_file::Content::read(&mut r).unwrap();
        assert_eq!(content.metadata.get("general.file_type").and_then(|v| v.to_u32().ok()), Some(7));
        assert_eq!(content.metadata.get("general.name").and_then(|v| v.to_string().ok()).map(String::as_str), Some("t"));
        let wq = content.tensor(&mut r, "w", &dev).unwrap();
        assert_eq!(wq.dtype(), GgmlDType::Q8_0);
        let back = wq.dequantize(&dev).unwrap();
        let orig = q4.dequantize(&dev).unwrap();
        let diff: f32 = (back - orig).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(diff < 0.01, "max diff {diff}");
        assert_eq!(content.tensor(&mut r, "norm", &dev).unwrap().dtype(), GgmlDType::F32);
    }

    #[test]
    fn garbage_is_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bad.gguf");
        std::fs::write(&src, b"definitely not gguf").unwrap();
        let err = requantize_gguf_q8_0(&src, &dir.path().join("o"), |_| {}).unwrap_err();
        assert!(matches!(err, ModelError::CorruptFile { .. }), "{err}");
    }
}
