//! The step protocol: a step is recorded into an encoder, then resolved with the submission that carried
//! it or abandoned with its encoder. Host-side caches (the step count, the tables believed to be on the
//! GPU, staging) change only on resolution; `apply` does all three in one call.

use super::{Pending, RmsProp};
use crate::context::poll_once;
use crate::error::{Error, Result};
use crate::kernels::Params;
use crate::pool::Kind;
use crate::step::encode::{Step, Tables};
use crate::step::gpu::StepSizes;
use crate::step::plan::{ema, plan, prepare, Prepare, Which};
use crate::step::types::{GpuGradient, Gradient, RecordedStep, VarId};
use crate::step::validate::{validate, Part};

impl RmsProp {
    /// Applies one step of dense gradients given as host slices, one per variable listed (variables not
    /// listed are left untouched, as in Keras's `apply_gradients`). Returns the new step count.
    ///
    /// Everything is checked before anything is written: on error no variable, slot or counter changes.
    pub fn apply_gradients(&mut self, grads: &[(VarId, &[f32])]) -> Result<u64> {
        let g: Vec<(VarId, Gradient)> = grads
            .iter()
            .map(|&(id, g)| (id, Gradient::Dense(g)))
            .collect();
        self.apply(&g)
    }

    /// Applies one step of dense gradients that are already on the GPU (see [`GpuGradient`]). The values
    /// are copied GPU-to-GPU into the gradient pool in the same submission as the update.
    pub fn apply_gpu_gradients(&mut self, grads: &[(VarId, GpuGradient<'_>)]) -> Result<u64> {
        let g: Vec<(VarId, Gradient)> = grads
            .iter()
            .map(|&(id, g)| (id, Gradient::Gpu(g)))
            .collect();
        self.apply(&g)
    }

    /// Applies one step of any mix of dense, GPU and sparse gradients (one per variable listed): records
    /// it, submits it and resolves it. Returns the new step count. On error nothing is written.
    ///
    /// Refused with [`Error::UnresolvedSteps`] while steps recorded with [`RmsProp::record`] wait for
    /// their resolution (this step would run after them, or before them on the queue).
    pub fn apply(&mut self, grads: &[(VarId, Gradient<'_>)]) -> Result<u64> {
        self.ensure_resolved("apply a step")?;
        // Anything the host checks cannot see (e.g. a gradient buffer from another device) surfaces as a
        // wgpu validation error: the command buffer is then invalid and nothing of it runs.
        let device = self.ctx.device().clone();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&self.labels[0]),
        });
        let recorded = self.record(&mut encoder, grads);
        let step = match recorded {
            Ok(step) => step,
            Err(e) => {
                drop(encoder);
                let _ = poll_once(scope.pop());
                return Err(e);
            }
        };
        let submission = self.ctx.queue().submit([encoder.finish()]);
        // The scope's result is ready at once on native backends; where it is not (WebGPU), the step is
        // taken as applied rather than blocking.
        if let Some(Some(e)) = poll_once(scope.pop()) {
            // Nothing of the command buffer ran; the step was the only one unresolved.
            drop(step);
            self.resolve_front(Some(submission), false);
            return Err(Error::Wgpu {
                context: "the step was rejected by wgpu and not applied".into(),
                source: (&e).into(),
            });
        }
        self.submitted(step, submission)
    }

    /// Records one step into `encoder` without submitting it, e.g. together with the caller's forward and
    /// backward passes. The returned [`RecordedStep`] must be resolved: [`RmsProp::submitted`] with the
    /// index of the submit that carried `encoder`, or [`RmsProp::abandon`] if `encoder` was dropped.
    /// [`RmsProp::submit`] finishes, submits and resolves in one call. On error nothing is recorded.
    ///
    /// Several steps may be recorded before one submit (into one encoder, or into encoders submitted in
    /// recording order), each with its own step number and learning rate: each step's parameters
    /// travel as immediate data where the device has them (else in a uniform buffer slot copied before
    /// its pass), and its host data (host or sparse gradients, tables) through a reused staging buffer
    /// copied into place before its pass (a one-off buffer past
    /// [`crate::OptimizerOptions::max_staging_bytes`]), so everything lands in encoder order.
    ///
    /// A step that fails here has recorded nothing, except after a staging failure (an internal error):
    /// then `encoder` holds part of the step's copies and must be dropped.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        grads: &[(VarId, Gradient<'_>)],
    ) -> Result<RecordedStep> {
        let host_sparse = |g: &Gradient<'_>| matches!(g, Gradient::Sparse { .. });
        if self.config.gradient_accumulation_steps().is_some()
            && grads.iter().any(|(_, g)| host_sparse(g))
        {
            return self.record_densified(encoder, grads);
        }
        self.record_checked(encoder, grads)
    }

    /// Gradient accumulation with host sparse gradients, as Keras: the rows' values are divided by the
    /// loss scale, then made dense (duplicates summed in list order, absent rows 0) on the host, into
    /// reused buffers; the step is then a dense one for those variables (every row updated).
    fn record_densified(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        grads: &[(VarId, Gradient<'_>)],
    ) -> Result<RecordedStep> {
        // Checked as given first (indices in range, lengths): nothing is touched on error.
        validate(
            &self.layout,
            grads,
            &self.gradients_seen,
            &mut self.scratch.shape,
        )?;
        let scale = self.config.loss_scale_factor().map_or(1.0, |f| f as f32);
        let mut dense = std::mem::take(&mut self.scratch.dense);
        if dense.len() < grads.len() {
            dense.resize_with(grads.len(), Vec::new);
        }
        let mut densified = std::mem::take(&mut self.scratch.densified);
        densified.clear();
        densified.resize(self.layout.variables.len(), false);
        for ((id, g), buf) in grads.iter().zip(dense.iter_mut()) {
            if let Gradient::Sparse { indices, values } = g {
                let v = &self.layout.variables[id.index()];
                buf.clear();
                buf.resize(v.len, 0.0);
                for k in 0..indices.len() {
                    let at = indices.get(k) as usize * v.row_len;
                    let row = &values[k * v.row_len..(k + 1) * v.row_len];
                    for (x, &r) in buf[at..at + v.row_len].iter_mut().zip(row) {
                        *x += r / scale;
                    }
                }
                densified[id.index()] = true;
            }
        }
        let as_dense: Vec<(VarId, Gradient<'_>)> = grads
            .iter()
            .zip(&dense)
            .map(|(&(id, g), buf)| match g {
                Gradient::Sparse { .. } => (id, Gradient::Dense(buf)),
                other => (id, other),
            })
            .collect();
        self.scratch.densified = densified;
        let out = self.record_checked(encoder, &as_dense);
        drop(as_dense);
        self.scratch.dense = dense;
        self.scratch.densified.fill(false);
        out
    }

    /// [`RmsProp::record`] once host sparse gradients are made dense where accumulation needs it.
    fn record_checked(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        grads: &[(VarId, Gradient<'_>)],
    ) -> Result<RecordedStep> {
        self.check_room("record another step (max_unresolved_steps reached)")?;
        let step = self.next_step();
        let s = self.config.scalars(step)?;
        let sc = &mut self.scratch;
        validate(&self.layout, grads, &self.gradients_seen, &mut sc.shape)?;
        if self.plan_cfg.lazy {
            check_lazy_q8(&self.layout, &self.config, grads)?;
        }
        let prep = Prepare::of(
            self.config.loss_scale_factor(),
            self.config.gradient_accumulation_steps(),
            step,
        );
        if let (Some(n), true) = (
            self.config.gradient_accumulation_steps(),
            sc.shape.sparse > 0,
        ) {
            return Err(Error::InvalidConfig {
                field: "gradient_accumulation_steps",
                value: format!("{n}"),
                requirement:
                    "is not supported with sparse gradients whose values are on the GPU yet \
                              (host sparse gradients are accumulated as Keras does)",
            });
        }
        sc.sparse.prepare(
            &self.layout,
            grads.iter().copied(),
            sc.shape.sparse,
            &self.heads,
        );
        let base = Params {
            sr_seed: self.config.stochastic_rounding().unwrap_or(0),
            ..Params::of_step(&s, step, self.layout.options_base() as u32)
        };
        plan(
            &self.plan_cfg,
            base,
            &self.layout,
            &sc.shape.parts,
            &sc.sparse,
            &mut sc.plan,
        );
        if let Some(prep) = &prep {
            prepare(
                prep,
                &self.plan_cfg,
                &self.layout,
                &sc.sparse,
                (&sc.shape.parts, &sc.densified),
                &mut sc.plan,
            );
        }
        if self.config.use_ema() {
            // Keras's `iterations` before this call: updates, not calls, with accumulation.
            let k = (step - 1) / self.config.gradient_accumulation_steps().unwrap_or(1);
            let m = if k == 0 {
                0.0
            } else {
                self.config.ema_momentum() as f32
            };
            let overwrite = self
                .config
                .ema_overwrite_frequency()
                .is_some_and(|f| (k + 1).is_multiple_of(f));
            // A step that updates every variable densely updates the averages in its own dispatches
            // (where the device binds them there); any other step averages in one more dispatch per
            // pool buffer.
            let fused = self.gpu.ema
                && prep.as_ref().is_none_or(|p| p.updates())
                && sc.shape.parts.iter().all(|&p| p == Part::Dense);
            if fused {
                for d in sc.plan.dispatches.iter_mut() {
                    if matches!(d.which, Which::Dense | Which::DenseAt) {
                        d.params.ema_mode = 1 + u32::from(overwrite);
                        d.params.ema_momentum = m;
                    }
                }
            } else {
                ema(
                    &self.plan_cfg,
                    &self.layout,
                    m,
                    u32::from(overwrite),
                    &mut sc.plan.dispatches,
                );
            }
        }
        // Uniform path: one slot per dispatch, copied in before the step's pass (so each recorded step
        // reads its own parameters).
        self.gpu.uniform_slots(&sc.plan.dispatches, &mut sc.uniform);
        let nvars = self.layout.variables.len() as u64;
        let sizes = StepSizes {
            uniform: sc.uniform.len() as u64,
            jobs: sc.plan.jobs.len() as u64 * 16,
            partials: sc.plan.jobs.len() as u64 * 8,
            sparse_values: (sc.sparse.values.len() + sc.sparse.gpu_values) as u64 * 4,
            sparse_index: sc.sparse.index.len() as u64 * 4,
            gpu_indices: sc.sparse.gpu_indices as u64 * 4,
            next: sc.sparse.next as u64 * 4,
            heads: sc.sparse.heads.len * 4,
            var_info: self.layout.var_info_entries() * crate::kernels::VAR_INFO_BYTES,
            var_step: nvars * 16,
        };
        self.reserve_step(&sizes)?;
        let (sc, c) = (&self.scratch, &self.committed);
        // While other steps are unresolved, tables are staged again: an earlier step may be abandoned.
        let unresolved = !self.pending.is_empty();
        let plan_ = &sc.plan;
        let tables = Tables {
            jobs: !plan_.jobs.is_empty() && (unresolved || plan_.jobs != c.jobs),
            var_step: (self.plan_cfg.per_var || self.plan_cfg.skip_nonfinite)
                && !plan_.var_step.is_empty()
                && (unresolved || plan_.var_step != c.var_step),
            heads_from: c.heads_written,
        };
        let st = Step {
            layout: &self.layout,
            grads,
            shape: &sc.shape,
            sparse: &sc.sparse,
            plan: &sc.plan,
            tables,
            sparse_mode: self.config.sparse_mode(),
            uniform: &sc.uniform,
            pass_label: &self.labels[1],
        };
        let device = self.ctx.device();
        let slot = st.stage_in_slot(&self.gpu, &mut self.uploader, device, encoder)?;
        st.pass(&self.gpu, encoder);
        if prep.is_some_and(|p| p.mode == 2) {
            // Keras resets every accumulator on the N-th call, also those of variables absent from it
            // (after the pass, which read them).
            for c in &self.gpu.chunks {
                if let Some(acc) = c.buffers[Kind::Accumulator as usize].as_ref() {
                    encoder.clear_buffer(acc, 0, None);
                }
            }
        }
        // Recorded: head regions are address space (kept whatever happens to the step); the rest waits
        // for the resolution.
        if sc.shape.sparse > 0 {
            self.heads.clone_from(&sc.sparse.heads);
        }
        self.last_dispatches = sc.plan.dispatches.len();
        // LazyExact: rows of sparse variables may now be behind (a dense step or a read catches up);
        // under a schedule, their histories hold one more step (after a reset, this one).
        if self.gpu.exact {
            let history = self.plan_cfg.lazy_history;
            for (v, &p) in self.layout.variables.iter_mut().zip(&sc.shape.parts) {
                if p == Part::Sparse && !v.frozen() {
                    v.stale = true;
                    v.lazy_steps = if v.lazy_steps >= history {
                        1
                    } else {
                        v.lazy_steps + 1
                    };
                }
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.push_back(Pending {
            ticket,
            step,
            lr: Some(s.lr),
            catch_up: false,
            slot,
            generation: self.committed.generation,
            jobs: tables.jobs.then(|| reuse(&mut self.spare, &sc.plan.jobs)),
            var_step: tables
                .var_step
                .then(|| reuse(&mut self.spare, &sc.plan.var_step)),
            heads_written: sc.sparse.heads.len,
        });
        Ok(RecordedStep {
            optimizer: self.layout.optimizer,
            ticket,
            step,
            lr: s.lr,
        })
    }

    /// Resolves a recorded step as submitted in `submission` (the value `queue.submit` returned for
    /// the encoder it was recorded in). Steps recorded before it and still unresolved are resolved with
    /// it: encoders are submitted in recording order, so they were submitted by then. Returns the new
    /// step count.
    pub fn submitted(
        &mut self,
        step: RecordedStep,
        submission: wgpu::SubmissionIndex,
    ) -> Result<u64> {
        let at = self.position(&step)?;
        for _ in 0..at {
            self.resolve_front(Some(submission.clone()), true);
        }
        self.resolve_front(Some(submission), true);
        Ok(self.iterations)
    }

    /// Finishes `encoder`, submits it and resolves `step` (recorded into it, and any step recorded
    /// before it) in one call. Returns the new step count. A step this optimizer cannot resolve (see
    /// [`Error::StepResolution`]) is refused before anything is submitted.
    pub fn submit(&mut self, encoder: wgpu::CommandEncoder, step: RecordedStep) -> Result<u64> {
        self.position(&step)?;
        let submission = self.ctx.queue().submit([encoder.finish()]);
        self.submitted(step, submission)
    }

    /// Abandons every unresolved step: recovery when their [`RecordedStep`]s were lost. Only correct
    /// when none of their encoders was submitted (a submitted one ran, but is not counted). Returns how
    /// many steps were abandoned.
    pub fn abandon_all(&mut self) -> usize {
        self.distrust_lazy_counts(self.pending.iter().any(|p| !p.catch_up));
        let count = self.pending.len();
        while let Some(p) = self.pending.pop_back() {
            self.forget(p);
        }
        count
    }

    /// Resolves a recorded step whose encoder was dropped (never submitted): it leaves the step count,
    /// state and caches as they were. Steps recorded after it were recorded on top of it (their step
    /// numbers count it), so they are abandoned too. Returns how many steps were abandoned.
    pub fn abandon(&mut self, step: RecordedStep) -> Result<usize> {
        let at = self.position(&step)?;
        self.distrust_lazy_counts(self.pending.iter().skip(at).any(|p| !p.catch_up));
        let count = self.pending.len() - at;
        while self.pending.len() > at {
            if let Some(p) = self.pending.pop_back() {
                self.forget(p);
            }
        }
        Ok(count)
    }

    /// Steps recorded and not yet resolved.
    pub fn unresolved_steps(&self) -> usize {
        self.pending.len()
    }

    fn position(&self, step: &RecordedStep) -> Result<usize> {
        let refuse = |reason| Error::StepResolution {
            step: step.step,
            reason,
        };
        if step.optimizer != self.layout.optimizer {
            return Err(refuse("it was recorded by another optimizer"));
        }
        self.pending
            .iter()
            .position(|p| p.ticket == step.ticket)
            .ok_or_else(|| {
                refuse(
                "it was abandoned with an earlier step it was recorded after (if its encoder was \
                 submitted anyway, that update ran but is not counted)",
            )
            })
    }

    /// Resolves the oldest unresolved step; commits what it staged when `commit`, else abandons it and
    /// every later step (recorded on top of it).
    fn resolve_front(&mut self, submission: Option<wgpu::SubmissionIndex>, commit: bool) {
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        if let Some(slot) = p.slot.take() {
            self.uploader.resolve(slot, submission);
        }
        if !commit {
            self.distrust_lazy_counts(!p.catch_up || self.pending.iter().any(|q| !q.catch_up));
            self.forget(p);
            while let Some(later) = self.pending.pop_back() {
                self.forget(later);
            }
            return;
        }
        self.iterations = p.step;
        self.last_lr = p.lr.or(self.last_lr);
        let c = &mut self.committed;
        if p.generation == c.generation {
            if let Some(jobs) = p.jobs.take() {
                self.spare.push(std::mem::replace(&mut c.jobs, jobs));
            }
            if let Some(var_step) = p.var_step.take() {
                self.spare
                    .push(std::mem::replace(&mut c.var_step, var_step));
            }
            c.heads_written = c.heads_written.max(p.heads_written);
        }
        self.forget(p);
    }
}

impl RmsProp {
    /// Makes room for a recording of `sizes` (refused, before anything changes, when it does not fit the
    /// device's bindings). Replaced step buffers lose their contents: what earlier recordings staged
    /// in them no longer counts.
    pub(super) fn reserve_step(&mut self, sizes: &StepSizes) -> Result<()> {
        self.gpu.check(sizes)?;
        let regrown = self.gpu.reserve(sizes)?;
        let c = &mut self.committed;
        if regrown.jobs || regrown.var_step || regrown.heads {
            c.generation += 1;
            c.jobs.clear();
            c.var_step.clear();
            c.heads_written = 0;
        }
        Ok(())
    }

    /// Whether another recording may be made: the device is alive and fewer than
    /// `max_unresolved_steps` recordings wait for their resolution (`call` names the refused call).
    pub(super) fn check_room(&self, call: &'static str) -> Result<()> {
        self.ctx.check_alive()?;
        if self.pending.len() >= self.max_unresolved {
            return Err(Error::UnresolvedSteps {
                count: self.pending.len(),
                call,
            });
        }
        Ok(())
    }

    /// Unresolved recordings are abandoned, steps among them (`steps`; row catch-ups plan no reset):
    /// a step may have planned a reset of a variable's history that never ran, so the host's counts
    /// of lazy steps are no longer bounds: every variable resets at its next lazy step.
    fn distrust_lazy_counts(&mut self, steps: bool) {
        if !steps {
            return;
        }
        let history = self.plan_cfg.lazy_history;
        for v in &mut self.layout.variables {
            v.lazy_steps = v.lazy_steps.max(history);
        }
    }

    /// Drops an unresolved step without committing it (its staging slot, if any, is released; its
    /// tables go back to the spare list).
    fn forget(&mut self, mut p: Pending) {
        if let Some(slot) = p.slot.take() {
            self.uploader.resolve(slot, None);
        }
        self.spare.extend(p.jobs.take());
        self.spare.extend(p.var_step.take());
    }
}

/// A copy of `table` in a vector from `spare` (no allocation once the spare list is warm).
fn reuse(spare: &mut Vec<Vec<[u32; 4]>>, table: &[[u32; 4]]) -> Vec<[u32; 4]> {
    let mut v = spare.pop().unwrap_or_default();
    v.clear();
    v.extend_from_slice(table);
    v
}

/// Lazy steps on 8-bit quantized state rewrite whole blocks around the listed rows, found from host
/// indices grouped and sorted on the host (`rmsprop_lazy_q8.wgsl`); GPU-resident indices are grouped in
/// no particular order, and sequential duplicates would quantize between pairs: both refused.
fn check_lazy_q8(
    layout: &crate::step::layout::Layout,
    config: &crate::RmsPropConfig,
    grads: &[(VarId, Gradient<'_>)],
) -> Result<()> {
    for (id, g) in grads {
        let Some(v) = layout.variables.get(id.index()) else {
            continue;
        };
        if v.storage.state != crate::dtype::Dtype::Q8 || v.options.frozen {
            continue;
        }
        let refused = match g {
            Gradient::SparseGpuIndices { .. } => {
                "cannot take GPU-resident indices (host indices \
                 are grouped and sorted for the block update; or use sparse_mode dense)"
            }
            Gradient::Sparse { .. } | Gradient::Sparse16 { .. } | Gradient::SparseGpu { .. }
                if config.duplicate_indices() == crate::DuplicateIndices::Sequential =>
            {
                "cannot apply duplicates sequentially (each pair would be quantized)"
            }
            _ => continue,
        };
        return Err(Error::InvalidConfig {
            field: "sparse_mode",
            value: format!("lazy, for {:?} whose state is q8", v.name),
            requirement: refused,
        });
    }
    Ok(())
}
