//! The one parallel read-and-hash driver: any [`PageSource`], windows of a [`ReadPlan`]
//! spread over the pool, each window copied by one batched read into a per-thread buffer,
//! verified, zero-tested and hashed while still in cache, its hashes written straight into
//! their slots.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::page_hash::{PageHash, PageHasher};
use crate::page_source::PageSource;
use crate::read_plan::{ReadPlan, ReadTask};
use crate::stages::Interrupted;
use crate::PAGE_SIZE;

/// What reading found besides the hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    pub hashed: u64,
    /// Pages that failed to read or verify, or whose stream was lost (a process that
    /// exited, where the source tolerates that).
    pub vanished: u64,
}

/// Reads and hashes every task of `plan`: slot `s` of a page read gets its hash in
/// `hashes[s]` and `hashed[s] = true`; other slots are left as they are. `check(done)` is
/// called after each window with the pages done so far and may stop the work.
pub fn read_and_hash<S>(
    source: &S,
    plan: &ReadPlan,
    hashes: &mut [PageHash],
    hashed: &mut [bool],
    check: &(dyn Fn(u64) -> Result<(), S::Error> + Sync),
) -> Result<ReadStats, S::Error>
where
    S: PageSource,
    S::Error: From<Interrupted>,
{
    assert!(
        hashes.len() == plan.slots() && hashed.len() == plan.slots(),
        "output has {} slots, the plan {}",
        hashes.len(),
        plan.slots()
    );
    let tasks = plan.tasks();
    let windows = plan.windows(source.window_shape());
    let done = AtomicU64::new(0);
    let read = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let hash_out = DisjointSlots::new(hashes);
    let flag_out = DisjointSlots::new(hashed);
    let shape = source.window_shape();
    windows.par_iter().try_for_each_init(
        || WindowBuffers::new(shape.pages),
        |bufs, w| {
            if stop.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            let window = &tasks[w.clone()];
            let emit = |slot: u32, h: PageHash| {
                hash_out.write(slot as usize, h);
                flag_out.write(slot as usize, true);
            };
            match bufs.hash_window(source, window, emit) {
                Ok(n) => {
                    read.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) if source.loses_stream(&e) => {}
                Err(e) => return Err(e),
            }
            let d = done.fetch_add(window.len() as u64, Ordering::Relaxed) + window.len() as u64;
            check(d).inspect_err(|_| stop.store(true, Ordering::Relaxed))
        },
    )?;
    let hashed = read.into_inner();
    Ok(ReadStats {
        hashed,
        vanished: tasks.len() as u64 - hashed,
    })
}

/// Lets parallel windows write results for distinct slots straight into one slice, with no
/// per-window result lists to merge (which would cost 24 bytes per PFN at the peak).
struct DisjointSlots<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the slots are written from several threads, but never the same slot twice (see
// `write`), and the slice is not read until the borrow ends.
unsafe impl<T: Send> Sync for DisjointSlots<'_, T> {}

impl<'a, T: Copy> DisjointSlots<'a, T> {
    fn new(v: &'a mut [T]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            _borrow: PhantomData,
        }
    }

    fn write(&self, i: usize, value: T) {
        assert!(i < self.len, "slot {i} of {}", self.len);
        // SAFETY: in bounds (checked above). Only `read_and_hash` writes, once per task, and
        // a `ReadPlan` names each slot at most once (checked when it is made, the only way
        // to make one), and the windows partition the tasks: no two threads write the same
        // slot, and nothing reads the slice while this borrow lives. T is Copy, so
        // overwriting without dropping leaks nothing.
        unsafe { self.ptr.add(i).write(value) }
    }
}

/// One thread's scratch space, reused from window to window.
struct WindowBuffers<S> {
    hasher: PageHasher,
    /// The stream this thread read last, kept open for its next window.
    stream: Option<(u32, S)>,
    data: Vec<u8>,
    ok: Vec<bool>,
    addrs: Vec<u64>,
    slots: Vec<u32>,
    kept: Vec<usize>,
    hashes: Vec<(PageHash, bool)>,
}

impl<S> WindowBuffers<S> {
    fn new(pages: usize) -> Self {
        Self {
            hasher: PageHasher::new(),
            stream: None,
            // Zeroed by calloc, so the pages are mapped as the first copy writes them, not
            // once more by a memset here.
            data: vec![0; pages * PAGE_SIZE],
            ok: Vec::new(),
            addrs: Vec::new(),
            slots: Vec::new(),
            kept: Vec::new(),
            hashes: Vec::new(),
        }
    }
}

impl<St> WindowBuffers<St> {
    /// Copies, verifies and hashes one window (pages of one stream, sorted by address);
    /// calls `emit(slot, hash)` per page read and returns how many were read.
    fn hash_window<S: PageSource<Stream = St>>(
        &mut self,
        source: &S,
        window: &[ReadTask],
        mut emit: impl FnMut(u32, PageHash),
    ) -> Result<u64, S::Error> {
        let id = window[0].stream;
        // Taken, and put back only once the window is done: a stream that failed is
        // opened afresh for its next window.
        let stream = match self.stream.take() {
            Some((open, s)) if open == id => s,
            _ => source.open_stream(id)?,
        };
        self.addrs.clear();
        self.addrs.extend(window.iter().map(|t| t.addr));
        self.slots.clear();
        self.slots.extend(window.iter().map(|t| t.slot));
        let data = &mut self.data[..window.len() * PAGE_SIZE];
        source.read_window(&stream, &self.addrs, &self.slots, data, &mut self.ok)?;
        source.verify(&stream, &self.addrs, &self.slots, &mut self.ok)?;
        self.stream = Some((id, stream));
        self.kept.clear();
        self.kept
            .extend((0..window.len()).filter(|&k| self.ok.get(k) == Some(&true)));
        let data = &self.data;
        let pages: Vec<&[u8]> = self
            .kept
            .iter()
            .map(|&k| &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE])
            .collect();
        self.hasher.hash_or_zero(&pages, &mut self.hashes);
        for (&k, &(h, _)) in self.kept.iter().zip(&self.hashes) {
            emit(self.slots[k], h);
        }
        Ok(self.kept.len() as u64)
    }
}
