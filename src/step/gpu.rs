//! The optimizer's GPU objects: pipelines, pool buffers, the step's growable buffers and the bind groups
//! over them. Growth is capped by the device's binding limits, so a step that would need more is refused
//! before anything is encoded and never leaves an unusable binding behind.

use crate::context::create_buffer_checked;
use crate::dtype::{Dtype, StorageTypes};
use crate::error::{Error, Result};
use crate::kernels::{self, binding, Kernel, Params, ParamsMode, VAR_INFO_BYTES};
use crate::pool::{self, Kind, VEC4_BYTES};
use crate::step::plan::Which;

/// Every kernel of a step, by the [`Which`] that selects it.
pub(crate) const KERNELS: [(Which, Kernel); 24] = [
    (Which::Dense, kernels::DENSE),
    (Which::DenseAt, kernels::DENSE_AT),
    (Which::Lazy, kernels::LAZY),
    (Which::LazyQ8, kernels::LAZY_Q8),
    (Which::LazyExact, kernels::LAZY_EXACT),
    (Which::CatchUp, kernels::CATCH_UP),
    (Which::StampListed, kernels::STAMP_LISTED),
    (Which::StampAll, kernels::STAMP_ALL),
    (Which::CatchUpRows, kernels::CATCH_UP_ROWS),
    (Which::StampRows, kernels::STAMP_ROWS),
    (Which::ResetRows, kernels::RESET_ROWS),
    (Which::Bump, kernels::BUMP),
    (Which::Scatter, kernels::SCATTER),
    (Which::PartialDense, kernels::PARTIAL_DENSE),
    (Which::Prepare, kernels::PREPARE),
    (Which::Ema, kernels::EMA),
    (Which::RowsDense, kernels::ROWS_DENSE),
    (Which::RowsLazy, kernels::ROWS_LAZY),
    (Which::PartialSparse, kernels::PARTIAL_SPARSE),
    (Which::Finalize, kernels::FINALIZE),
    (Which::GroupLink, kernels::GROUP_LINK),
    (Which::GroupGather, kernels::GROUP_GATHER),
    (Which::GroupReset, kernels::GROUP_RESET),
    (Which::PrepareValues, kernels::PREPARE_VALUES),
];
/// Kernels from this index on bind step-wide buffers only (one bind group each, not one per chunk).
pub(crate) const FIRST_GLOBAL_KERNEL: usize = 18;

impl Gpu {
    /// The uniform path's parameters of `dispatches` into `out`: one slot per dispatch, copied in before
    /// their pass so that each recording reads its own (empty with immediates).
    pub fn uniform_slots(&self, dispatches: &[crate::step::plan::Dispatch], out: &mut Vec<u8>) {
        out.clear();
        if self.mode == ParamsMode::Uniform {
            let stride = self.uniform_stride as usize;
            for d in dispatches {
                out.extend_from_slice(bytemuck::bytes_of(&d.params));
                out.resize(out.len().next_multiple_of(stride), 0);
            }
        }
    }
}

/// A growable storage buffer of the step machinery (allocated when it must grow, reused otherwise).
#[derive(Debug)]
pub(crate) struct StepBuffer {
    pub buffer: wgpu::Buffer,
    usage: wgpu::BufferUsages,
    label: String,
}

impl StepBuffer {
    fn new(device: &wgpu::Device, label: String, usage: wgpu::BufferUsages, size: u64) -> Self {
        StepBuffer {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&label),
                size: size.max(16).next_multiple_of(16),
                usage,
                mapped_at_creation: false,
            }),
            usage,
            label,
        }
    }

    /// Checks that `size` bytes fit one binding of at most `limit` bytes (in whole vec4s).
    fn check(&self, size: u64, limit: u64) -> Result<()> {
        if size.next_multiple_of(16) > limit & !15 {
            return Err(Error::StepTooLarge {
                buffer: self.label.clone(),
                bytes: size,
                limit,
            });
        }
        Ok(())
    }

    /// A replacement with room for `size` bytes (at most `limit`, checked before), or `None` when the
    /// buffer is large enough. Doubling stops at `limit` (rounded down to 16, so the buffer can always be
    /// bound whole). Fails when the device cannot allocate; nothing is replaced here.
    fn grown(&self, device: &wgpu::Device, size: u64, limit: u64) -> Result<Option<wgpu::Buffer>> {
        if size <= self.buffer.size() {
            return Ok(None);
        }
        let size = size
            .max(self.buffer.size().saturating_mul(2))
            .min(limit & !15)
            .max(size.next_multiple_of(16));
        create_buffer_checked(
            device,
            &wgpu::BufferDescriptor {
                label: Some(&self.label),
                size,
                usage: self.usage,
                mapped_at_creation: false,
            },
        )
        .map(Some)
    }
}

/// The buffers of one pool chunk (one per kept kind) and the bind groups over them.
#[derive(Debug)]
pub(crate) struct ChunkBuffers {
    /// One buffer per [`Kind`] (by its index); `None` for kinds this configuration does not keep.
    pub buffers: [Option<wgpu::Buffer>; crate::pool::KINDS],
    /// The storage types of its buffers.
    pub storage: StorageTypes,
    /// Bind groups of the per-chunk kernels (dense, dense_at, lazy, lazy_q8, the lazy-exact ones,
    /// scatter, partial_dense, prepare, ema, the row-wise ones).
    pub bind_groups: Vec<wgpu::BindGroup>,
}

impl ChunkBuffers {
    pub fn buffer(&self, kind: Kind) -> Result<&wgpu::Buffer> {
        self.buffers[kind as usize]
            .as_ref()
            .ok_or_else(missing_buffer)
    }
}

/// Bytes a step needs in each growable buffer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepSizes {
    pub uniform: u64,
    pub jobs: u64,
    pub partials: u64,
    pub sparse_values: u64,
    pub sparse_index: u64,
    pub gpu_indices: u64,
    pub next: u64,
    pub heads: u64,
    pub var_info: u64,
    pub var_step: u64,
}

impl StepSizes {
    /// The sizes in the order of [`Gpu::step_buffers`].
    fn in_order(&self) -> [u64; STEP_BUFFERS] {
        [
            self.uniform,
            self.jobs,
            self.partials,
            self.sparse_values,
            self.sparse_index,
            self.gpu_indices,
            self.next,
            self.heads,
            self.var_info,
            self.var_step,
        ]
    }
}

/// The growable step buffers, and the positions in [`Gpu::step_buffers`] of those whose contents the
/// host caches (their replacement is reported by [`Regrown`]).
const STEP_BUFFERS: usize = 10;
const JOBS: usize = 1;
const HEADS: usize = 7;
const VAR_STEP: usize = 9;

/// What [`Gpu::reserve`] replaced (their contents are gone).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Regrown {
    pub jobs: bool,
    pub var_step: bool,
    pub heads: bool,
}

/// The GPU side of one optimizer.
#[derive(Debug)]
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub mode: ParamsMode,
    prefix: String,
    /// The pooled kinds every chunk holds.
    pub kinds: Vec<Kind>,
    layouts: Vec<wgpu::BindGroupLayout>,
    pipelines: Pipelines,
    /// The pools keep a 16-bit copy of the variables (bound by the kernels that write them).
    copy: bool,
    /// Vec4 per block of 8-bit quantized state (`RmsPropConfig::q8_block` / 4).
    pub q8_block: u64,
    /// The dense kernels bind the maps of 8-bit quantized state (`q8_maps`).
    pub q8: bool,
    /// `SparseMode::LazyExact`: the lazy-exact kernels are built and bind `lazy_rows`.
    pub exact: bool,
    /// Per variable of a lazy-exact configuration its step count, then its rows' (binding 22; see
    /// `rmsprop_lazy_exact.wgsl`). Grows when variables are added, never in a step.
    pub lazy_rows: wgpu::Buffer,
    /// The row-wise velocity of variables that keep one (`VarOptions::rowwise_velocity`; binding 23,
    /// one f32 per row from each variable's `rows_base`). Grows when variables are added.
    pub row_velocity: wgpu::Buffer,
    /// Those maps: the unsigned one, then the signed one (`crate::quant::map_bits`).
    q8_maps: wgpu::Buffer,
    /// The dense kernel binds Keras's moving average of the variables and can update it in the step's
    /// dispatch (`Params::ema_mode`).
    pub ema: bool,
    /// Stand-ins bound where a pooled kind is not kept, one per kind so that no two bindings of a
    /// dispatch alias (never read or written by the kernel variant).
    placeholders: Vec<wgpu::Buffer>,
    pub chunks: Vec<ChunkBuffers>,
    pub uniform: StepBuffer,
    pub uniform_stride: u64,
    pub var_info: StepBuffer,
    pub var_step: StepBuffer,
    pub jobs: StepBuffer,
    partials: StepBuffer,
    pub sparse_values: StepBuffer,
    pub sparse_index: StepBuffer,
    pub gpu_indices: StepBuffer,
    pub heads: StepBuffer,
    next: StepBuffer,
    /// (skip this step, steps skipped so far, invalid GPU indices seen), written on the GPU.
    pub status: wgpu::Buffer,
    pub global_bind_groups: Vec<wgpu::BindGroup>,
    /// Largest storage binding (the device's `max_storage_buffer_binding_size`, within `max_buffer_size`).
    pub binding_limit: u64,
    /// Largest uniform buffer: one `Params` slot is bound at a dynamic (u32) offset, so the buffer may be
    /// as large as `max_buffer_size` allows.
    uniform_limit: u64,
    /// GPU buffers and bind groups created so far (for the no-allocation-per-step check).
    pub objects_created: u64,
}

impl Gpu {
    /// Pipelines and empty step buffers for `kinds`, with `constants` as the kernels' overrides.
    pub fn new(
        device: &wgpu::Device,
        prefix: &str,
        mode: ParamsMode,
        kinds: Vec<Kind>,
        constants: &[(&'static str, f64)],
        (q8, exact): (bool, bool),
    ) -> Result<Self> {
        let limits = device.limits();
        // The 16-bit copy of the variables is bound by the kernels that write them; Keras's moving
        // average by the dense kernel where the device has a binding to spare (else its own dispatch).
        let copy = kinds.contains(&Kind::Copy);
        let needed = 8 + u32::from(copy) + u32::from(q8) + 1;
        let ema =
            kinds.contains(&Kind::Ema) && limits.max_storage_buffers_per_shader_stage >= needed;
        let layouts: Vec<wgpu::BindGroupLayout> = KERNELS
            .iter()
            .map(|(_, k)| {
                let label = format!("{prefix}/{} bind group layout", k.name);
                kernels::bind_group_layout(device, &label, k, mode, (copy, ema, q8, exact))
            })
            .collect();
        let pipelines = Pipelines {
            f32: build_pipelines(
                device,
                prefix,
                mode,
                &layouts,
                constants,
                (StorageTypes::default(), ema, exact),
            )?,
            typed: Vec::new(),
            constants: constants.to_vec(),
        };
        let placeholders = Kind::ALL
            .iter()
            .map(|k| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{prefix}/absent {k:?}")),
                    size: VEC4_BYTES,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let params_size = std::mem::size_of::<Params>() as u64;
        let uniform_stride =
            params_size.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let mk = |name: &str, usage, size| {
            StepBuffer::new(device, format!("{prefix}/{name}"), usage, size)
        };
        let mut gpu = Gpu {
            device: device.clone(),
            mode,
            prefix: prefix.to_string(),
            kinds,
            layouts,
            pipelines,
            copy,
            q8_block: 64,
            q8,
            exact,
            lazy_rows: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{prefix}/lazy rows")),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            row_velocity: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{prefix}/row velocity")),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            q8_maps: {
                use wgpu::util::DeviceExt;
                let maps = crate::pool_q8::maps_buffer();
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(&format!("{prefix}/q8 maps")),
                    contents: bytemuck::cast_slice(&maps),
                    usage: wgpu::BufferUsages::STORAGE,
                })
            },
            ema,
            placeholders,
            chunks: Vec::new(),
            uniform: mk(
                "step uniforms",
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                uniform_stride * 4,
            ),
            uniform_stride,
            var_info: mk(
                "var_info",
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                VAR_INFO_BYTES,
            ),
            var_step: mk("var_step", storage, 16),
            jobs: mk("norm jobs", storage, 16),
            partials: mk("norm partials", wgpu::BufferUsages::STORAGE, 16),
            status: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{prefix}/non-finite status")),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            sparse_values: mk("sparse values", storage, 4096),
            sparse_index: mk("sparse indices", storage, 4096),
            gpu_indices: mk("gpu sparse indices", storage, 16),
            heads: mk("sparse row heads", storage, 16),
            next: mk("sparse links", wgpu::BufferUsages::STORAGE, 16),
            global_bind_groups: Vec::new(),
            binding_limit: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            uniform_limit: limits.max_buffer_size.min(u64::from(u32::MAX)),
            objects_created: 0,
        };
        gpu.rebuild_bind_groups();
        Ok(gpu)
    }

    /// The growable step buffers, in one fixed order (that of [`StepSizes::in_order`]; the uniform
    /// buffer first, whose limit differs).
    fn step_buffers(&self) -> [&StepBuffer; STEP_BUFFERS] {
        [
            &self.uniform,
            &self.jobs,
            &self.partials,
            &self.sparse_values,
            &self.sparse_index,
            &self.gpu_indices,
            &self.next,
            &self.heads,
            &self.var_info,
            &self.var_step,
        ]
    }

    /// [`Gpu::step_buffers`], to replace them.
    fn step_buffers_mut(&mut self) -> [&mut StepBuffer; STEP_BUFFERS] {
        [
            &mut self.uniform,
            &mut self.jobs,
            &mut self.partials,
            &mut self.sparse_values,
            &mut self.sparse_index,
            &mut self.gpu_indices,
            &mut self.next,
            &mut self.heads,
            &mut self.var_info,
            &mut self.var_step,
        ]
    }

    /// The binding limit of step buffer `i`.
    fn limit(&self, i: usize) -> u64 {
        if i == 0 {
            self.uniform_limit
        } else {
            self.binding_limit
        }
    }

    /// Bytes held by the step machinery (everything but the pools).
    pub fn other_bytes(&self) -> u64 {
        self.step_buffers()
            .iter()
            .map(|b| b.buffer.size())
            .sum::<u64>()
            + self.status.size()
            + self.placeholders.iter().map(|p| p.size()).sum::<u64>()
    }

    /// Allocates the buffers of `kinds` for a chunk of `capacity` vec4 in `storage`'s types (not yet
    /// installed); a chunk of variables with a row-wise velocity (`rowwise`) keeps no velocity buffer.
    pub fn allocate_chunk(
        &mut self,
        index: usize,
        capacity: u64,
        kinds: &[Kind],
        (storage, rowwise): (StorageTypes, bool),
    ) -> Result<[Option<wgpu::Buffer>; crate::pool::KINDS]> {
        let kinds: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|&k| !(rowwise && k == Kind::Velocity))
            .collect();
        let kinds = &kinds[..];
        let b = pool::allocate_chunk_buffers(
            &self.device,
            &self.prefix,
            index,
            capacity,
            kinds,
            storage,
            self.q8_block,
        )?;
        self.objects_created += kinds.len() as u64;
        Ok(b)
    }

    /// Every kernel's pipeline built with `constants`, for f32 pools and for each other storage in use
    /// (installed by [`Gpu::set_pipelines`]).
    pub fn build_pipelines(&self, constants: &[(&'static str, f64)]) -> Result<Pipelines> {
        let build = |storage| self.build_for(storage, constants);
        let mut typed = Vec::with_capacity(self.pipelines.typed.len());
        for (storage, _) in &self.pipelines.typed {
            typed.push((*storage, build(*storage)?));
        }
        Ok(Pipelines {
            f32: build(StorageTypes::default())?,
            typed,
            constants: constants.to_vec(),
        })
    }

    /// Installs pipelines from [`Gpu::build_pipelines`] (same bind group layouts: the bind groups stay).
    pub fn set_pipelines(&mut self, pipelines: Pipelines) {
        self.pipelines = pipelines;
    }

    /// The pipelines of pools in `storage` built with `constants` (`None` for the current constants),
    /// when there are none for it yet (before a chunk of that storage is created): installed by
    /// [`Gpu::add_storage`]. Changes nothing.
    pub fn build_storage(
        &self,
        storage: StorageTypes,
        constants: Option<&[(&'static str, f64)]>,
    ) -> Result<Option<(StorageTypes, Vec<wgpu::ComputePipeline>)>> {
        if storage.is_f32() || self.pipelines.typed.iter().any(|(s, _)| *s == storage) {
            return Ok(None);
        }
        let constants = constants.unwrap_or(&self.pipelines.constants);
        Ok(Some((storage, self.build_for(storage, constants)?)))
    }

    /// [`build_pipelines`] for this device, mode and layouts.
    fn build_for(
        &self,
        storage: StorageTypes,
        constants: &[(&'static str, f64)],
    ) -> Result<Vec<wgpu::ComputePipeline>> {
        build_pipelines(
            &self.device,
            &self.prefix,
            self.mode,
            &self.layouts,
            constants,
            (storage, self.ema, self.exact),
        )
    }

    /// Installs pipelines from [`Gpu::build_storage`] (after [`Gpu::set_pipelines`] when both change).
    pub fn add_storage(&mut self, built: Option<(StorageTypes, Vec<wgpu::ComputePipeline>)>) {
        self.pipelines.typed.extend(built);
    }

    /// The pipeline of kernel `k` (an index into [`KERNELS`]) for pools in `storage`.
    pub fn pipeline(&self, k: usize, storage: StorageTypes) -> &wgpu::ComputePipeline {
        self.pipelines
            .typed
            .iter()
            .find(|(s, _)| *s == storage && k < FIRST_GLOBAL_KERNEL)
            .map_or(&self.pipelines.f32[k], |(_, p)| &p[k])
    }

    /// Adds the buffers of newly kept kinds (fresh, zeroed) to existing chunks, `(chunk, buffers)` from
    /// [`Gpu::allocate_chunk`], and keeps `kinds` from now on. Bind groups are rebuilt by the caller.
    pub fn add_kinds(
        &mut self,
        kinds: Vec<Kind>,
        buffers: Vec<(usize, [Option<wgpu::Buffer>; crate::pool::KINDS])>,
    ) {
        for (index, new) in buffers {
            if let Some(chunk) = self.chunks.get_mut(index) {
                for (slot, b) in chunk.buffers.iter_mut().zip(new) {
                    if slot.is_none() {
                        *slot = b;
                    }
                }
            }
        }
        self.kinds = kinds;
    }

    /// Installs chunk `index`'s new buffers (in `storage`'s types), copying `used_vec4` of the old ones
    /// on the GPU first.
    pub fn install_chunk(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        index: usize,
        buffers: [Option<wgpu::Buffer>; crate::pool::KINDS],
        used_vec4: u64,
        storage: StorageTypes,
    ) {
        if let Some(old) = self.chunks.get_mut(index) {
            for (kind, (src, dst)) in Kind::ALL.iter().zip(old.buffers.iter().zip(&buffers)) {
                if let (Some(src), Some(dst)) = (src, dst) {
                    if used_vec4 > 0 {
                        let elems = pool::Elems {
                            dtype: kind.dtype(storage),
                            block: self.q8_block,
                        };
                        let bytes = elems.span(used_vec4);
                        encoder.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
                    }
                }
            }
            old.buffers = buffers;
        } else {
            self.chunks.push(ChunkBuffers {
                buffers,
                bind_groups: Vec::new(),
                storage,
            });
        }
    }

    /// Checks that a step's buffers fit the device's bindings, changing nothing.
    pub fn check(&self, s: &StepSizes) -> Result<()> {
        let needs = s.in_order();
        for (i, b) in self.step_buffers().iter().enumerate() {
            b.check(needs[i], self.limit(i))?;
        }
        Ok(())
    }

    /// Grows the step buffers to `s` (checked with [`Gpu::check`] first), then rebinds if any grew. All
    /// replacements are allocated before any is installed: a failed allocation changes nothing.
    pub fn reserve(&mut self, s: &StepSizes) -> Result<Regrown> {
        self.check(s)?;
        let needs = s.in_order();
        let mut new: [Option<wgpu::Buffer>; STEP_BUFFERS] = Default::default();
        for (i, b) in self.step_buffers().iter().enumerate() {
            new[i] = b.grown(&self.device, needs[i], self.limit(i))?;
        }
        let r = Regrown {
            jobs: new[JOBS].is_some(),
            var_step: new[VAR_STEP].is_some(),
            heads: new[HEADS].is_some(),
        };
        if new.iter().all(Option::is_none) {
            return Ok(r);
        }
        let mut created = 0;
        for (slot, buffer) in self.step_buffers_mut().into_iter().zip(new) {
            if let Some(buffer) = buffer {
                slot.buffer = buffer;
                created += 1;
            }
        }
        self.objects_created += created;
        self.rebuild_bind_groups();
        Ok(r)
    }

    /// Recreates every bind group (after a buffer was replaced; never in a steady-state step).
    pub fn rebuild_bind_groups(&mut self) {
        self.objects_created +=
            (self.chunks.len() * FIRST_GLOBAL_KERNEL + KERNELS.len() - FIRST_GLOBAL_KERNEL) as u64;
        let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.uniform.buffer,
            offset: 0,
            size: wgpu::BufferSize::new(std::mem::size_of::<Params>() as u64),
        });
        let global = |b: u32| -> Option<&wgpu::Buffer> {
            Some(match b {
                binding::VAR_INFO | binding::VAR_INFO_OUT => &self.var_info.buffer,
                binding::VALUES => &self.sparse_values.buffer,
                binding::INDEX => &self.sparse_index.buffer,
                binding::JOBS => &self.jobs.buffer,
                binding::PARTIALS => &self.partials.buffer,
                binding::VAR_STEP => &self.var_step.buffer,
                binding::STATUS => &self.status,
                binding::GIDX => &self.gpu_indices.buffer,
                binding::HEADS => &self.heads.buffer,
                binding::NEXT => &self.next.buffer,
                binding::Q8_MAPS => &self.q8_maps,
                binding::LAZY_ROWS => &self.lazy_rows,
                binding::ROW_VELOCITY => &self.row_velocity,
                _ => return None,
            })
        };
        let make = |k: usize, chunk: Option<&ChunkBuffers>, label: String| {
            let entries: Vec<wgpu::BindGroupEntry> = kernels::bindings_with(
                &KERNELS[k].1,
                self.mode,
                (self.copy, self.ema, self.q8, self.exact),
            )
            .map(|(b, _)| wgpu::BindGroupEntry {
                binding: b,
                resource: if b == binding::PARAMS {
                    uniform.clone()
                } else {
                    let pooled = Kind::ALL
                        .iter()
                        .find(|kind| kind.binding() == b)
                        .map(|&kind| {
                            chunk
                                .and_then(|c| c.buffers[kind as usize].as_ref())
                                .unwrap_or(&self.placeholders[kind as usize])
                        });
                    pooled
                        .or_else(|| global(b))
                        .unwrap_or(&self.placeholders[0])
                        .as_entire_binding()
                },
            })
            .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &self.layouts[k],
                entries: &entries,
            })
        };
        let prefix = &self.prefix;
        let per_chunk: Vec<Vec<wgpu::BindGroup>> = self
            .chunks
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                (0..FIRST_GLOBAL_KERNEL)
                    .map(|k| make(k, Some(c), format!("{prefix}/{}[{ci}]", KERNELS[k].1.name)))
                    .collect()
            })
            .collect();
        let global_groups = (FIRST_GLOBAL_KERNEL..KERNELS.len())
            .map(|k| make(k, None, format!("{prefix}/{}", KERNELS[k].1.name)))
            .collect();
        self.global_bind_groups = global_groups;
        for (c, bgs) in self.chunks.iter_mut().zip(per_chunk) {
            c.bind_groups = bgs;
        }
    }
}

#[path = "gpu_side.rs"]
mod side;

/// The pipelines of every kernel for f32 pools, and of the per-chunk kernels for each other storage in
/// use (the step-wide kernels do not bind the pools).
#[derive(Debug)]
pub(crate) struct Pipelines {
    f32: Vec<wgpu::ComputePipeline>,
    typed: Vec<(StorageTypes, Vec<wgpu::ComputePipeline>)>,
    constants: Vec<(&'static str, f64)>,
}

/// The pipelines of the kernels for pools in `storage`: every kernel for f32, the per-chunk kernels
/// that bind the pools otherwise (the f32 list is used for the rest).
fn build_pipelines(
    device: &wgpu::Device,
    prefix: &str,
    mode: ParamsMode,
    layouts: &[wgpu::BindGroupLayout],
    constants: &[(&'static str, f64)],
    (storage, ema, exact): (StorageTypes, bool, bool),
) -> Result<Vec<wgpu::ComputePipeline>> {
    let count = if storage.is_f32() {
        KERNELS.len()
    } else {
        FIRST_GLOBAL_KERNEL
    };
    let lazy = KERNELS.iter().position(|(w, _)| *w == Which::Lazy);
    let mut built: Vec<wgpu::ComputePipeline> = Vec::with_capacity(count);
    for ((which, k), layout) in KERNELS[..count].iter().zip(layouts) {
        // The lazy update of quantized state exists for q8 pools only: elsewhere its slot holds the
        // plain lazy pipeline, never dispatched (one pipeline fewer to compile per optimizer).
        let lazy_exact = matches!(
            which,
            Which::LazyExact
                | Which::CatchUp
                | Which::StampListed
                | Which::StampAll
                | Which::CatchUpRows
                | Which::StampRows
                | Which::ResetRows
                | Which::Bump
        );
        // Likewise the lazy-exact kernels outside a lazy-exact configuration, and the row-wise ones
        // while no variable keeps a row-wise velocity (or for pools they cannot serve: not f32).
        let rowwise = constants
            .iter()
            .any(|&(n, v)| n == "ROW_VELOCITY" && v != 0.0)
            && storage.is_f32();
        let rows = matches!(which, Which::RowsDense | Which::RowsLazy);
        let absent = (*which == Which::LazyQ8 && storage.state != Dtype::Q8)
            || (lazy_exact && !exact)
            || (rows && !rowwise);
        if let (true, Some(l)) = (absent, lazy) {
            built.push(built[l].clone());
            continue;
        }
        built.push({
            // A kernel that does not bind the pools is the same for every storage.
            let storage = if k.module.pools.is_some() {
                storage
            } else {
                StorageTypes::default()
            };
            kernels::pipeline(device, prefix, k, mode, layout, constants, (storage, ema))?
        });
    }
    Ok(built)
}

pub(crate) fn missing_buffer() -> Error {
    Error::Gpu("internal: a pooled buffer is missing".into())
}
