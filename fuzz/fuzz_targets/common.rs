// Shared by the targets that read files: the parsers take a file, so each input is written
// to one scratch file per process (tmpfs-backed /dev/shm when present) and reopened.
use std::fs::File;
use std::path::PathBuf;

pub fn scratch(name: &str, data: &[u8]) -> (PathBuf, File) {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("dedupx-fuzz-{name}-{}", std::process::id()));
    std::fs::write(&path, data).expect("write scratch input");
    let file = File::open(&path).expect("reopen scratch input");
    (path, file)
}
