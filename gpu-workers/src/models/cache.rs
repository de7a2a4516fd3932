//! The model cache directory: where installed models live and how a worker finds them.
//!
//! Layout: `<root>/<model>/` holds the extracted (or requantised) files and `manifest.json`,
//! written last. Root: `--dir`, else `$VCOS_MODELS_DIR`, else `~/.cache/vcos/models`.
//!
//! [`ModelCache::locate`] is cheap (manifest present, every file there with its recorded
//! size) and is what loaders call; [`ModelCache::verify`] re-hashes every file (install and
//! `vcos models list --verify` use it).

use std::path::{Path, PathBuf};

use super::catalog::{minilm_files, smollm2_files, ModelId};
use super::error::ModelError;
use super::hash::sha256_file;
use super::manifest::{Manifest, FORMAT, MANIFEST_FILE};

/// Environment variable naming the cache root.
pub const MODELS_DIR_ENV: &str = "VCOS_MODELS_DIR";

/// Where installed models live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    root: PathBuf,
}

/// A located (or verified) model: its directory and manifest.
#[derive(Debug, Clone)]
pub struct InstalledModel {
    /// Which model.
    pub id: ModelId,
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl InstalledModel {
    /// Absolute path of a file of the model.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// Total size of the model's files in bytes.
    pub fn size(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum()
    }
}

/// The files the embedding worker loads.
#[derive(Debug, Clone)]
pub struct EmbeddingFiles {
    /// BERT `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `sentence_bert_config.json` (the truncation length).
    pub sentence_config: PathBuf,
}

/// The file the generation worker loads.
#[derive(Debug, Clone)]
pub struct GenerationFiles {
    /// The Q8_0 GGUF (weights, tokenizer, chat template).
    pub gguf: PathBuf,
}

/// A model's state in the cache, for `vcos models list`.
#[derive(Debug)]
pub enum ModelStatus {
    /// Installed (and verified, when asked).
    Installed(InstalledModel),
    /// No manifest.
    Missing,
    /// Present but damaged, or its manifest unreadable.
    Damaged(ModelError),
}

impl ModelCache {
    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelCache { root: root.into() }
    }

    /// The cache named by `flag` if given, else `$VCOS_MODELS_DIR`, else `~/.cache/vcos/models`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self, ModelError> {
        if let Some(dir) = flag {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = std::env::var_os(MODELS_DIR_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::new(dir));
        }
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or(ModelError::NoCacheDir)?;
        Ok(Self::new(Path::new(&home).join(".cache").join("vcos").join("models")))
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `id` (whether installed or not).
    pub fn model_dir(&self, id: ModelId) -> PathBuf {
        self.root.join(id.name())
    }

    /// The installed model `id`, checked cheaply: manifest of this build's format, each
    /// file present with its recorded size.
    pub fn locate(&self, id: ModelId) -> Result<InstalledModel, ModelError> {
        let _span = tracing::debug_span!("model_locate", model = %id).entered();
        let installed = self.manifest_of(id)?;
        for entry in &installed.manifest.files {
            let path = installed.path(&entry.path);
            let size = std::fs::metadata(&path).map(|m| m.len()).map_err(|e| self.damaged(id, format!("{}: {e}", entry.path)))?;
            if size != entry.size {
                return Err(self.damaged(id, format!("{}: {size} bytes, manifest says {}", entry.path, entry.size)));
            }
        }
        Ok(installed)
    }

    /// The installed model `id`, every file re-hashed against the manifest.
    pub fn verify(&self, id: ModelId) -> Result<InstalledModel, ModelError> {
        let _span = tracing::info_span!("model_verify", model = %id).entered();
        let installed = self.locate(id)?;
        for entry in &installed.manifest.files {
            let (sha256, _) = sha256_file(&installed.path(&entry.path), |_| {})?;
            if sha256 != entry.sha256 {
                return Err(self.damaged(id, format!("{}: SHA-256 {sha256}, manifest says {}", entry.path, entry.sha256)));
            }
        }
        Ok(installed)
    }

    /// The state of `id`, verified by hash when `verify`.
    pub fn status(&self, id: ModelId, verify: bool) -> ModelStatus {
        let result = if verify { self.verify(id) } else { self.locate(id) };
        match result {
            Ok(installed) => ModelStatus::Installed(installed),
            Err(ModelError::NotInstalled { .. }) => ModelStatus::Missing,
            Err(e) => ModelStatus::Damaged(e),
        }
    }

    /// The embedding model's files (located, not re-hashed).
    pub fn embedding(&self) -> Result<EmbeddingFiles, ModelError> {
        let m = self.locate(ModelId::MiniLmL6V2)?;
        Ok(EmbeddingFiles {
            config: m.path(minilm_files::CONFIG),
            weights: m.path(minilm_files::WEIGHTS),
            tokenizer: m.path(minilm_files::TOKENIZER),
            sentence_config: m.path(minilm_files::SENTENCE_CONFIG),
        })
    }

    /// The generation model's file (located, not re-hashed).
    pub fn generation(&self) -> Result<GenerationFiles, ModelError> {
        let m = self.locate(ModelId::SmolLm2_135mInstruct)?;
        Ok(GenerationFiles { gguf: m.path(smollm2_files::GGUF_Q8_0) })
    }

    fn manifest_of(&self, id: ModelId) -> Result<InstalledModel, ModelError> {
        let dir = self.model_dir(id);
        let path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(&path)?
            .ok_or_else(|| ModelError::NotInstalled { model: id.name().to_owned(), dir: dir.clone() })?;
        let spec = id.spec();
        if manifest.format != FORMAT
            || manifest.package != spec.package
            || manifest.version != spec.version
            || manifest.wheel_sha256 != spec.wheel_sha256
        {
            return Err(self.damaged(
                id,
                format!(
                    "installed from {}=={} (format {}), this build wants {}=={} (format {FORMAT})",
                    manifest.package, manifest.version, manifest.format, spec.package, spec.version
                ),
            ));
        }
        Ok(InstalledModel { id, dir, manifest })
    }

    fn damaged(&self, id: ModelId, detail: String) -> ModelError {
        ModelError::Damaged { model: id.name().to_owned(), dir: self.model_dir(id), detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::manifest::FileEntry;

    fn fake_install(cache: &ModelCache, id: ModelId, body: &[u8]) {
        let dir = cache.model_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f.bin"), body).unwrap();
        let (sha256, size) = sha256_file(&dir.join("f.bin"), |_| {}).unwrap();
        let spec = id.spec();
        Manifest {
            format: FORMAT,
            model: spec.name.into(),
            package: spec.package.into(),
            version: spec.version.into(),
            wheel_sha256: spec.wheel_sha256.into(),
            files: vec![FileEntry { path: "f.bin".into(), size, sha256 }],
        }
        .write(&dir.join(MANIFEST_FILE))
        .unwrap();
    }

    #[test]
    fn missing_model_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(dir.path());
        let err = cache.embedding().unwrap_err();
        assert!(matches!(err, ModelError::NotInstalled { .. }));
        assert!(err.to_string().contains("vcos models install"), "{err}");
        assert!(matches!(cache.status(ModelId::MiniLmL6V2, false), ModelStatus::Missing));
    }

    #[test]
    fn locate_checks_size_and_verify_checks_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(dir.path());
        fake_install(&cache, ModelId::MiniLmL6V2, b"hello");
        cache.verify(ModelId::MiniLmL6V2).unwrap();
        let file = cache.model_dir(ModelId::MiniLmL6V2).join("f.bin");
        std::fs::write(&file, b"jello").unwrap();
        cache.locate(ModelId::MiniLmL6V2).unwrap();
        let err = cache.verify(ModelId::MiniLmL6V2).unwrap_err();
        assert!(matches!(err, ModelError::Damaged { .. }), "{err}");
        std::fs::write(&file, b"hi").unwrap();
        assert!(matches!(cache.locate(ModelId::MiniLmL6V2), Err(ModelError::Damaged { .. })));
    }

    #[test]
    fn unreadable_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(dir.path());
        let mdir = cache.model_dir(ModelId::SmolLm2_135mInstruct);
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::write(mdir.join(MANIFEST_FILE), b"{not json").unwrap();
        assert!(matches!(cache.generation(), Err(ModelError::BadManifest { .. })));
    }

    #[test]
    fn flag_wins() {
        let cache = ModelCache::resolve(Some(PathBuf::from("/x/y"))).unwrap();
        assert_eq!(cache.root(), Path::new("/x/y"));
    }
}
