//! Records a planned step into an encoder: the copies of its inputs (host data through the staging ring,
//! GPU sources directly), then one compute pass with the plan's dispatches.

use crate::config::SparseMode;
use crate::dtype::StorageTypes;
use crate::error::Result;
use crate::kernels::ParamsMode;
use crate::pool::Kind;
use crate::step::gpu::{missing_buffer, Gpu, FIRST_GLOBAL_KERNEL, KERNELS};
use crate::step::layout::Layout;
use crate::step::plan::Plan;
use crate::step::sparse_prep::SparsePrep;
use crate::step::types::{Gradient, VarId};
use crate::step::validate::StepShape;
use crate::upload::Uploader;

/// Which tables a step writes (those the GPU may not hold yet).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tables {
    pub jobs: bool,
    pub var_step: bool,
    /// First row of `heads` to fill with NONE (up to the prepared regions' end).
    pub heads_from: u64,
}

/// Everything one recording reads.
pub(crate) struct Step<'a> {
    pub layout: &'a Layout,
    pub grads: &'a [(VarId, Gradient<'a>)],
    pub shape: &'a StepShape,
    pub sparse: &'a SparsePrep,
    pub plan: &'a Plan,
    pub tables: Tables,
    pub sparse_mode: SparseMode,
    /// Uniform path: one parameter slot per dispatch.
    pub uniform: &'a [u8],
    pub pass_label: &'a str,
}

impl Step<'_> {
    /// Bytes of host data this step stages.
    pub fn staging_bytes(&self) -> u64 {
        let mut bytes = self.shape.host_bytes
            + self.sparse.heads.len.saturating_sub(self.tables.heads_from) * 4
            + (std::mem::size_of_val(&self.sparse.values[..])
                + std::mem::size_of_val(&self.sparse.index[..])
                + self.uniform.len()) as u64;
        if self.tables.jobs {
            bytes += std::mem::size_of_val(&self.plan.jobs[..]) as u64;
        }
        if self.tables.var_step {
            bytes += std::mem::size_of_val(&self.plan.var_step[..]) as u64;
        }
        bytes
    }

    /// Opens a staging slot for the step's host data, records the copies of its inputs through it and
    /// closes it: the slot to resolve with the submission (none when nothing was staged); on error no
    /// slot is left open.
    pub fn stage_in_slot(
        &self,
        gpu: &Gpu,
        up: &mut Uploader,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Result<Option<usize>> {
        up.begin(device, self.staging_bytes())?;
        let staged = self.stage(gpu, up, encoder);
        let slot = up.finish(encoder);
        if let Err(e) = staged {
            if let Some(slot) = slot {
                up.resolve(slot, None);
            }
            return Err(e);
        }
        Ok(slot)
    }

    /// Records the copies of the step's inputs into `encoder`, through the staging slot opened by the
    /// caller for host data.
    pub fn stage(
        &self,
        gpu: &Gpu,
        up: &mut Uploader,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Result<()> {
        let copied = if self.shape.copied > 0 {
            self.grads
        } else {
            &[]
        };
        for (id, g) in copied {
            let v = &self.layout.variables[id.index as usize];
            if v.frozen() {
                // Ignored entirely: nothing of it is copied.
                continue;
            }
            // The variable's gradient buffers (host values were checked to be of their type).
            let grads = self.layout.elems(Kind::Gradient, v.storage);
            let dtype = grads.dtype;
            match g {
                Gradient::Resident => {}
                Gradient::Dense(_) | Gradient::Dense16(_) => {
                    for s in &v.segments {
                        let dst = gpu.chunks[s.chunk].buffer(Kind::Gradient)?;
                        let range = s.first_elem..s.first_elem + s.elems;
                        let part = match g {
                            Gradient::Dense16(h) => h.bytes(range),
                            Gradient::Dense(values) => bytemuck::cast_slice(&values[range]),
                            _ => &[],
                        };
                        // The padding lanes after the last element, and the alignment padding up to
                        // where the next variable may start, are written as zeros (so that the
                        // writes of neighbouring variables merge into one copy).
                        let pad =
                            self.layout.padded_vec4s(s) * 4 * dtype.bytes() - part.len() as u64;
                        up.write(encoder, dst, grads.at(s.offset), part, pad)?;
                    }
                }
                Gradient::Gpu(gg) => {
                    for s in &v.segments {
                        let dst = gpu.chunks[s.chunk].buffer(Kind::Gradient)?;
                        // Later segments start on a vec4 (an even element): whole words.
                        let src = gg.offset + s.first_elem as u64 * dtype.bytes();
                        let bytes = grads.bytes(s.elems);
                        encoder.copy_buffer_to_buffer(
                            gg.buffer,
                            src,
                            dst,
                            grads.at(s.offset),
                            bytes,
                        );
                    }
                }
                Gradient::Sparse { .. }
                | Gradient::Sparse16 { .. }
                | Gradient::SparseGpu { .. }
                | Gradient::SparseGpuIndices { .. } => {
                    self.stage_sparse_gpu(gpu, encoder, *id, g)?;
                    if self.sparse_mode == SparseMode::Dense {
                        // The merged rows are scattered into a cleared gradient region.
                        for s in &v.segments {
                            for kind in [Kind::Gradient, Kind::Squares] {
                                if let Some(b) = gpu.chunks[s.chunk].buffers[kind as usize].as_ref()
                                {
                                    let layout = self.layout.elems(kind, v.storage);
                                    let at = layout.at(s.offset);
                                    encoder.clear_buffer(b, at, Some(layout.span(s.vec4s())));
                                }
                            }
                        }
                    }
                }
            }
        }
        let sp = self.sparse;
        if !sp.values.is_empty() {
            let values = bytemuck::cast_slice(&sp.values);
            up.write(encoder, &gpu.sparse_values.buffer, 0, values, 0)?;
        }
        if sp.heads.len > self.tables.heads_from {
            // New row-head regions start empty (NONE); grouping leaves them empty again after each step.
            let none = vec![u32::MAX; (sp.heads.len - self.tables.heads_from) as usize];
            let at = self.tables.heads_from * 4;
            up.write(
                encoder,
                &gpu.heads.buffer,
                at,
                bytemuck::cast_slice(&none),
                0,
            )?;
        }
        if !sp.index.is_empty() {
            let index = bytemuck::cast_slice(&sp.index);
            up.write(encoder, &gpu.sparse_index.buffer, 0, index, 0)?;
        }
        if self.tables.jobs {
            let jobs = bytemuck::cast_slice(&self.plan.jobs);
            up.write(encoder, &gpu.jobs.buffer, 0, jobs, 0)?;
        }
        if self.tables.var_step {
            let var_step = bytemuck::cast_slice(&self.plan.var_step);
            up.write(encoder, &gpu.var_step.buffer, 0, var_step, 0)?;
        }
        if !self.uniform.is_empty() {
            up.write(encoder, &gpu.uniform.buffer, 0, self.uniform, 0)?;
        }
        Ok(())
    }

    /// Copies a sparse gradient's GPU values (and GPU indices) into the step's sparse buffers.
    fn stage_sparse_gpu(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        id: VarId,
        g: &Gradient<'_>,
    ) -> Result<()> {
        let (k, values) = match g {
            Gradient::SparseGpu { indices, values } => (indices.len(), values),
            Gradient::SparseGpuIndices { indices, values } => (indices.len, values),
            _ => return Ok(()),
        };
        let v = &self.layout.variables[id.index as usize];
        let sp = self
            .sparse
            .steps
            .iter()
            .find(|sp| sp.var == id.index as usize)
            .ok_or_else(missing_buffer)?;
        let bytes = (k * v.row_len) as u64 * 4;
        if bytes > 0 {
            let dst = &gpu.sparse_values.buffer;
            let at = u64::from(sp.values_base) * 4;
            encoder.copy_buffer_to_buffer(values.buffer, values.offset, dst, at, bytes);
        }
        if let (Gradient::SparseGpuIndices { indices, .. }, Some((first, _, _))) = (g, sp.gpu) {
            if k > 0 {
                let dst = &gpu.gpu_indices.buffer;
                let at = u64::from(first) * 4;
                encoder.copy_buffer_to_buffer(
                    indices.buffer,
                    indices.offset,
                    dst,
                    at,
                    k as u64 * 4,
                );
            }
        }
        Ok(())
    }

    /// Records the step's compute pass.
    pub fn pass(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.pass_label),
            timestamp_writes: None,
        });
        for (slot, d) in self.plan.dispatches.iter().enumerate() {
            let k = KERNELS.iter().position(|(w, _)| *w == d.which).unwrap_or(0);
            // Kernels from FIRST_GLOBAL_KERNEL on bind step-wide buffers only (one bind group each).
            let bg = match k.checked_sub(FIRST_GLOBAL_KERNEL) {
                Some(g) => &gpu.global_bind_groups[g],
                None => &gpu.chunks[d.chunk].bind_groups[k],
            };
            let storage = match gpu.chunks.get(d.chunk) {
                Some(c) if k < FIRST_GLOBAL_KERNEL => c.storage,
                _ => StorageTypes::default(),
            };
            pass.set_pipeline(gpu.pipeline(k, storage));
            match gpu.mode {
                ParamsMode::Immediate => {
                    pass.set_bind_group(0, bg, &[]);
                    pass.set_immediates(0, bytemuck::bytes_of(&d.params));
                }
                ParamsMode::Uniform => {
                    let offset = slot as u64 * gpu.uniform_stride;
                    pass.set_bind_group(0, bg, &[offset as u32]);
                }
            }
            pass.dispatch_workgroups(d.params.groups_x, d.groups_y, 1);
        }
    }
}
