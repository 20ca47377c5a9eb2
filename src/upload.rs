//! Host-to-GPU uploads of a step (host gradients, sparse values and indices, tables, uniform parameters)
//! through a small ring of staging buffers that are created once and reused.
//!
//! `queue.write_buffer` creates a fresh staging buffer inside wgpu on every call; a step with 1,000 host
//! gradients made 1,000 of them. Here a step's data is copied into one persistently reused, host-mapped
//! `MAP_WRITE | COPY_SRC` buffer (a slot), contiguous destinations are merged, and the copies are recorded
//! into the step's encoder. A slot is unmapped when its step is recorded and mapped again (`map_async`)
//! once the step is submitted, so it is free again when the GPU has consumed it. Two slots (double
//! buffering) are created by the first step with host data and replaced, both, only when a step needs more
//! room than any before (a third appears only when several steps are recorded before one submit); when
//! both are still read by the GPU, the next step waits for the submission that holds one of them
//! (`PollType::Wait` on its index: backpressure, not a device-wide wait nor a read-back). A step
//! with more host data than the largest slot (`OptimizerOptions::max_staging_bytes`) gets a one-off
//! mapped buffer of its own, copied in encoder order like a slot (never `queue.write_buffer`, whose data
//! would land before the whole next submission, even for a step that is later abandoned). At most
//! `MAX_SLOTS` slots exist: past that, every slot is held by an unresolved step, and the step is refused.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::context::create_buffer_checked;
use crate::error::{Error, Result};

/// Mapped and free.
const MAPPED: u8 = 0;
/// Unmapped, used by a recorded step that has not been submitted yet.
const RECORDED: u8 = 1;
/// Submitted; `map_async` requested.
const MAPPING: u8 = 2;
/// The mapping failed (e.g. the device was lost): replaced when next needed.
const FAILED: u8 = 3;

/// Slots of the ring (double buffering: the host fills one while the GPU reads the other).
const SLOTS: usize = 2;

/// Smallest slot, so that tiny steps do not each grow the ring.
const MIN_SLOT_BYTES: u64 = 64 * 1024;

/// Most slots: each unresolved step with host data holds one (several steps may be recorded before one
/// submit), so the ring stays below `MAX_SLOTS` times the largest slot.
const MAX_SLOTS: usize = 8;

/// Default largest slot. A step with more host data than this gets a one-off buffer (an allocation that
/// is small next to copying that much data), so that the ring never holds more than `MAX_SLOTS` times
/// this.
pub(crate) const MAX_SLOT_BYTES: u64 = 64 << 20;

#[derive(Debug)]
struct Slot {
    buffer: wgpu::Buffer,
    state: Arc<AtomicU8>,
    /// The submission that reads the slot (known once its step is resolved as submitted).
    submission: Option<wgpu::SubmissionIndex>,
}

#[derive(Debug)]
struct Run {
    dst: wgpu::Buffer,
    dst_offset: u64,
    src_offset: u64,
    len: u64,
}

/// Where a step's host data is staged.
#[derive(Debug)]
enum Target {
    /// A slot of the ring.
    Slot(usize),
    /// A buffer of its own (more data than the largest slot).
    OneOff(wgpu::Buffer),
}

impl Target {
    fn buffer<'a>(&'a self, slots: &'a [Slot]) -> &'a wgpu::Buffer {
        match self {
            Target::Slot(i) => &slots[*i].buffer,
            Target::OneOff(b) => b,
        }
    }
}

#[derive(Debug)]
struct Active {
    target: Target,
    view: wgpu::BufferViewMut,
    cursor: u64,
    run: Option<Run>,
}

/// The staging ring of one optimizer.
#[derive(Debug)]
pub(crate) struct Uploader {
    label: String,
    /// Largest slot.
    max_slot_bytes: u64,
    slots: Vec<Slot>,
    /// Size of every slot made since the last growth.
    slot_bytes: u64,
    active: Option<Active>,
    /// Staging buffers created so far.
    pub(crate) created: u64,
}

impl Uploader {
    pub(crate) fn new(label: String, max_slot_bytes: u64) -> Self {
        Uploader {
            label,
            max_slot_bytes,
            slots: Vec::new(),
            slot_bytes: 0,
            active: None,
            created: 0,
        }
    }

    /// Bytes of staging held.
    pub(crate) fn bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.buffer.size()).sum()
    }

    fn mapped_buffer(&mut self, device: &wgpu::Device, size: u64) -> Result<wgpu::Buffer> {
        let buffer = create_buffer_checked(
            device,
            &wgpu::BufferDescriptor {
                label: Some(&self.label),
                size,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            },
        )?;
        self.created += 1;
        Ok(buffer)
    }

    fn new_slot(&mut self, device: &wgpu::Device) -> Result<Slot> {
        let buffer = self.mapped_buffer(device, self.slot_bytes)?;
        Ok(Slot {
            buffer,
            state: Arc::new(AtomicU8::new(MAPPED)),
            submission: None,
        })
    }

    /// Picks a free slot with room for `need` bytes and maps it for this step's writes (or, past the
    /// largest slot, a one-off buffer). No-op for 0 bytes.
    pub(crate) fn begin(&mut self, device: &wgpu::Device, need: u64) -> Result<()> {
        if need == 0 {
            return Ok(());
        }
        if need > self.max_slot_bytes {
            let buffer = self.mapped_buffer(device, need.next_multiple_of(wgpu::MAP_ALIGNMENT))?;
            return self.activate(Target::OneOff(buffer));
        }
        let state = |s: &Slot| s.state.load(Ordering::Acquire);
        if need > self.slot_bytes || self.slots.is_empty() {
            // Warm-up or a larger step than any before: every slot not held by an unsubmitted step is
            // replaced by one of the new size (a slot still in use by the GPU is kept alive by wgpu).
            self.slot_bytes = need
                .max(self.slot_bytes.saturating_mul(2))
                .max(MIN_SLOT_BYTES)
                .min(self.max_slot_bytes.max(need))
                .next_multiple_of(wgpu::MAP_ALIGNMENT);
            for i in 0..self.slots.len() {
                if state(&self.slots[i]) != RECORDED {
                    self.slots[i] = self.new_slot(device)?;
                }
            }
            while self.slots.len() < SLOTS {
                let slot = self.new_slot(device)?;
                self.slots.push(slot);
            }
        }
        let slot = loop {
            // Fires the callbacks of mappings that completed (does not wait).
            device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::Gpu(e.to_string()))?;
            // One snapshot of the states per look: a poll on another thread may run a map callback at
            // any time, and a slot seen MAPPING by one check and MAPPED by the next once made the ring
            // take it for "every slot held by an unresolved step" and grow.
            let mut states = [RECORDED; MAX_SLOTS];
            for (st, s) in states.iter_mut().zip(&self.slots) {
                *st = state(s);
            }
            let states = &states[..self.slots.len()];
            let fits = |i: usize| self.slots[i].buffer.size() >= need;
            if let Some(i) = (0..states.len()).find(|&i| states[i] == MAPPED && fits(i)) {
                break i;
            }
            // A slot whose mapping failed, or a slot made before the last growth, is replaced.
            if let Some(i) = (0..states.len())
                .find(|&i| states[i] == FAILED || (states[i] == MAPPED && !fits(i)))
            {
                self.slots[i] = self.new_slot(device)?;
                break i;
            }
            if !states.contains(&MAPPING) {
                // Every slot belongs to a step recorded but not yet resolved.
                if self.slots.len() >= MAX_SLOTS {
                    return Err(Error::UnresolvedSteps {
                        count: self.slots.len(),
                        call: "stage a step's host data (every staging buffer is held by one)",
                    });
                }
                let slot = self.new_slot(device)?;
                self.slots.push(slot);
                break self.slots.len() - 1;
            }
            // Every free slot is still read by submitted work: wait for the submission of one of them
            // (not for the whole device), then look again. A slot of an abandoned step (no submission)
            // maps at the next poll.
            let submission = (0..states.len())
                .filter(|&i| states[i] == MAPPING)
                .find_map(|i| self.slots[i].submission.clone());
            let poll = match submission {
                Some(index) => wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                },
                None => wgpu::PollType::Poll,
            };
            device.poll(poll).map_err(|e| Error::Gpu(e.to_string()))?;
        };
        self.activate(Target::Slot(slot))
    }

    /// Opens `target` (mapped) for this step's writes.
    fn activate(&mut self, target: Target) -> Result<()> {
        let buffer = target.buffer(&self.slots);
        let view = buffer
            .get_mapped_range_mut(..)
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.active = Some(Active {
            target,
            view,
            cursor: 0,
            run: None,
        });
        Ok(())
    }

    /// Stages `data` for `dst` at `dst_offset`, followed by `zeros` zero bytes (padding lanes). The copy
    /// lands in `encoder` order; a write that continues the previous one in the same buffer extends its
    /// copy instead of adding one.
    pub(crate) fn write(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        data: &[u8],
        zeros: u64,
    ) -> Result<()> {
        let len = data.len() as u64 + zeros;
        if len == 0 {
            return Ok(());
        }
        let a = self
            .active
            .as_mut()
            .ok_or_else(|| Error::Gpu("staging: write outside a step".into()))?;
        let capacity = a.view.len() as u64;
        if a.cursor + len > capacity
            || !len.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
            || !dst_offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        {
            return Err(Error::Gpu(format!(
                "staging: {len} bytes at {dst_offset} do not fit the step's {capacity}-byte slot at {}",
                a.cursor
            )));
        }
        let start = a.cursor as usize;
        a.view
            .slice(start..start + data.len())
            .copy_from_slice(data);
        if zeros > 0 {
            a.view
                .slice(start + data.len()..start + len as usize)
                .fill(0);
        }
        let continues = a.run.as_ref().is_some_and(|r| {
            r.dst == *dst && r.dst_offset + r.len == dst_offset && r.src_offset + r.len == a.cursor
        });
        if continues {
            if let Some(r) = a.run.as_mut() {
                r.len += len;
            }
        } else {
            let buffer = a.target.buffer(&self.slots);
            if let Some(r) = a.run.take() {
                encoder.copy_buffer_to_buffer(buffer, r.src_offset, &r.dst, r.dst_offset, r.len);
            }
            a.run = Some(Run {
                dst: dst.clone(),
                dst_offset,
                src_offset: a.cursor,
                len,
            });
        }
        a.cursor += len;
        Ok(())
    }

    /// Records the last copy and unmaps the slot (it must be unmapped when the step is submitted).
    /// Returns the slot the step used, to be resolved with [`Uploader::resolve`].
    pub(crate) fn finish(&mut self, encoder: &mut wgpu::CommandEncoder) -> Option<usize> {
        let a = self.active.take()?;
        let buffer = a.target.buffer(&self.slots);
        if let Some(r) = a.run {
            encoder.copy_buffer_to_buffer(buffer, r.src_offset, &r.dst, r.dst_offset, r.len);
        }
        drop(a.view);
        buffer.unmap();
        match a.target {
            Target::Slot(i) => {
                self.slots[i].state.store(RECORDED, Ordering::Release);
                Some(i)
            }
            // Kept alive by the encoder that copies from it; freed after its submission.
            Target::OneOff(_) => None,
        }
    }

    /// The step that used `slot` was submitted in `submission` (or abandoned: `None`, its copies never
    /// run): the slot is mapped again once the GPU is done with it.
    pub(crate) fn resolve(&mut self, slot: usize, submission: Option<wgpu::SubmissionIndex>) {
        let Some(slot) = self.slots.get_mut(slot) else {
            return;
        };
        slot.submission = submission;
        slot.state.store(MAPPING, Ordering::Release);
        let state = slot.state.clone();
        slot.buffer.map_async(wgpu::MapMode::Write, .., move |r| {
            state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
        });
    }
}
