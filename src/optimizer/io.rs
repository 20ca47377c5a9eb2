//! Reading state back (batched, as a future or blocking on its own submission), recording reads into a
//! caller's encoder, checkpoints, and the GPU-side counters.

use super::RmsProp;
use crate::error::{Error, Result};
use crate::kernels::VAR_INFO_BYTES;
use crate::pool::{Kind, Slot};
use crate::readback::{Range, ReadBack};
use crate::step::types::{Tensor, VarId};

impl RmsProp {
    /// The pooled kind of tensor `t` of variable `id`: a slot the variable does not keep (by the
    /// configuration and its options) is [`Error::SlotNotPresent`], even where the pools keep it for
    /// other variables.
    pub(super) fn kind(&self, id: VarId, t: Tensor) -> Result<Kind> {
        let kind = match t {
            Tensor::Variable => Kind::Variable,
            Tensor::Gradient => Kind::Gradient,
            Tensor::Slot(slot) => Kind::from(slot),
            Tensor::Copy => Kind::Copy,
        };
        if t == Tensor::Copy && !self.gpu.kinds.contains(&Kind::Copy) {
            return Err(Error::SlotNotPresent {
                slot: "copy",
                why: "it needs StorageTypes::copy in the configuration",
            });
        }
        if let Tensor::Slot(slot) = t {
            if !self.keeps(id, slot)? || !self.gpu.kinds.contains(&kind) {
                return Err(Error::SlotNotPresent {
                    slot: slot.name(),
                    why: match slot {
                        Slot::Momentum => {
                            "it needs momentum > 0 (in the configuration or the variable's options), \
                             or a preset that always keeps it"
                        }
                        Slot::AverageGradient => {
                            "it needs centered = true (in the configuration or the variable's options)"
                        }
                        Slot::Ema => "it needs use_ema = true in the configuration",
                        Slot::Velocity => "internal",
                    },
                });
            }
        }
        Ok(kind)
    }

    /// The ranges of `items`, and how many ranges each item has.
    fn ranges(&self, items: &[(VarId, Tensor)]) -> Result<(Vec<Range<'_>>, Vec<usize>)> {
        let (mut ranges, mut parts) = (Vec::new(), Vec::new());
        for &(id, t) in items {
            let v = self.layout.var(id)?;
            let kind = self.kind(id, t)?;
            if kind == Kind::Velocity && v.rowwise {
                // One f32 per row, in the row-wise velocity buffer.
                let rows = v.rows();
                if rows > 0 {
                    ranges.push(Range {
                        offset: u64::from(v.rows_base) * 4,
                        elems: rows,
                        ..Range::words(&self.gpu.row_velocity, rows as u64 * 4)
                    });
                }
                parts.push(usize::from(rows > 0));
                continue;
            }
            for s in &v.segments {
                let layout = self.layout.elems(kind, self.layout.chunks[s.chunk].storage);
                ranges.push(Range {
                    buffer: self.gpu.chunks[s.chunk].buffer(kind)?,
                    offset: layout.at(s.offset),
                    bytes: layout.bytes(s.elems),
                    dtype: layout.dtype,
                    elems: s.elems,
                    q8: (layout.block, kind == Kind::Velocity),
                });
            }
            parts.push(v.segments.len());
        }
        Ok((ranges, parts))
    }

    /// Starts reading any set of (variable, tensor) with one copy, one submit and one map: the result is
    /// a future of one `Vec<f32>` per item (see [`ReadBack`]; [`ReadBack::wait`] blocks on this read's
    /// submission alone). Refused with [`Error::UnresolvedSteps`] while recorded steps are unresolved.
    pub fn read_async(&mut self, items: &[(VarId, Tensor)]) -> Result<ReadBack> {
        self.ensure_resolved("read state back")?;
        self.ctx.check_alive()?;
        if self.gpu.exact {
            // SparseMode::LazyExact: what is read is every row up to date.
            let ids: Vec<VarId> = items.iter().map(|&(id, _)| id).collect();
            self.catch_up(&ids)?;
        }
        let (ranges, parts) = self.ranges(items)?;
        let label = format!("{}/read-back", self.config.name());
        ReadBack::start(self.ctx.device(), self.ctx.queue(), &label, &ranges, &parts)
    }

    /// Reads any set of (variable, tensor) back, waiting once for the read's own submission.
    pub fn read_many(&mut self, items: &[(VarId, Tensor)]) -> Result<Vec<Vec<f32>>> {
        let out = self.read_async(items)?.wait()?;
        self.ctx.check_alive()?;
        Ok(out)
    }

    /// Reads a variable back to the host (waits for the GPU).
    pub fn read_variable(&mut self, id: VarId) -> Result<Vec<f32>> {
        self.read_one(id, Tensor::Variable)
    }

    /// Reads a slot of a variable back to the host (waits for the GPU). A slot this configuration does
    /// not keep is [`Error::SlotNotPresent`].
    pub fn read_slot(&mut self, id: VarId, slot: Slot) -> Result<Vec<f32>> {
        self.read_one(id, Tensor::Slot(slot))
    }

    fn read_one(&mut self, id: VarId, t: Tensor) -> Result<Vec<f32>> {
        Ok(self.read_many(&[(id, t)])?.pop().unwrap_or_default())
    }

    /// Records into the caller's `encoder` the copy of `items` into `dst` from byte `dst_offset` on,
    /// one after another (each starting on a 4-byte boundary), each in its storage type (16-bit types:
    /// two elements per word, an odd count's last word padded): nothing is submitted or waited for.
    /// `dst` needs `COPY_DST`. Returns each item's (byte offset in `dst`, element count). Allowed while
    /// steps are unresolved: the copy reads what the GPU holds at that point of the command stream.
    pub fn record_read(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        items: &[(VarId, Tensor)],
        dst: &wgpu::Buffer,
        dst_offset: u64,
    ) -> Result<Vec<(u64, usize)>> {
        let (ranges, parts) = self.ranges(items)?;
        if let Some((id, _)) = items
            .iter()
            .find(|(id, _)| self.gpu.exact && self.layout.variables[id.index()].stale)
        {
            return Err(Error::InvalidConfig {
                field: "sparse_mode",
                value: format!(
                    "lazy_exact, for {:?}",
                    self.layout.variables[id.index()].name
                ),
                requirement: "makes record_read refuse a variable whose rows a lazy step may have \
                              left behind: call catch_up first (or read with read_many)",
            });
        }
        let total: u64 = ranges.iter().map(|r| r.bytes).sum();
        let bad = |reason: String| Error::GradientBuffer {
            name: "record_read destination".into(),
            reason,
        };
        if !dst.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return Err(bad(format!("usage {:?} lacks COPY_DST", dst.usage())));
        }
        if !dst_offset.is_multiple_of(4) || dst_offset.saturating_add(total) > dst.size() {
            return Err(bad(format!(
                "{total} bytes at offset {dst_offset} do not fit its {} bytes (offset a multiple of 4)",
                dst.size()
            )));
        }
        let (mut at, mut k, mut out) = (dst_offset, 0, Vec::new());
        for n in parts {
            let start = at;
            let mut elems = 0;
            for r in &ranges[k..k + n] {
                if r.bytes > 0 {
                    encoder.copy_buffer_to_buffer(r.buffer, r.offset, dst, at, r.bytes);
                }
                at += r.bytes;
                elems += r.elems;
            }
            out.push((start, elems));
            k += n;
        }
        Ok(out)
    }

    /// Swaps every variable with its moving average (slot [`Slot::Ema`], `use_ema`) on the GPU: the
    /// variables then hold the averages, for evaluation as Keras's `finalize_variable_values` leaves
    /// them, and the slot holds the trained values; a second call swaps them back. Copies through a
    /// temporary buffer per pool buffer (allocated per call: this is not a step). Refused with
    /// [`Error::SlotNotPresent`] without `use_ema`, and while steps are unresolved.
    pub fn swap_ema_weights(&mut self) -> Result<()> {
        self.ensure_resolved("swap the variables and their averages")?;
        self.ctx.check_alive()?;
        if !self.config.use_ema() {
            return Err(Error::SlotNotPresent {
                slot: Slot::Ema.name(),
                why: "it needs use_ema = true in the configuration",
            });
        }
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("swap variables and ema"),
        });
        let mut temps = Vec::new();
        for (ci, chunk) in self.layout.chunks.iter().enumerate() {
            let used = chunk.segments.iter().map(|s| s.1).max().unwrap_or(0) * 16;
            if used == 0 {
                continue;
            }
            let temp = crate::context::create_buffer_checked(
                &device,
                &wgpu::BufferDescriptor {
                    label: Some("swap variables and ema: temporary"),
                    size: used,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                },
            )?;
            let x = self.gpu.chunks[ci].buffer(Kind::Variable)?;
            let e = self.gpu.chunks[ci].buffer(Kind::Ema)?;
            encoder.copy_buffer_to_buffer(x, 0, &temp, 0, used);
            encoder.copy_buffer_to_buffer(e, 0, x, 0, used);
            encoder.copy_buffer_to_buffer(&temp, 0, e, 0, used);
            temps.push(temp);
        }
        self.ctx.queue().submit([encoder.finish()]);
        drop(temps);
        Ok(())
    }

    /// Saves the complete optimizer state to `path` (safetensors; see [`crate::checkpoint`]): every slot,
    /// the step count, the skipped-step count, the configuration, the current loss scale factor (restored
    /// by [`RmsProp::load_checkpoint`]: dynamic loss scaling changes it), and the variables when
    /// `include_variables`. Each tensor keeps its buffer's type (safetensors `F32`, `F16` or `BF16`, the
    /// stored 16-bit values bit for bit; a slot in 8-bit quantized state is two tensors, its codes as
    /// `U8` of the variable's shape and its blocks' absmax as `F32` `slots/<slot>/<variable>/absmax`,
    /// see [`crate::checkpoint`]) and each variable's storage types are recorded (metadata `storage`),
    /// so that loading resumes bit for bit. Everything is read with one copy and one wait.
    /// Atomic: the previous file at `path` survives a crash mid-save.
    pub fn save_checkpoint(
        &mut self,
        path: &std::path::Path,
        include_variables: bool,
    ) -> Result<()> {
        self.ensure_resolved("save a checkpoint")?;
        // SparseMode::LazyExact: the file holds every row up to date (so it needs no row counters), and
        // the counts start again from 0 here as in a run resumed from it (under a schedule the history's
        // blocks follow the counts: so both group the steps rows miss alike, bit for bit).
        self.catch_up_all()?;
        self.reset_lazy_counts();
        if let Some(n) = self.config.gradient_accumulation_steps() {
            if !self.iterations.is_multiple_of(n) {
                return Err(Error::Checkpoint {
                    path: path.display().to_string(),
                    message: format!(
                        "cannot save in the middle of gradient accumulation (step {} of \
                         gradient_accumulation_steps={n}: the accumulator holds gradients); save \
                         after a step whose number is a multiple of {n}",
                        self.iterations
                    ),
                });
            }
        }
        let mut items = Vec::new();
        for i in 0..self.layout.variables.len() {
            let id = self.layout.id(i);
            if include_variables {
                items.push((id, Tensor::Variable));
            }
            let slots = self.variable_slots(id)?;
            items.extend(slots.iter().map(|&s| (id, Tensor::Slot(s))));
        }
        let read = {
            let (mut ranges, mut parts) = self.ranges(&items)?;
            ranges.push(Range::words(&self.gpu.status, 8));
            parts.push(1);
            let label = format!("{}/checkpoint read-back", self.config.name());
            ReadBack::start(self.ctx.device(), self.ctx.queue(), &label, &ranges, &parts)?
        };
        // As stored: 16-bit values bit for bit (NaN payloads included), never widened and rounded back.
        let mut values = read.wait_bytes()?;
        let skipped = values
            .pop()
            .and_then(|s| {
                s.get(4..8)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })
            .map_or(0, u64::from);
        let mut tensors = Vec::new();
        for ((id, t), bytes) in items.into_iter().zip(values) {
            let v = &self.layout.variables[id.index()];
            let name = match t {
                Tensor::Slot(s) => format!("slots/{}/{}", s.name(), v.name),
                _ => format!("variables/{}", v.name),
            };
            let dtype = self.kind(id, t)?.dtype(v.storage);
            if dtype != crate::dtype::Dtype::Q8 {
                tensors.push(crate::checkpoint::Tensor {
                    name,
                    // A row-wise velocity: one value per row.
                    shape: match (t, v.rowwise) {
                        (Tensor::Slot(Slot::Velocity), true) => vec![v.rows()],
                        _ => v.shape.clone(),
                    },
                    dtype,
                    bytes,
                });
                continue;
            }
            // Every part of a variable starts on a block (chunks hold whole blocks): the bytes are
            // the variable's blocks in order, each absmax word then its codes.
            let block = self.config.q8_block();
            let (codes, absmax) =
                crate::pool_q8::split_blocks(&bytes, v.len, block).ok_or_else(|| {
                    Error::Checkpoint {
                        path: path.display().to_string(),
                        message: format!("{name}: {} q8 bytes read back", bytes.len()),
                    }
                })?;
            tensors.push(crate::checkpoint::Tensor {
                name: format!("{name}/absmax"),
                shape: vec![v.len.div_ceil(block)],
                dtype: crate::dtype::Dtype::F32,
                bytes: absmax,
            });
            tensors.push(crate::checkpoint::Tensor {
                name,
                shape: v.shape.clone(),
                dtype,
                bytes: codes,
            });
        }
        let listed: Vec<(&str, &[usize])> = self
            .layout
            .variables
            .iter()
            .map(|v| (v.name.as_str(), &v.shape[..]))
            .collect();
        let config = crate::checkpoint::config_json(&self.config).to_string();
        let var_options = self.var_options_json().to_string();
        let storage: Vec<serde_json::Value> = self
            .layout
            .variables
            .iter()
            .map(|v| crate::checkpoint::storage_json(&v.storage))
            .collect();
        let mut metadata = std::collections::HashMap::from([
            ("format".to_string(), crate::checkpoint::FORMAT.to_string()),
            (
                "preset".to_string(),
                self.config.preset_kind().name().to_string(),
            ),
            ("config".to_string(), config),
            ("var_options".to_string(), var_options),
            (
                "storage".to_string(),
                serde_json::Value::Array(storage).to_string(),
            ),
            ("iterations".to_string(), self.iterations.to_string()),
            ("skipped_steps".to_string(), skipped.to_string()),
            (
                "variables".to_string(),
                serde_json::to_string(&listed).unwrap_or_default(),
            ),
        ]);
        if let Some(f) = self.config.loss_scale_factor() {
            // Written as Rust prints an f64 (shortest round-trip form): read back bit for bit.
            metadata.insert("loss_scale_factor".to_string(), f.to_string());
        }
        crate::checkpoint::write(path, crate::checkpoint::Contents { metadata, tensors })
    }

    /// Restores a checkpoint written by [`RmsProp::save_checkpoint`] into this optimizer, which must have
    /// the same preset, configuration, variables (names and shapes, in order) and per-variable options
    /// (as they resolve: learning rate, rho, momentum, epsilon, centered, maximize, weight decay
    /// including name exclusions, frozen; a checkpoint written before options existed holds variables
    /// without options) and storage types: every tensor's safetensors type must be its buffer's type and
    /// every variable's storage types (variable, gradient, state) the file's, else
    /// [`Error::Checkpoint`] naming the tensor (or variable) and both types; nothing is converted. A
    /// checkpoint written before 16-bit storage existed holds f32 variables. q8 state needs the file's
    /// codes (`U8`, the variable's shape) and absmax (`F32`, one per block of this configuration's
    /// `q8_block`); q8 state in the file for f32 state here, or the reverse, is an error. Set options
    /// after loading to change them. Everything is read and checked first; on any error nothing changes.
    /// Variables are restored when the file holds them; 16-bit values and q8 codes and absmax are
    /// written back bit for bit.
    pub fn load_checkpoint(&mut self, path: &std::path::Path) -> Result<()> {
        self.ensure_resolved("load a checkpoint")?;
        self.ctx.check_alive()?;
        let vars: Vec<(String, Vec<usize>)> = self
            .layout
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.shape.clone()))
            .collect();
        let slots: Vec<Vec<Slot>> = (0..vars.len())
            .map(|i| self.variable_slots(self.layout.id(i)))
            .collect::<Result<_>>()?;
        let storage: Vec<crate::dtype::StorageTypes> =
            self.layout.variables.iter().map(|v| v.storage).collect();
        let names: Vec<Vec<(&str, crate::dtype::Dtype)>> = slots
            .iter()
            .zip(&storage)
            .map(|(s, &st)| {
                s.iter()
                    .map(|&s| (s.name(), Kind::from(s).dtype(st)))
                    .collect()
            })
            .collect();
        let rowwise: Vec<bool> = self.layout.variables.iter().map(|v| v.rowwise).collect();
        let expected = crate::checkpoint::Expected {
            config: &self.config,
            variables: &vars,
            rowwise: &rowwise,
            storage: &storage,
            slots: &names,
            q8_block: self.config.q8_block(),
            var_options: self.var_options_json(),
            default_options: self.var_options_json_of(|_| false),
        };
        let restored = crate::checkpoint::read(path, &expected)?;
        if let (Some(_), Some(why)) = (
            restored.loss_scale_factor,
            self.loss_scale_storage_conflict(),
        ) {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                message: format!("the checkpoint's loss_scale_factor {why}"),
            });
        }
        if let Some(n) = self.config.gradient_accumulation_steps() {
            if !restored.iterations.is_multiple_of(n) {
                return Err(Error::Checkpoint {
                    path: path.display().to_string(),
                    message: format!(
                        "step {} is in the middle of gradient accumulation \
                         (gradient_accumulation_steps={n})",
                        restored.iterations
                    ),
                });
            }
        }
        // SparseMode::LazyExact: rows the file does not hold (variables left out) up to date first.
        self.catch_up_all()?;
        let queue = self.ctx.queue().clone();
        if self.config.gradient_accumulation_steps().is_some() {
            // Saved at an update step: the accumulator was empty.
            let mut encoder =
                self.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("checkpoint: clear the accumulator"),
                    });
            for chunk in &self.gpu.chunks {
                encoder.clear_buffer(chunk.buffer(Kind::Accumulator)?, 0, None);
            }
            queue.submit([encoder.finish()]);
        }
        for (i, v) in self.layout.variables.iter().enumerate() {
            let mut writes: Vec<(Kind, &[u8])> = Vec::new();
            // The copy follows the restored variable (it is not saved: it is derived), rounded.
            let mut copy = None;
            if let Some(x) = &restored.variables[i] {
                writes.push((Kind::Variable, x));
                if let Some(c) = v.storage.copy {
                    let mut values = Vec::with_capacity(v.len);
                    crate::dtype::decode(x, v.storage.variable, v.len, &mut values);
                    copy = Some(crate::dtype::encode(&values, c).into_owned());
                }
            }
            if let Some(c) = &copy {
                writes.push((Kind::Copy, c));
            }
            for (slot, values) in slots[i].iter().zip(&restored.slots[i]) {
                writes.push((Kind::from(*slot), values));
            }
            for (kind, values) in writes {
                if kind == Kind::Velocity && v.rowwise {
                    // One f32 per row (the file's shape was checked to be `[rows]`).
                    let at = u64::from(v.rows_base) * 4;
                    if !values.is_empty() {
                        queue.write_buffer(&self.gpu.row_velocity, at, values);
                    }
                    continue;
                }
                // The file's bytes as they are (their type was checked to be the buffer's).
                let layout = self.layout.elems(kind, v.storage);
                let dtype = layout.dtype;
                if dtype == crate::dtype::Dtype::Q8 {
                    // Blocks as the GPU lays them out; every segment starts on a block.
                    for s in &v.segments {
                        let dst = self.gpu.chunks[s.chunk].buffer(kind)?;
                        let from = layout.bytes(s.first_elem) as usize;
                        let part = &values[from..from + layout.bytes(s.elems) as usize];
                        queue.write_buffer(dst, layout.at(s.offset), part);
                    }
                    continue;
                }
                let size = dtype.bytes() as usize;
                for s in &v.segments {
                    let dst = self.gpu.chunks[s.chunk].buffer(kind)?;
                    let part = &values[s.first_elem * size..(s.first_elem + s.elems) * size];
                    let mut bytes = std::borrow::Cow::Borrowed(part);
                    if part.len() % 4 != 0 {
                        // An odd count of 16-bit values: the last word's pad lane is zero.
                        bytes.to_mut().extend_from_slice(&[0, 0]);
                    }
                    queue.write_buffer(dst, layout.at(s.offset), &bytes);
                }
            }
        }
        // SparseMode::LazyExact: the file's rows are up to date (the rows it does not hold were caught
        // up above); every row counter starts again from 0, current.
        self.reset_lazy_counts();
        let status = [0u32, restored.skipped.min(u64::from(u32::MAX)) as u32, 0, 0];
        queue.write_buffer(&self.gpu.status, 0, bytemuck::cast_slice(&status));
        queue.submit([]);
        self.iterations = restored.iterations;
        self.last_lr = None;
        if let Some(f) = restored.loss_scale_factor {
            // The scale when saved (dynamic loss scaling changes it).
            self.config.set_loss_scale_factor(f);
        }
        Ok(())
    }

    /// Every variable's options as they resolve, for checkpoints.
    fn var_options_json(&self) -> serde_json::Value {
        self.var_options_json_of(|_| true)
    }

    /// As [`RmsProp::var_options_json`], with default options for the variables `own` rejects.
    fn var_options_json_of(&self, own: impl Fn(usize) -> bool) -> serde_json::Value {
        let default = crate::VarOptions::default().hyper(&self.config);
        let list: Vec<serde_json::Value> = self
            .layout
            .variables
            .iter()
            .enumerate()
            .map(|(i, v)| match own(i) {
                true => crate::checkpoint::var_options_json(&v.hyper, v.frozen()),
                false => crate::checkpoint::var_options_json(&default, false),
            })
            .collect();
        serde_json::Value::Array(list)
    }

    /// Reads `bytes` of a step buffer (waits for this read's submission).
    fn read_raw(&mut self, which: Raw, bytes: u64) -> Result<Vec<f32>> {
        self.ensure_resolved("read state back")?;
        let buffer = match which {
            Raw::Status => &self.gpu.status,
            Raw::VarInfo => &self.gpu.var_info.buffer,
        };
        let range = Range::words(buffer, bytes);
        let label = format!("{}/read-back", self.config.name());
        let read = ReadBack::start(self.ctx.device(), self.ctx.queue(), &label, &[range], &[1])?;
        Ok(read.wait()?.pop().unwrap_or_default())
    }

    /// Out-of-range or negative indices seen so far in [`crate::Gradient::SparseGpuIndices`] gradients
    /// (they are skipped; counted on the GPU, reading waits for it).
    pub fn invalid_gpu_indices(&mut self) -> Result<u64> {
        let raw = self.read_raw(Raw::Status, 12)?;
        Ok(u64::from(raw[2].to_bits()))
    }

    /// Steps skipped so far by the [`crate::config::NonFinite::SkipStep`] policy (counted on the GPU;
    /// reading waits for it). Always 0 with the default `Propagate` policy.
    pub fn skipped_steps(&mut self) -> Result<u64> {
        let raw = self.read_raw(Raw::Status, 8)?;
        Ok(u64::from(raw[1].to_bits()))
    }

    /// The factor each variable's gradient was scaled by in the last step by `clipnorm` or
    /// `global_clipnorm`, as computed on the GPU (`mul / div` of its clipping state), in variable order.
    /// `None` when the configuration reads no per-variable clipping state. Diagnostic: it waits for the
    /// GPU.
    pub fn last_clip_factors(&mut self) -> Result<Option<Vec<f32>>> {
        let n = self.layout.variables.len();
        if !self.plan_cfg.per_var || n == 0 {
            return Ok(None);
        }
        let raw = self.read_raw(Raw::VarInfo, n as u64 * VAR_INFO_BYTES)?;
        Ok(Some(raw.chunks(4).map(|info| info[0] / info[1]).collect()))
    }
}

/// Step buffers the diagnostics read.
#[derive(Clone, Copy)]
enum Raw {
    Status,
    VarInfo,
}
