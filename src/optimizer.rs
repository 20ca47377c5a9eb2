//! [`RmsProp`]: variables in, dense gradients in, one fused GPU step out.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::RmsPropConfig;
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{self, DenseParams, DenseVariant, DENSE_BINDINGS};
use crate::pool::{self, Chunk, Kind, PoolStats, Segment, Slot, VEC4_BYTES};

static NEXT_OPTIMIZER_ID: AtomicU32 = AtomicU32::new(1);

/// Handle of a variable inside one [`RmsProp`]. A handle from another optimizer is refused with
/// [`Error::UnknownVariable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VarId {
    optimizer: u32,
    index: u32,
}

impl VarId {
    /// Position of the variable in the order it was added.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// A gradient already on the GPU: `len(variable)` f32 values starting at byte `offset` of `buffer`.
///
/// The buffer needs `COPY_SRC` usage and must belong to the optimizer's device; `offset` must be a
/// multiple of 4. The values are copied on the GPU into the optimizer's gradient pool (no host round trip).
#[derive(Debug, Clone, Copy)]
pub struct GpuGradient<'a> {
    /// The caller's buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first value.
    pub offset: u64,
}

/// Tuning knobs; the defaults suit every adapter. The limits here can only lower the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptimizerOptions {
    /// Invocations per workgroup of the dense kernel (each handles one vec4). Default 256.
    pub workgroup_size: u32,
    /// Cap on the bytes of one pooled buffer, below the device's `max_storage_buffer_binding_size` and
    /// `max_buffer_size` (useful to test splitting, or to keep allocations small). Rounded down to 16.
    pub max_chunk_bytes: Option<u64>,
    /// Cap on workgroups per dispatch dimension, below the device's
    /// `max_compute_workgroups_per_dimension` (useful to test folding at small sizes).
    pub max_workgroups_per_dimension: Option<u32>,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        OptimizerOptions {
            workgroup_size: 256,
            max_chunk_bytes: None,
            max_workgroups_per_dimension: None,
        }
    }
}

#[derive(Debug)]
struct Variable {
    name: String,
    shape: Vec<usize>,
    len: usize,
    segments: Vec<Segment>,
}

/// One dispatch of a step: a range of one chunk, and its workgroup grid.
#[derive(Debug, Clone, Copy)]
struct Dispatch {
    chunk: usize,
    begin: u64,
    end: u64,
    groups_x: u32,
    groups_y: u32,
}

/// The RMSprop optimizer (TensorFlow/Keras semantics) with its variables and state on the GPU.
///
/// ```no_run
/// use wgpu_rmsprop::{GpuContext, RmsProp, RmsPropConfig};
/// let ctx = GpuContext::new()?;
/// let cfg = RmsPropConfig::builder().learning_rate(0.1).build()?;
/// let mut opt = RmsProp::new(&ctx, cfg)?;
/// let var1 = opt.add_variable("var1", &[], &[10.0])?;
/// let step = opt.apply_gradients(&[(var1, &[10.0])])?; // loss = var1^2 / 2, so grad = var1
/// assert_eq!(step, 1);
/// let x = opt.read_variable(var1)?;
/// assert!((x[0] - 9.683772).abs() < 1e-6);
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug)]
pub struct RmsProp {
    ctx: GpuContext,
    config: RmsPropConfig,
    id: u32,
    kinds: Vec<Kind>,
    workgroup_size: u32,
    max_groups: u32,
    /// Capacity of one chunk, in vec4.
    chunk_limit: u64,
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
    /// Stand-in bound where a slot is not kept (never read or written by the kernel variant).
    placeholder: wgpu::Buffer,
    uniform: wgpu::Buffer,
    uniform_stride: u64,
    uniform_slots: u64,
    /// Dispatches a step may need at most (sizes `uniform`).
    max_dispatches: u64,
    staging: Option<wgpu::Buffer>,
    variables: Vec<Variable>,
    chunks: Vec<Chunk>,
    iterations: u64,
    // Reused per step, so that steps do not allocate.
    scratch_included: Vec<bool>,
    scratch_dispatches: Vec<Dispatch>,
    scratch_uniform: Vec<u8>,
}

impl RmsProp {
    /// An optimizer with no variables yet, on `ctx`'s device.
    pub fn new(ctx: &GpuContext, config: RmsPropConfig) -> Result<Self> {
        Self::with_options(ctx, config, OptimizerOptions::default())
    }

    /// As [`RmsProp::new`], with tuning options.
    pub fn with_options(
        ctx: &GpuContext,
        config: RmsPropConfig,
        options: OptimizerOptions,
    ) -> Result<Self> {
        ctx.check_alive()?;
        let device = ctx.device();
        let limits = device.limits();
        let wg = options.workgroup_size;
        if wg == 0
            || wg > limits.max_compute_workgroup_size_x
            || wg > limits.max_compute_invocations_per_workgroup
        {
            return Err(Error::InvalidConfig {
                field: "workgroup_size",
                value: wg.to_string(),
                requirement: "must be >= 1 and within the device's max_compute_workgroup_size_x",
            });
        }
        let mut max_groups = limits.max_compute_workgroups_per_dimension;
        if let Some(m) = options.max_workgroups_per_dimension {
            if m == 0 {
                return Err(Error::InvalidConfig {
                    field: "max_workgroups_per_dimension",
                    value: "0".into(),
                    requirement: "must be >= 1",
                });
            }
            max_groups = max_groups.min(m);
        }
        let mut chunk_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(b) = options.max_chunk_bytes {
            chunk_bytes = chunk_bytes.min(b);
        }
        // Vec4 indices are u32 in the kernel: keep a chunk below 2^31 vec4 (32 GiB).
        let chunk_limit = (chunk_bytes / VEC4_BYTES).min(1 << 31);
        if chunk_limit == 0 {
            return Err(Error::InvalidConfig {
                field: "max_chunk_bytes",
                value: chunk_bytes.to_string(),
                requirement: "must be >= 16",
            });
        }

        let prefix = config.name().to_string();
        let mut kinds = vec![Kind::Variable, Kind::Gradient, Kind::Velocity];
        if config.has_momentum() {
            kinds.push(Kind::Momentum);
        }
        if config.centered() {
            kinds.push(Kind::AverageGradient);
        }
        let params_size = std::mem::size_of::<DenseParams>() as u64;
        let layout = kernels::bind_group_layout(
            device,
            &format!("{prefix}/rmsprop_dense bind group layout"),
            &DENSE_BINDINGS,
            params_size,
        );
        let pipeline = kernels::dense_pipeline(
            device,
            &prefix,
            &layout,
            DenseVariant {
                centered: config.centered(),
                momentum: config.has_momentum(),
                workgroup_size: wg,
            },
        )?;
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&format!("{prefix}/absent slot")),
            size: VEC4_BYTES,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let uniform_stride =
            params_size.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let uniform = create_uniform(device, &prefix, uniform_stride, 1);
        Ok(RmsProp {
            ctx: ctx.clone(),
            config,
            id: NEXT_OPTIMIZER_ID.fetch_add(1, Ordering::Relaxed),
            kinds,
            workgroup_size: wg,
            max_groups,
            chunk_limit,
            layout,
            pipeline,
            placeholder,
            uniform,
            uniform_stride,
            uniform_slots: 1,
            max_dispatches: 0,
            staging: None,
            variables: Vec::new(),
            chunks: Vec::new(),
            iterations: 0,
            scratch_included: Vec::new(),
            scratch_dispatches: Vec::new(),
            scratch_uniform: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RmsPropConfig {
        &self.config
    }

    /// The GPU context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Steps applied so far (Keras's `optimizer.iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The learning rate the next step will use.
    pub fn learning_rate(&self) -> f32 {
        self.config.learning_rate().at_step(self.iterations + 1)
    }

    /// Number of variables.
    pub fn num_variables(&self) -> usize {
        self.variables.len()
    }

    /// The slots this configuration keeps: velocity, then momentum (if `momentum > 0`), then
    /// average_gradient (if centered).
    pub fn slots(&self) -> Vec<Slot> {
        let mut s = vec![Slot::Velocity];
        if self.config.has_momentum() {
            s.push(Slot::Momentum);
        }
        if self.config.centered() {
            s.push(Slot::AverageGradient);
        }
        s
    }

    /// Bytes held on the GPU.
    pub fn pool_stats(&self) -> PoolStats {
        PoolStats {
            chunks: self.chunks.len(),
            pool_bytes: self
                .chunks
                .iter()
                .map(|c| c.capacity * VEC4_BYTES * self.kinds.len() as u64)
                .sum(),
            other_bytes: self.uniform.size()
                + self.placeholder.size()
                + self.staging.as_ref().map_or(0, |s| s.size()),
        }
    }

    /// Looks a variable up by name.
    pub fn variable(&self, name: &str) -> Result<VarId> {
        self.variables
            .iter()
            .position(|v| v.name == name)
            .map(|i| VarId {
                optimizer: self.id,
                index: i as u32,
            })
            .ok_or_else(|| Error::UnknownVariable(format!("{name:?}")))
    }

    /// Name and shape of a variable.
    pub fn variable_info(&self, id: VarId) -> Result<(&str, &[usize])> {
        let v = self.var(id)?;
        Ok((&v.name, &v.shape))
    }

    fn var(&self, id: VarId) -> Result<&Variable> {
        if id.optimizer != self.id {
            return Err(Error::UnknownVariable(format!(
                "{id:?} (from another optimizer)"
            )));
        }
        self.variables
            .get(id.index as usize)
            .ok_or_else(|| Error::UnknownVariable(format!("{id:?}")))
    }

    /// Adds a variable with its initial values (row-major, `prod(shape)` of them; `[]` is a scalar) and
    /// zero-initialised slots. Its state is placed in the pools, which grow (on the GPU, copying what they
    /// hold) when full; nothing is allocated by later steps.
    pub fn add_variable(&mut self, name: &str, shape: &[usize], init: &[f32]) -> Result<VarId> {
        self.ctx.check_alive()?;
        if self.variables.iter().any(|v| v.name == name) {
            return Err(Error::DuplicateVariable { name: name.into() });
        }
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| (n as u64) <= u64::from(u32::MAX) * 4)
            .ok_or_else(|| Error::InvalidShape {
                name: name.into(),
                shape: shape.to_vec(),
                reason: "has more elements than the crate can index (2^34)",
            })?;
        if init.len() != len {
            return Err(Error::InitLength {
                name: name.into(),
                shape: shape.to_vec(),
                expected: len,
                got: init.len(),
            });
        }
        if self.variables.len() >= u32::MAX as usize {
            return Err(Error::InvalidShape {
                name: name.into(),
                shape: shape.to_vec(),
                reason: "cannot be added: too many variables",
            });
        }

        // Plan the placement, then allocate everything it needs before changing any state.
        let mut used: Vec<u64> = self.chunks.iter().map(|c| c.used).collect();
        let segments = pool::place(&mut used, self.chunk_limit, len);
        let device = self.ctx.device().clone();
        let prefix = self.config.name().to_string();
        let mut new_buffers = Vec::new();
        for (index, &u) in used.iter().enumerate() {
            let current = self.chunks.get(index).map_or(0, |c| c.capacity);
            if u > current {
                let capacity = pool::grown_capacity(current, u, self.chunk_limit);
                let buffers =
                    pool::allocate_chunk_buffers(&device, &prefix, index, capacity, &self.kinds)?;
                new_buffers.push((index, capacity, buffers));
            }
        }
        let extra_dispatches: u64 = segments
            .iter()
            .map(|s| self.dispatches_for(s.vec4s()))
            .sum();
        let needed_slots = self.max_dispatches + extra_dispatches;
        let new_uniform = (needed_slots > self.uniform_slots).then(|| {
            let slots = needed_slots.max(self.uniform_slots * 2);
            (
                create_uniform(&device, &prefix, self.uniform_stride, slots),
                slots,
            )
        });

        // Commit: copy grown chunks' contents on the GPU, swap buffers, rebuild bind groups.
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&format!("{prefix}/grow pools")),
        });
        let mut rebind = Vec::new();
        for (index, capacity, buffers) in new_buffers {
            if let Some(old) = self.chunks.get_mut(index) {
                for &kind in &self.kinds {
                    if let (Some(src), Some(dst)) =
                        (old.buffer(kind), buffers[kind as usize].as_ref())
                    {
                        encoder.copy_buffer_to_buffer(src, 0, dst, 0, old.used * VEC4_BYTES);
                    }
                }
                old.capacity = capacity;
                old.buffers = buffers;
            } else {
                self.chunks.push(Chunk {
                    capacity,
                    used: 0,
                    buffers,
                    bind_group: None,
                    segments: Vec::new(),
                });
            }
            rebind.push(index);
        }
        self.ctx.queue().submit([encoder.finish()]);
        if let Some((buffer, slots)) = new_uniform {
            self.uniform = buffer;
            self.uniform_slots = slots;
            rebind = (0..self.chunks.len()).collect();
        }
        for index in rebind {
            let bg = self.bind_group(index);
            self.chunks[index].bind_group = Some(bg);
        }
        let var_index = self.variables.len();
        for (chunk, u) in self.chunks.iter_mut().zip(&used) {
            chunk.used = *u;
        }
        for s in &segments {
            self.chunks[s.chunk]
                .segments
                .push((s.offset, s.offset + s.vec4s(), var_index));
            let dst = self.chunks[s.chunk]
                .buffer(Kind::Variable)
                .ok_or_else(missing_buffer)?;
            let values = &init[s.first_elem..s.first_elem + s.elems];
            self.ctx
                .queue()
                .write_buffer(dst, s.byte_offset(), bytemuck::cast_slice(values));
        }
        self.max_dispatches = needed_slots;
        self.variables.push(Variable {
            name: name.into(),
            shape: shape.to_vec(),
            len,
            segments,
        });
        log::debug!("{prefix}: added variable {name:?} {shape:?} ({len} elements)");
        Ok(VarId {
            optimizer: self.id,
            index: var_index as u32,
        })
    }

    /// Dispatches needed for a range of `vec4s` (more than one only past `max_groups^2` workgroups).
    fn dispatches_for(&self, vec4s: u64) -> u64 {
        vec4s.div_ceil(self.per_dispatch_limit()).max(1)
    }

    fn per_dispatch_limit(&self) -> u64 {
        u64::from(self.max_groups) * u64::from(self.max_groups) * u64::from(self.workgroup_size)
    }

    fn bind_group(&self, index: usize) -> wgpu::BindGroup {
        let chunk = &self.chunks[index];
        let storage = |kind: Kind| {
            chunk
                .buffer(kind)
                .unwrap_or(&self.placeholder)
                .as_entire_binding()
        };
        let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.uniform,
            offset: 0,
            size: wgpu::BufferSize::new(std::mem::size_of::<DenseParams>() as u64),
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform,
        }];
        for kind in Kind::ALL {
            entries.push(wgpu::BindGroupEntry {
                binding: kind as u32 + 1,
                resource: storage(kind),
            });
        }
        self.ctx
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&format!("{}/rmsprop_dense[{index}]", self.config.name())),
                layout: &self.layout,
                entries: &entries,
            })
    }

    /// Checks a step's variable list: known handles, no variable twice, `len` matching. Marks the
    /// variables in `scratch_included`.
    fn validate_step<T>(
        &mut self,
        grads: &[(VarId, T)],
        len_of: impl Fn(&T) -> Option<usize>,
    ) -> Result<()> {
        self.ctx.check_alive()?;
        self.scratch_included.clear();
        self.scratch_included.resize(self.variables.len(), false);
        for (id, g) in grads {
            let v = self.var(*id)?;
            if let Some(got) = len_of(g).filter(|&got| got != v.len) {
                return Err(Error::GradientLength {
                    name: v.name.clone(),
                    expected: v.len,
                    got,
                });
            }
            if self.scratch_included[id.index as usize] {
                return Err(Error::DuplicateGradient {
                    name: v.name.clone(),
                });
            }
            self.scratch_included[id.index as usize] = true;
        }
        Ok(())
    }

    /// Applies one step of dense gradients given as host slices, one per variable listed (variables not
    /// listed are left untouched, as in Keras's `apply_gradients`). Returns the new step count.
    ///
    /// Everything is checked before anything is written: on error no variable, slot or counter changes.
    pub fn apply_gradients(&mut self, grads: &[(VarId, &[f32])]) -> Result<u64> {
        self.validate_step(grads, |g| Some(g.len()))?;
        for (id, g) in grads {
            let v = &self.variables[id.index as usize];
            for s in &v.segments {
                let dst = self.chunks[s.chunk]
                    .buffer(Kind::Gradient)
                    .ok_or_else(missing_buffer)?;
                let values = &g[s.first_elem..s.first_elem + s.elems];
                self.ctx
                    .queue()
                    .write_buffer(dst, s.byte_offset(), bytemuck::cast_slice(values));
            }
        }
        let mut encoder = self.encoder("step");
        self.encode_update(&mut encoder)?;
        self.ctx.queue().submit([encoder.finish()]);
        Ok(self.iterations)
    }

    /// Applies one step of dense gradients that are already on the GPU (see [`GpuGradient`]). The values
    /// are copied GPU-to-GPU into the gradient pool in the same submission as the update.
    pub fn apply_gpu_gradients(&mut self, grads: &[(VarId, GpuGradient<'_>)]) -> Result<u64> {
        self.validate_step(grads, |_| None)?;
        for (id, g) in grads {
            let v = &self.variables[id.index as usize];
            let reason = if !g.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                Some(format!("usage {:?} lacks COPY_SRC", g.buffer.usage()))
            } else if g.offset % 4 != 0 {
                Some(format!("offset {} is not a multiple of 4", g.offset))
            } else if g
                .offset
                .checked_add(v.len as u64 * 4)
                .is_none_or(|end| end > g.buffer.size())
            {
                Some(format!(
                    "offset {} + {} values x 4 bytes exceeds the buffer's {} bytes",
                    g.offset,
                    v.len,
                    g.buffer.size()
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::GradientBuffer {
                    name: v.name.clone(),
                    reason,
                });
            }
        }
        let mut encoder = self.encoder("step (gpu gradients)");
        for (id, g) in grads {
            let v = &self.variables[id.index as usize];
            for s in &v.segments {
                let dst = self.chunks[s.chunk]
                    .buffer(Kind::Gradient)
                    .ok_or_else(missing_buffer)?;
                encoder.copy_buffer_to_buffer(
                    g.buffer,
                    g.offset + s.first_elem as u64 * 4,
                    dst,
                    s.byte_offset(),
                    s.elems as u64 * 4,
                );
            }
        }
        self.encode_update(&mut encoder)?;
        self.ctx.queue().submit([encoder.finish()]);
        Ok(self.iterations)
    }

    fn encoder(&self, what: &str) -> wgpu::CommandEncoder {
        self.ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&format!("{}/{what}", self.config.name())),
            })
    }

    /// Plans the dispatches over the variables marked in `scratch_included`, writes their uniforms and
    /// records one compute pass. Advances the step counter.
    fn encode_update(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let step = self.iterations + 1;
        let s = self.config.scalars(step);
        self.plan_dispatches();
        if self.scratch_dispatches.len() as u64 > self.uniform_slots {
            return Err(Error::Gpu(format!(
                "internal: {} dispatches planned for {} uniform slots",
                self.scratch_dispatches.len(),
                self.uniform_slots
            )));
        }
        self.scratch_uniform.clear();
        for d in &self.scratch_dispatches {
            let p = DenseParams {
                lr: s.lr,
                rho: s.rho,
                one_minus_rho: s.one_minus_rho,
                momentum: s.momentum,
                epsilon: s.epsilon,
                step: step as u32,
                begin: d.begin as u32,
                end: d.end as u32,
                groups_x: d.groups_x,
                pad: [0; 3],
            };
            self.scratch_uniform
                .extend_from_slice(bytemuck::bytes_of(&p));
            self.scratch_uniform.resize(
                self.scratch_uniform
                    .len()
                    .next_multiple_of(self.uniform_stride as usize),
                0,
            );
        }
        if !self.scratch_uniform.is_empty() {
            self.ctx
                .queue()
                .write_buffer(&self.uniform, 0, &self.scratch_uniform);
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("rmsprop_dense"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            for (slot, d) in self.scratch_dispatches.iter().enumerate() {
                let bg = self.chunks[d.chunk]
                    .bind_group
                    .as_ref()
                    .ok_or_else(missing_buffer)?;
                pass.set_bind_group(0, bg, &[(slot as u64 * self.uniform_stride) as u32]);
                pass.dispatch_workgroups(d.groups_x, d.groups_y, 1);
            }
        }
        self.iterations = step;
        Ok(())
    }

    /// Fills `scratch_dispatches`: per chunk, maximal runs of adjacent included segments, each split so
    /// that its folded grid stays within `max_groups` per dimension.
    fn plan_dispatches(&mut self) {
        self.scratch_dispatches.clear();
        let wg = u64::from(self.workgroup_size);
        let max_groups = u64::from(self.max_groups);
        let per_dispatch = self.per_dispatch_limit();
        for (ci, chunk) in self.chunks.iter().enumerate() {
            let mut run: Option<(u64, u64)> = None;
            let flush = |run: (u64, u64), out: &mut Vec<Dispatch>| {
                let mut begin = run.0;
                while begin < run.1 {
                    let end = run.1.min(begin + per_dispatch);
                    let groups = (end - begin).div_ceil(wg);
                    let groups_x = groups.min(max_groups);
                    out.push(Dispatch {
                        chunk: ci,
                        begin,
                        end,
                        groups_x: groups_x as u32,
                        groups_y: groups.div_ceil(groups_x) as u32,
                    });
                    begin = end;
                }
            };
            for &(begin, end, var) in &chunk.segments {
                if !self.scratch_included[var] {
                    continue;
                }
                run = match run {
                    Some((b, e)) if e == begin => Some((b, end)),
                    Some(r) => {
                        flush(r, &mut self.scratch_dispatches);
                        Some((begin, end))
                    }
                    None => Some((begin, end)),
                };
            }
            if let Some(r) = run {
                flush(r, &mut self.scratch_dispatches);
            }
        }
    }

    /// Number of dispatches the last step recorded.
    pub fn last_step_dispatches(&self) -> usize {
        self.scratch_dispatches.len()
    }

    /// Reads a variable back to the host (waits for the GPU).
    pub fn read_variable(&mut self, id: VarId) -> Result<Vec<f32>> {
        self.read(id, Kind::Variable)
    }

    /// Reads a slot of a variable back to the host (waits for the GPU). A slot this configuration does
    /// not keep is [`Error::SlotNotPresent`].
    pub fn read_slot(&mut self, id: VarId, slot: Slot) -> Result<Vec<f32>> {
        let kind = Kind::from(slot);
        if !self.kinds.contains(&kind) {
            return Err(Error::SlotNotPresent {
                slot: slot.name(),
                why: match slot {
                    Slot::Momentum => "it needs momentum > 0",
                    Slot::AverageGradient => "it needs centered = true",
                    Slot::Velocity => "internal",
                },
            });
        }
        self.read(id, kind)
    }

    fn read(&mut self, id: VarId, kind: Kind) -> Result<Vec<f32>> {
        self.ctx.check_alive()?;
        let len = self.var(id)?.len;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = len as u64 * 4;
        if self.staging.as_ref().is_none_or(|s| s.size() < bytes) {
            let size = bytes.next_multiple_of(VEC4_BYTES);
            let device = self.ctx.device();
            let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{}/staging", self.config.name())),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if let Some(e) = pollster::block_on(oom.pop()) {
                return Err(Error::Allocation {
                    what: "staging buffer".into(),
                    bytes: size,
                    message: e.to_string(),
                });
            }
            self.staging = Some(buffer);
        }
        let staging = self.staging.as_ref().ok_or_else(missing_buffer)?;
        let mut encoder = self.encoder("read back");
        for s in &self.variables[id.index as usize].segments {
            let src = self.chunks[s.chunk]
                .buffer(kind)
                .ok_or_else(missing_buffer)?;
            encoder.copy_buffer_to_buffer(
                src,
                s.byte_offset(),
                staging,
                s.first_elem as u64 * 4,
                s.elems as u64 * 4,
            );
        }
        self.ctx.queue().submit([encoder.finish()]);
        let slice = staging.slice(0..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait_idle()?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.ctx.check_alive()?;
        Ok(out)
    }
}

fn create_uniform(device: &wgpu::Device, prefix: &str, stride: u64, slots: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&format!("{prefix}/step uniforms")),
        size: stride * slots.max(1),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn missing_buffer() -> Error {
    Error::Gpu("internal: a pooled buffer is missing".into())
}
