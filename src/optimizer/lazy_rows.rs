//! `SparseMode::LazyExact` outside a step: bringing every row of variables up to date (before reads and
//! checkpoints, and on request) with the catch-up dispatches of the planner, in a submission of its own.

use super::RmsProp;
use crate::error::Result;
use crate::kernels::{Params, ParamsMode};
use crate::step::encode::{Step, Tables};
use crate::step::gpu::StepSizes;
use crate::step::plan::{catch_up, Plan};
use crate::step::sparse_prep::SparsePrep;
use crate::step::types::VarId;
use crate::step::validate::StepShape;

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
            catch_up(&mut plan.dispatches, mg, wg, base, v, i);
        }
        let mut uniform = Vec::new();
        if self.gpu.mode == ParamsMode::Uniform {
            let stride = self.gpu.uniform_stride as usize;
            for d in &plan.dispatches {
                uniform.extend_from_slice(bytemuck::bytes_of(&d.params));
                uniform.resize(uniform.len().next_multiple_of(stride), 0);
            }
        }
        self.gpu.reserve(&StepSizes {
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
        self.uploader.begin(&device, st.staging_bytes())?;
        let staged = st.stage(&self.gpu, &mut self.uploader, &mut encoder);
        let slot = self.uploader.finish(&mut encoder);
        if let Err(e) = staged {
            if let Some(slot) = slot {
                self.uploader.resolve(slot, None);
            }
            return Err(e);
        }
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

    /// Every variable's rows brought up to date ([`RmsProp::catch_up`]).
    pub(crate) fn catch_up_all(&mut self) -> Result<()> {
        let ids: Vec<VarId> = (0..self.layout.variables.len())
            .map(|i| self.layout.id(i))
            .collect();
        self.catch_up(&ids)
    }
}
