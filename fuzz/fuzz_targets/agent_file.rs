#![no_main]
//! dedupx-agent files: arrays read back within the file's size, or AgentFileError.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (path, _) = common::scratch("agent", data);
    if let Ok(d) = dedupx_core::agent_file::read(&path) {
        assert_eq!(d.kpageflags.len(), d.kpagecount.len());
        assert!(d.hashes.is_empty() || d.hashes.len() == 16 * d.kpageflags.len());
    }
});
