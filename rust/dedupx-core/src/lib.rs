//! dedupx core: reads what Linux says about a process's memory and hashes its pages.
//!
//! No Python here: the binding crate converts these types, nothing more.

pub mod agent_file;
pub mod bitmap;
pub mod elf_core;
pub mod error;
pub mod file_cache;
pub mod host_frames;
pub mod host_pages;
pub mod host_scan;
pub mod host_snapshot;
pub mod image_frames;
pub mod image_open;
pub mod iomem;
pub mod kpageflags;
pub mod lime;
pub mod live_memory;
pub mod machine_limit;
pub mod maps;
pub mod observer;
pub mod page_cache_walk;
pub mod page_hash;
pub mod page_source;
pub mod page_table;
pub mod pagemap;
pub mod parallel;
pub mod phys_image;
pub mod proc_escape;
pub mod proc_info;
pub mod process_memory;
pub mod process_scan;
pub mod read_and_hash;
pub mod read_changes;
pub mod read_plan;
pub mod segments;
pub mod stages;
pub mod swap_area;

pub use error::{Result, ScanError};
pub use page_table::PageTable;
pub use process_scan::{scan_process, ProcessScan, ScanOptions, ScanStats};

/// dedupx works on base pages; huge pages are handled as their 4 KiB subpages.
pub const PAGE_SIZE: usize = 4096;
