//! The socket file a poold listens on, and whose it is: several poolds may bind the same path
//! one after another (a restarted poold, a new nginx master's during a binary upgrade), and
//! each may remove only the file it bound, never the one that replaced it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A socket file as it was when its poold bound it (device and inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The file at `path` now; `None` if there is none.
    pub fn identify(path: &Path) -> Option<SocketFile> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The file's identity (device, inode), for another process to take the file over.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// The file at `path` with the identity `id` (from [`SocketFile::id`]).
    pub fn with_id(path: &Path, id: (u64, u64)) -> SocketFile {
        SocketFile {
            path: path.to_path_buf(),
            dev: id.0,
            ino: id.1,
        }
    }

    /// Removes the file if the path still names it; true if it did. Another process binding
    /// the path between the look and the removal is the one race left, and only a
    /// restart at that very moment could lose its file (it is then made again by its next
    /// start, or by nginx starting it).
    pub fn remove_if_still_there(&self) -> bool {
        if SocketFile::identify(&self.path).as_ref() != Some(self) {
            return false;
        }
        std::fs::remove_file(&self.path).is_ok()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn only_the_file_it_identified_is_removed() {
        let dir = std::env::temp_dir().join(format!("npc-socket-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.sock");
        std::fs::write(&path, b"first").unwrap();
        let first = SocketFile::identify(&path).unwrap();
        // Replaced by another one at the same path, made while the first still existed (so
        // with another inode), as a new poold's bind replaces a stale socket file.
        std::fs::write(dir.join("next"), b"second").unwrap();
        std::fs::rename(dir.join("next"), &path).unwrap();
        let second = SocketFile::identify(&path).unwrap();
        assert_ne!(first, second);
        assert!(!first.remove_if_still_there());
        assert!(path.exists(), "the replacement stays");
        assert!(second.remove_if_still_there());
        assert!(!path.exists());
        assert!(!second.remove_if_still_there(), "gone already");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
