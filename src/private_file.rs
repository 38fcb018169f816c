//! Files pushbridge writes are readable by their owner only: the store
//! (device tokens, queued notifications with their message text), the
//! `log` sink's output (the same), keys the simulator generates. Mode
//! `0600` is set on the file itself, so it holds whatever the umask is; a
//! regular file found group- or world-accessible is tightened, with a
//! warning. Unix only (pushbridge runs on Unix).

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every file pushbridge creates: read and write for the owner.
pub const PRIVATE: u32 = 0o600;

/// Create `path` as an empty file with mode [`PRIVATE`] if it does not
/// exist; if it does, [`tighten`] it. For files another library opens
/// afterwards (SQLite).
///
/// Errors: the file cannot be created (a missing directory) or its mode
/// read or changed.
pub fn create(path: &Path) -> std::io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(PRIVATE).open(path) {
        Ok(f) => f.set_permissions(Permissions::from_mode(PRIVATE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => tighten(path).map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Open `path` for appending, created with mode [`PRIVATE`] when missing,
/// [`tighten`]ed when it exists.
pub fn append(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new().create(true).append(true).mode(PRIVATE).open(path)?;
    tighten_open(&f, path)?;
    Ok(f)
}

/// Write `contents` to `path` (replacing it) with mode [`PRIVATE`]: the
/// mode is set before a byte is written, also on a file that existed.
pub fn write(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(PRIVATE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(PRIVATE))?;
    f.write_all(contents)?;
    f.sync_all()
}

/// If `path` is a regular file that its group or others may access, take
/// their access away (keeping the owner's), with a WARN naming it; `true`
/// when it did. Missing files and non-regular files (a FIFO, a device
/// such as `/dev/stdout`) are left alone.
pub fn tighten(path: &Path) -> std::io::Result<bool> {
    match File::open(path) {
        Ok(f) => tighten_open(&f, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn tighten_open(f: &File, path: &Path) -> std::io::Result<bool> {
    let meta = f.metadata()?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() || mode & 0o077 == 0 {
        return Ok(false);
    }
    f.set_permissions(Permissions::from_mode(mode & 0o700))?;
    tracing::warn!(
        path = %path.display(),
        mode = format!("{mode:04o}"),
        "file was readable by other local users; made it owner-only"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_files_are_owner_only_and_existing_ones_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        create(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
        let open = dir.path().join("open");
        std::fs::write(&open, "x").unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o664)).unwrap();
        create(&open).unwrap();
        assert_eq!(mode(&open), 0o600);
        assert_eq!(std::fs::read(&open).unwrap(), b"x", "contents kept");
        std::fs::set_permissions(&open, Permissions::from_mode(0o744)).unwrap();
        append(&open).unwrap().write_all(b"y").unwrap();
        assert_eq!(mode(&open), 0o700);
        assert!(!tighten(&open).unwrap(), "already owner-only");
        assert!(!tighten(&dir.path().join("missing")).unwrap());
        let log = dir.path().join("log");
        append(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        let key = dir.path().join("key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
        write(&key, b"secret").unwrap();
        assert_eq!((mode(&key), std::fs::read(&key).unwrap()), (0o600, b"secret".to_vec()));
    }
}
