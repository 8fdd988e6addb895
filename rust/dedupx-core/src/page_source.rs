//! Where page bytes come from: one small batched-read trait that every backend implements
//! (a process's memory, a physical memory image or live device, a file's page cache), so
//! that one driver ([`crate::read_and_hash`]) reads and hashes pages from any of them.
//!
//! Addresses are bytes in the source's own space (a virtual address, a physical address, a
//! file offset); a *stream* names one address space of a source (a PID; 0 where there is
//! only one).

/// How the driver should cut a source's pages into windows: one window is copied by one
/// call and hashed while it is hot in cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    /// Most pages in one window.
    pub pages: usize,
    /// A window's pages lie within this many bytes of address space.
    pub span: u64,
}

pub trait PageSource: Sync {
    /// What reading one stream needs open (a process's pagemap and mem files); a thread
    /// keeps the one it used last, so consecutive windows of a stream share it.
    type Stream: Send;
    type Error: Send;

    fn window_shape(&self) -> WindowShape;

    fn open_stream(&self, stream: u32) -> Result<Self::Stream, Self::Error>;

    /// Copies page `i` (at `addrs[i]`; sorted, page-aligned; its hash goes to `slots[i]`)
    /// into page `i` of `buf` and sets `ok[i]` to whether it was read.
    fn read_window(
        &self,
        stream: &Self::Stream,
        addrs: &[u64],
        slots: &[u32],
        buf: &mut [u8],
        ok: &mut Vec<bool>,
    ) -> Result<(), Self::Error>;

    /// Called after a copy: clears `ok[i]` for a page that no longer holds what slot
    /// `slots[i]` stands for (a process page remapped while it was copied).
    fn verify(
        &self,
        _stream: &Self::Stream,
        _addrs: &[u64],
        _slots: &[u32],
        _ok: &mut [bool],
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Whether `err` loses only the pages of the stream it came from (a process that exited
    /// since it was listed) rather than stopping the read.
    fn loses_stream(&self, _err: &Self::Error) -> bool {
        false
    }
}
