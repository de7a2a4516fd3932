//! The manifest written last into each model directory: which wheel the files came from
//! and the size and SHA-256 of each. Its presence means "installed"; its hashes are what
//! `verify` and a repeated install check against.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// The manifest's file name inside a model directory.
pub(crate) const MANIFEST_FILE: &str = "manifest.json";

/// Bumped when the layout of a model directory changes; an older manifest means reinstall.
pub(crate) const FORMAT: u32 = 1;

/// What an installed model directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version (bumped when the directory layout changes; older means reinstall).
    pub format: u32,
    /// Model name (the directory name).
    pub model: String,
    /// PyPI package.
    pub package: String,
    /// Package version.
    pub version: String,
    /// SHA-256 of the wheel the files came from.
    pub wheel_sha256: String,
    /// Every file the worker reads, relative to the model directory.
    pub files: Vec<FileEntry>,
}

/// One installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the model directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl Manifest {
    /// Reads the manifest at `path`; `Ok(None)` if there is none.
    pub(crate) fn read(path: &Path) -> Result<Option<Manifest>, ModelError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ModelError::BadManifest { path: path.to_owned(), detail: e.to_string() }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::BadManifest { path: path.to_owned(), detail: e.to_string() })
    }

    /// Writes the manifest to `path` (pretty JSON, trailing newline).
    pub(crate) fn write(&self, path: &Path) -> Result<(), ModelError> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| ModelError::BadManifest { path: path.to_owned(), detail: e.to_string() })?;
        text.push('\n');
        std::fs::write(path, text).map_err(ModelError::io("write", path))
    }

    /// The entry for `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}
