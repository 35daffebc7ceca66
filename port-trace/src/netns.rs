//! Network namespaces by inode number, as the eBPF programs report them.

use std::{os::unix::fs::MetadataExt, path::PathBuf};

/// The inode number of the namespace a `/proc/.../ns/net` path names.
pub fn inode_of(path: &std::path::Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// Our own network namespace's inode.
pub fn own() -> Option<u32> {
    inode_of(std::path::Path::new("/proc/self/ns/net"))
}

/// A path that opens namespace `inode`: some process's `/proc/PID/ns/net` that lives in it.
pub fn find(inode: u32) -> Option<PathBuf> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"))
        .find(|path| inode_of(path) == Some(inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_namespace() {
        let own = own().expect("own netns");
        let path = find(own).expect("some process is in our namespace");
        assert_eq!(inode_of(&path), Some(own));
    }
}
