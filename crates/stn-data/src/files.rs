//! Files as a careful tool treats them: outputs written atomically with the user's umask and no
//! temp file left behind by an earlier crash; inputs read only when they are regular files of a
//! bounded size.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The directory `path` lives in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The prefix of the temp files [`write_atomic`] makes for `path` in its directory:
/// `.{name}.{pid}.`, so that a later run can tell whose they are.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    )
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A crash or an error leaves either the old file or the new one, never a half-written one. The
/// file gets the mode a plain `create` would give it (0666 less the umask; an existing file keeps
/// its own), not the temp file's 0600. Temp files for the same `path` left by a process that no
/// longer runs (killed while writing) are removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir_of(path);
    remove_stale_temps(path);
    let mode = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{}{}.", temp_prefix(path), std::process::id()))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    match mode {
        Some(p) => tmp.as_file().set_permissions(p)?,
        None => set_umask_mode(tmp.as_file())?,
    }
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn set_umask_mode(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o666 & !umask()))
}

#[cfg(not(unix))]
fn set_umask_mode(_: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

/// The process's umask, read from `/proc/self/status` (Linux 4.7+; reading it with `umask(2)`
/// would change it for a moment under the other threads), else the common 022.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Removes `.{name}.{pid}.*.tmp` files beside `path` whose process is gone (no `/proc/{pid}`), or,
/// where `/proc` is absent, that are over a day old. Best effort: errors are ignored.
fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir_of(path)) else {
        return;
    };
    let have_proc = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if !rest.ends_with(".tmp") {
            continue;
        }
        let stale = if have_proc {
            match rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) {
                Some(pid) => {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                }
                None => old(&e.path()),
            }
        } else {
            old(&e.path())
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn old(p: &Path) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 24 * 3600)
}

/// Why [`read_regular`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system's error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A directory, device, FIFO or socket.
    #[error("{}: not a regular file (a directory, device, FIFO or socket)", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Larger than the limit.
    #[error("{}: {size} bytes, more than the {limit} bytes such a file can have", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or what was read of it).
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// Reads a whole file that must be a regular file (symlinks followed) of at most `limit` bytes:
/// `/dev/zero`, a FIFO or a directory is refused before any read, and a file that grows while it
/// is read stops at the limit.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit,
        });
    }
    let f = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: out.len() as u64,
            limit,
        });
    }
    Ok(out)
}
