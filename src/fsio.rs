//! Atomic file writes, shared by the weight files (`weights`) and the images (`data`): a
//! temporary file beside the target, synced to disk, then renamed over it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

/// Writes `path` atomically: `write` fills a temporary file in the same directory (its name
/// unique to the process and the call, so concurrent writers of one path do not share it),
/// which is synced and renamed over `path`. If anything fails, `path` keeps its old content
/// and the temporary file is removed. I/O errors name `path`.
pub(crate) fn atomic_write(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let tmp = temporary_path(path);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let result = File::create(&tmp)
        .map_err(io)
        .and_then(|mut file| {
            write(&mut file)?;
            file.sync_all().map_err(io)
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temporary_path(path: &Path) -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    path.with_file_name(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ))
}
