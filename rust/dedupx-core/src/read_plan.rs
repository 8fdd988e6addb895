//! What to read: one task per page, each naming the slot its hash goes to. A plan is
//! checked when it is made, so the driver may write the slots from several threads.

use std::ops::Range;

use crate::bitmap::BitVec;
use crate::page_source::WindowShape;
use crate::PAGE_SIZE;

/// One page to read: at `addr` of stream `stream`, its hash to slot `slot`. 16 bytes: the
/// host scan holds one per distinct PFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTask {
    pub addr: u64,
    pub stream: u32,
    pub slot: u32,
}

impl ReadTask {
    fn order(&self) -> (u32, u64) {
        (self.stream, self.addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("read plan names slot {slot} twice")]
    DuplicateSlot { slot: u32 },
    #[error("read plan names slot {slot}, but there are only {slots}")]
    SlotOutOfRange { slot: u32, slots: usize },
}

/// Tasks sorted by stream and address, each slot below `slots` named at most once.
///
/// The driver relies on the second property for memory safety (it writes slots through a
/// raw pointer from several threads), so it is checked here, once, with one bit per slot,
/// and a plan cannot be made any other way.
#[derive(Debug)]
pub struct ReadPlan {
    tasks: Vec<ReadTask>,
    slots: usize,
}

impl ReadPlan {
    pub fn new(mut tasks: Vec<ReadTask>, slots: usize) -> Result<Self, PlanError> {
        let mut seen = BitVec::zeros(slots);
        for t in &tasks {
            if t.slot as usize >= slots {
                return Err(PlanError::SlotOutOfRange {
                    slot: t.slot,
                    slots,
                });
            }
            if seen.replace(t.slot as usize, true) {
                return Err(PlanError::DuplicateSlot { slot: t.slot });
            }
        }
        // Callers mostly hand over sorted tasks, which this sort merely confirms.
        tasks.sort_unstable_by_key(ReadTask::order);
        Ok(Self { tasks, slots })
    }

    pub fn tasks(&self) -> &[ReadTask] {
        &self.tasks
    }

    /// How many slots the output must have.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Splits the tasks into windows of at most `shape.pages` pages of one stream within
    /// `shape.span` bytes of address space.
    pub fn windows(&self, shape: WindowShape) -> Vec<Range<usize>> {
        let tasks = &self.tasks;
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=tasks.len() {
            let split = i == tasks.len()
                || i - start == shape.pages
                || tasks[i].stream != tasks[start].stream
                || tasks[i].addr - tasks[start].addr >= shape.span;
            if split {
                out.push(start..i);
                start = i;
            }
        }
        out
    }
}

/// Pages `[first, first + n)` of one stream, page `i` to slot `i`: a run of consecutive
/// pages such as an image segment.
pub fn consecutive(first_addr: u64, n: usize) -> Vec<ReadTask> {
    (0..n)
        .map(|i| ReadTask {
            addr: first_addr + (i * PAGE_SIZE) as u64,
            stream: 0,
            slot: i as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_respect_size_span_and_stream() {
        let task = |stream, page: u64, slot| ReadTask {
            stream,
            addr: page * 4096,
            slot,
        };
        let mut tasks: Vec<ReadTask> = (0..200).map(|i| task(1, i, i as u32)).collect();
        tasks.extend((0..50).map(|i| task(1, i + 5000, 200 + i as u32)));
        tasks.extend((0..50).map(|i| task(2, i + 5050, 250 + i as u32)));
        let plan = ReadPlan::new(tasks, 300).expect("distinct slots");
        let shape = WindowShape {
            pages: 128,
            span: 2048 * 4096,
        };
        assert_eq!(
            plan.windows(shape),
            vec![0..128, 128..200, 200..250, 250..300]
        );
    }

    #[test]
    fn refuses_a_slot_named_twice_or_out_of_range() {
        let t = |slot| ReadTask {
            addr: 0,
            stream: 0,
            slot,
        };
        assert!(matches!(
            ReadPlan::new(vec![t(1), t(0), t(1)], 2),
            Err(PlanError::DuplicateSlot { slot: 1 })
        ));
        assert!(matches!(
            ReadPlan::new(vec![t(2)], 2),
            Err(PlanError::SlotOutOfRange { slot: 2, .. })
        ));
    }
}
