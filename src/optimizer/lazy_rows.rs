//! `SparseMode::LazyExact` outside a step: bringing every row of variables up to date (before reads and
//! checkpoints, and on request) with the catch-up dispatches of the planner, in a submission of its own.

use super::Pending;
use super::RmsProp;
use crate::error::Error;
use crate::error::Result;
use crate::kernels::Params;
use crate::step::encode::{Step, Tables};
use crate::step::gpu::StepSizes;
use crate::step::plan::{catch_up, catch_up_rows, Plan, Which};
use crate::step::sparse_prep::SparsePrep;
use crate::step::types::{GpuGradient, Gradient, RecordedStep, Rows, VarId};
use crate::step::validate::{check_gpu_buffer, StepShape};

impl RmsProp {
    /// [`crate::SparseMode::LazyExact`]: brings every row of `ids` up to date: each row that missed
    /// steps of its variable takes them in closed form, as [`crate::SparseMode::Dense`] would have
    /// updated it (velocity and average gradient decayed, momentum and decoupled decay moving the
    /// variable), so that the GPU buffers hold the dense numbers, e.g. before a forward pass reads the
    /// whole table from [`RmsProp::variable_slices`]. Reads and checkpoints do this by themselves.
    /// Records and submits its own work (nothing per step unless called); nothing to do in other
    /// sparse modes or when no lazy step left rows behind. Refused with
    /// [`crate::Error::UnresolvedSteps`] while recorded steps are unresolved.
    pub fn catch_up(&mut self, ids: &[VarId]) -> Result<()> {
        self.ensure_resolved("catch rows up")?;
        for &id in ids {
            self.layout.var(id)?;
        }
        self.ctx.check_alive()?;
        let stale: Vec<usize> = ids
            .iter()
            .map(|id| id.index())
            .filter(|&i| self.gpu.exact && self.layout.variables[i].stale)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let s = self.config.catch_up_scalars();
        let base = Params::of_step(&s, self.iterations, self.layout.options_base() as u32);
        let mut plan = Plan::default();
        let cfg = &self.plan_cfg;
        let (mg, wg) = (u64::from(cfg.max_groups), u64::from(cfg.workgroup_size));
        for &i in &stale {
            let v = &self.layout.variables[i];
            catch_up(
                &mut plan.dispatches,
                (mg, wg),
                base,
                (v, i),
                Which::StampAll,
            );
        }
        let mut uniform = Vec::new();
        self.gpu.uniform_slots(&plan.dispatches, &mut uniform);
        self.reserve_step(&StepSizes {
            uniform: uniform.len() as u64,
            ..StepSizes::default()
        })?;
        let (shape, sparse) = (StepShape::default(), SparsePrep::default());
        let label = format!("{}/catch up rows", self.config.name());
        let st = Step {
            layout: &self.layout,
            grads: &[],
            shape: &shape,
            sparse: &sparse,
            plan: &plan,
            tables: Tables::default(),
            sparse_mode: self.config.sparse_mode(),
            uniform: &uniform,
            pass_label: &label,
        };
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&label),
        });
        let slot = st.stage_in_slot(&self.gpu, &mut self.uploader, &device, &mut encoder)?;
        st.pass(&self.gpu, &mut encoder);
        let submission = self.ctx.queue().submit([encoder.finish()]);
        if let Some(slot) = slot {
            self.uploader.resolve(slot, Some(submission));
        }
        for i in stale {
            self.layout.variables[i].stale = false;
        }
        Ok(())
    }

    /// [`crate::SparseMode::LazyExact`], once every row is current: every count, row counter and
    /// history back to 0 (what a checkpoint's rows are when it is loaded).
    pub(crate) fn reset_lazy_counts(&mut self) {
        if !self.gpu.exact {
            return;
        }
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("reset lazy-exact counts"),
        });
        let bytes = self.layout.lazy_rows_used * 4;
        encoder.clear_buffer(&self.gpu.lazy_rows, 0, Some(bytes));
        self.ctx.queue().submit([encoder.finish()]);
        for v in &mut self.layout.variables {
            v.stale = false;
            v.lazy_steps = 0;
        }
    }

    /// Every variable's rows brought up to date ([`RmsProp::catch_up`]).
    pub(crate) fn catch_up_all(&mut self) -> Result<()> {
        let ids: Vec<VarId> = (0..self.layout.variables.len())
            .map(|i| self.layout.id(i))
            .collect();
        self.catch_up(&ids)
    }
}

impl RmsProp {
    /// [`crate::SparseMode::LazyExact`]: records into the caller's `encoder` the catch-up of the given
    /// rows (host or GPU indices, repeats allowed), e.g. the ids the next forward pass gathers, recorded
    /// before that pass: each listed row takes the steps it missed in closed form and is marked
    /// current, so the pass reads the numbers dense steps would have left (with momentum, a row keeps
    /// moving while it is not listed). Other rows are left as they are ([`RmsProp::catch_up`] does
    /// whole variables). Nothing is submitted or waited for, and nothing is read back: GPU indices are
    /// grouped on the GPU.
    ///
    /// Part of the step protocol: it returns a [`RecordedStep`] that does not count as a step
    /// ([`RecordedStep::step`] is the count it runs at) and is resolved like one, by
    /// [`RmsProp::submitted`] / [`RmsProp::submit`] for it or for a step recorded after it into the
    /// same or a later encoder, or [`RmsProp::abandon`]. In other sparse modes (rows are never
    /// behind) it records nothing and still returns the token.
    ///
    /// Checked before anything is recorded: unknown variables, a variable listed twice, scalars, host
    /// indices out of range, GPU index ranges outside their buffer (typed errors; nothing changes).
    pub fn record_catch_up(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        rows: &[(VarId, Rows<'_>)],
    ) -> Result<RecordedStep> {
        self.check_room("record a row catch-up (max_unresolved_steps reached)")?;
        for (k, (id, r)) in rows.iter().enumerate() {
            let v = self.layout.var(*id)?;
            if rows[..k].iter().any(|(other, _)| other == id) {
                return Err(Error::DuplicateGradient {
                    name: v.name.clone(),
                });
            }
            if v.shape.is_empty() {
                return Err(Error::SparseScalar {
                    name: v.name.clone(),
                });
            }
            match r {
                Rows::Host(ix) => crate::sparse::validate(
                    &v.name,
                    &v.shape,
                    ix,
                    ix.len().saturating_mul(v.row_len),
                )?,
                Rows::Gpu(g) => {
                    let buffer = GpuGradient {
                        buffer: g.buffer,
                        offset: g.offset,
                    };
                    check_gpu_buffer(&v.name, &buffer, g.len)?;
                }
            }
        }
        // A row catch-up is a sparse step's grouping without values: the step's sparse machinery
        // (frozen variables are skipped there; in other sparse modes there is nothing to catch up).
        let exact = self.gpu.exact;
        let as_sparse = rows.iter().filter(move |_| exact).map(|&(id, r)| match r {
            Rows::Host(indices) => (
                id,
                Gradient::Sparse {
                    indices,
                    values: &[],
                },
            ),
            Rows::Gpu(indices) => {
                let values = GpuGradient {
                    buffer: indices.buffer,
                    offset: indices.offset,
                };
                (id, Gradient::SparseGpuIndices { indices, values })
            }
        });
        let (step, lr) = match self.pending.back() {
            Some(p) => (p.step, p.lr),
            None => (self.iterations, self.last_lr),
        };
        let sc = &mut self.scratch;
        sc.sparse
            .prepare(&self.layout, as_sparse, rows.len(), &self.heads);
        // No values travel (the layout keeps room for those of GPU indices).
        sc.sparse.gpu_values = 0;
        let s = self.config.catch_up_scalars();
        let base = Params::of_step(&s, step, self.layout.options_base() as u32);
        catch_up_rows(
            &self.plan_cfg,
            base,
            &self.layout,
            &sc.sparse,
            &mut sc.plan.dispatches,
        );
        self.gpu.uniform_slots(&sc.plan.dispatches, &mut sc.uniform);
        let sizes = StepSizes {
            uniform: sc.uniform.len() as u64,
            sparse_index: sc.sparse.index.len() as u64 * 4,
            gpu_indices: sc.sparse.gpu_indices as u64 * 4,
            next: sc.sparse.next as u64 * 4,
            heads: sc.sparse.heads.len * 4,
            ..StepSizes::default()
        };
        self.reserve_step(&sizes)?;
        let (shape, sc) = (StepShape::default(), &self.scratch);
        let st = Step {
            layout: &self.layout,
            grads: &[],
            shape: &shape,
            sparse: &sc.sparse,
            plan: &sc.plan,
            tables: Tables {
                heads_from: self.committed.heads_written,
                ..Tables::default()
            },
            sparse_mode: self.config.sparse_mode(),
            uniform: &sc.uniform,
            pass_label: &self.labels[1],
        };
        let mut slot = None;
        if !sc.plan.dispatches.is_empty() {
            let device = self.ctx.device();
            slot = st.stage_in_slot(&self.gpu, &mut self.uploader, device, encoder)?;
            for sp in &sc.sparse.steps {
                let (Some((first, _, _)), Some((_, Rows::Gpu(g)))) =
                    (sp.gpu, rows.iter().find(|(id, _)| id.index() == sp.var))
                else {
                    continue;
                };
                if g.len > 0 {
                    let dst = &self.gpu.gpu_indices.buffer;
                    let at = u64::from(first) * 4;
                    encoder.copy_buffer_to_buffer(g.buffer, g.offset, dst, at, g.len as u64 * 4);
                }
            }
            st.pass(&self.gpu, encoder);
            self.heads.clone_from(&sc.sparse.heads);
        }
        let heads_written = self.scratch.sparse.heads.len;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.push_back(Pending {
            ticket,
            step,
            lr,
            catch_up: true,
            slot,
            generation: self.committed.generation,
            jobs: None,
            var_step: None,
            heads_written,
        });
        Ok(RecordedStep {
            optimizer: self.layout.optimizer,
            ticket,
            step,
            lr: lr.unwrap_or(0.0),
        })
    }

    /// [`RmsProp::record_catch_up`] of rows given on the host or the GPU, in an encoder of its own,
    /// submitted at once. Refused with [`crate::Error::UnresolvedSteps`] while recorded steps are
    /// unresolved (its submission would resolve them).
    pub fn catch_up_rows(&mut self, rows: &[(VarId, Rows<'_>)]) -> Result<()> {
        self.ensure_resolved("catch rows up")?;
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("catch up rows"),
        });
        let token = self.record_catch_up(&mut encoder, rows)?;
        self.submit(encoder, token)?;
        Ok(())
    }
}
