//! Running a case on the GPU or on the CPU reference, one step at a time, within a memory budget.

use std::collections::BTreeMap;
use std::path::Path;

use super::{invalid, Case, CaseGradient, Limits, StepState};
use crate::context::GpuContext;
use crate::error::Result;
use crate::pool::Slot;
use crate::reference::{RefGradient, Reference};
use crate::sparse::Indices;
use crate::{Gradient, RmsProp, Tensor, VarId};

/// Rough fixed cost of one vector or map entry (header, allocator rounding).
const ENTRY_OVERHEAD: u64 = 64;

/// Copies of the whole state a run holds at once, besides the case: the optimizer's buffers (host
/// memory on a software adapter), the state read back for a step, the staging copy a read-back goes
/// through, and the slack of the buffer pool (or, for the reference, its own state).
const STATE_COPIES: u64 = 4;

fn f32_bytes(n: usize) -> u64 {
    (n as u64).saturating_mul(4)
}

impl Case {
    /// Approximate bytes the parsed case holds (values, indices, expected states, per-entry
    /// overhead).
    pub fn case_bytes(&self) -> u64 {
        let mut b: u64 = 1024;
        for v in &self.variables {
            b = b
                .saturating_add(ENTRY_OVERHEAD + v.name.len() as u64)
                .saturating_add(8 * v.shape.len() as u64)
                .saturating_add(f32_bytes(v.init.len()));
        }
        for s in &self.steps {
            b = b.saturating_add(ENTRY_OVERHEAD);
            for g in &s.grads {
                let data = match g {
                    CaseGradient::Dense { values } => f32_bytes(values.len()),
                    CaseGradient::Sparse { indices, values } => f32_bytes(values.len())
                        .saturating_add((indices.len() as u64).saturating_mul(8)),
                };
                b = b.saturating_add(ENTRY_OVERHEAD).saturating_add(data);
            }
        }
        for e in self.expected.iter().flatten() {
            b = b.saturating_add(ENTRY_OVERHEAD);
            for a in &e.variables {
                b = b
                    .saturating_add(ENTRY_OVERHEAD)
                    .saturating_add(f32_bytes(a.len()));
            }
            for (name, arrays) in &e.slots {
                b = b.saturating_add(ENTRY_OVERHEAD + name.len() as u64);
                for a in arrays {
                    b = b
                        .saturating_add(ENTRY_OVERHEAD)
                        .saturating_add(f32_bytes(a.as_ref().map_or(0, Vec::len)));
                }
            }
        }
        b
    }

    /// Bytes of one step's state: every variable and every slot the configuration keeps.
    pub fn state_bytes(&self) -> u64 {
        // An invalid configuration never gets to run; count the most slots there can be.
        let slots = self.optimizer_config().map_or(4, |c| {
            1 + u64::from(c.has_momentum()) + u64::from(c.centered()) + u64::from(c.use_ema())
        });
        self.variables
            .iter()
            .map(|v| f32_bytes(v.init.len()).saturating_add(ENTRY_OVERHEAD))
            .fold(0u64, u64::saturating_add)
            .saturating_mul(1 + slots)
    }

    /// Estimated peak bytes of running the case: the case, four times the state, the
    /// largest step's gradients twice (the case's copy is passed on, the optimizer stages one); with
    /// `collect`, also every step's state (what [`Case::run_gpu`] returns).
    pub fn memory_estimate(&self, collect: bool) -> u64 {
        let grads = self
            .steps
            .iter()
            .map(|s| {
                s.grads
                    .iter()
                    .map(|g| match g {
                        CaseGradient::Dense { values } => f32_bytes(values.len()),
                        CaseGradient::Sparse { indices, values } => f32_bytes(values.len())
                            .saturating_add((indices.len() as u64).saturating_mul(8)),
                    })
                    .fold(0u64, u64::saturating_add)
            })
            .max()
            .unwrap_or(0);
        let state = self.state_bytes();
        let mut total = self
            .case_bytes()
            .saturating_add(state.saturating_mul(STATE_COPIES))
            .saturating_add(grads.saturating_mul(2));
        if collect {
            let per_step = state.saturating_add(ENTRY_OVERHEAD * 4);
            total = total.saturating_add(per_step.saturating_mul(self.steps.len() as u64));
        }
        total
    }

    /// An error naming both numbers when [`Case::memory_estimate`] exceeds the budget: checked before
    /// anything of the run is allocated.
    pub fn check_budget(&self, limits: &Limits, collect: bool) -> Result<()> {
        let need = self.memory_estimate(collect);
        if need <= limits.memory_bytes {
            return Ok(());
        }
        let how = if collect {
            " (keeping every step's state; a streaming run needs less)"
        } else {
            ""
        };
        Err(invalid(
            &self.name,
            format!(
                "running it needs about {need} bytes{how}, over the memory budget of {} bytes",
                limits.memory_bytes
            ),
        ))
    }

    /// Runs the case on the GPU, reading back every variable and slot after every step, and returns
    /// every step's state (within the default [`Limits`], counting all of them).
    pub fn run_gpu(&self, ctx: &GpuContext) -> Result<Vec<StepState>> {
        self.run_gpu_resumed(ctx, None)
    }

    /// As [`Case::run_gpu`]; with `resume = Some((k, file))`, after step `k` the state is saved to `file`
    /// (variables included), the optimizer is dropped, a new one is built and restored from the file,
    /// and the remaining steps run on it. The results must be bit-identical to an uninterrupted run.
    /// `k` outside `1..=steps` means no checkpoint is made.
    pub fn run_gpu_resumed(
        &self,
        ctx: &GpuContext,
        resume: Option<(usize, &Path)>,
    ) -> Result<Vec<StepState>> {
        self.check_supported()?;
        self.check_budget(&Limits::default(), true)?;
        let mut out = Vec::with_capacity(self.steps.len());
        self.gpu_steps(ctx, resume, &mut |s| {
            out.push(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// As [`Case::run_gpu_resumed`], handing each step's state to `on_step` as soon as it is read back
    /// instead of keeping it, so memory does not grow with the number of steps. Refused before
    /// anything is allocated when the run would exceed `limits`. An error from `on_step` stops the run
    /// and is returned.
    pub fn run_gpu_streaming(
        &self,
        ctx: &GpuContext,
        resume: Option<(usize, &Path)>,
        limits: &Limits,
        on_step: &mut dyn FnMut(StepState) -> Result<()>,
    ) -> Result<()> {
        self.check_supported()?;
        self.check_budget(limits, false)?;
        self.gpu_steps(ctx, resume, on_step)
    }

    fn build(&self, ctx: &GpuContext) -> Result<(RmsProp, Vec<VarId>)> {
        let mut opt = RmsProp::new(ctx, self.optimizer_config()?)?;
        let ids = self
            .variables
            .iter()
            .map(|v| opt.add_variable_with(&v.name, &v.shape, &v.init, &v.options()))
            .collect::<Result<Vec<_>>>()?;
        Ok((opt, ids))
    }

    fn gpu_steps(
        &self,
        ctx: &GpuContext,
        resume: Option<(usize, &Path)>,
        on_step: &mut dyn FnMut(StepState) -> Result<()>,
    ) -> Result<()> {
        let (mut opt, mut ids) = self.build(ctx)?;
        let dtype = self.element_type();
        for (t, step) in self.steps.iter().enumerate() {
            // A 16-bit case's gradients are given in its type (the values are of it: read rounded).
            let halves: Vec<Halves> =
                step.grads
                    .iter()
                    .map(|g| {
                        let values = match g {
                            CaseGradient::Dense { values }
                            | CaseGradient::Sparse { values, .. } => values,
                        };
                        Halves::of(values, dtype)
                    })
                    .collect();
            let grads: Vec<(VarId, Gradient)> = ids
                .iter()
                .zip(&step.grads)
                .zip(&halves)
                .map(|((&id, g), h)| {
                    (
                        id,
                        match (g, h.slice()) {
                            (CaseGradient::Dense { values }, None) => Gradient::Dense(values),
                            (CaseGradient::Dense { .. }, Some(h)) => Gradient::Dense16(h),
                            (CaseGradient::Sparse { indices, values }, None) => Gradient::Sparse {
                                indices: Indices::I64(indices),
                                values,
                            },
                            (CaseGradient::Sparse { indices, .. }, Some(h)) => Gradient::Sparse16 {
                                indices: Indices::I64(indices),
                                values: h,
                            },
                        },
                    )
                })
                .collect();
            let n = opt.apply(&grads)?;
            // Every variable and every slot any variable keeps, in one read-back (one wait per step);
            // a slot a variable does not keep (its own momentum 0, or not centered) is `null`.
            let names = opt.slots();
            let mut items = Vec::new();
            for &id in &ids {
                let kept = opt.variable_slots(id)?;
                items.push((id, Tensor::Variable));
                items.extend(kept.into_iter().map(|s| (id, Tensor::Slot(s))));
            }
            let mut values = opt.read_many(&items)?.into_iter();
            let mut variables = Vec::with_capacity(ids.len());
            let mut slots: BTreeMap<String, Vec<Option<Vec<f32>>>> = BTreeMap::new();
            let mut items = items.iter().peekable();
            for _ in &ids {
                items.next();
                variables.push(values.next().unwrap_or_default());
                for slot in &names {
                    let kept = items.peek().is_some_and(|(_, t)| *t == Tensor::Slot(*slot));
                    let v = if kept {
                        items.next();
                        values.next()
                    } else {
                        None
                    };
                    slots.entry(slot.name().to_string()).or_default().push(v);
                }
            }
            on_step(StepState {
                step: n,
                learning_rate: Some(f64::from(opt.last_learning_rate().unwrap_or(f32::NAN))),
                variables,
                slots,
            })?;
            if let Some((k, file)) = resume {
                if t + 1 == k {
                    opt.save_checkpoint(file, true)?;
                    drop(opt);
                    (opt, ids) = self.build(ctx)?;
                    opt.load_checkpoint(file)?;
                }
            }
        }
        Ok(())
    }

    /// Runs the case on the CPU reference and returns every step's state (within the default
    /// [`Limits`], counting all of them).
    pub fn run_reference(&self) -> Result<Vec<StepState>> {
        self.check_supported()?;
        self.check_budget(&Limits::default(), true)?;
        let mut out = Vec::with_capacity(self.steps.len());
        self.reference_steps(&mut |s| {
            out.push(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// As [`Case::run_reference`], handing each step's state to `on_step` instead of keeping it.
    /// Refused before anything is allocated when the run would exceed `limits`.
    pub fn run_reference_streaming(
        &self,
        limits: &Limits,
        on_step: &mut dyn FnMut(StepState) -> Result<()>,
    ) -> Result<()> {
        self.check_supported()?;
        self.check_budget(limits, false)?;
        self.reference_steps(on_step)
    }

    fn reference_steps(&self, on_step: &mut dyn FnMut(StepState) -> Result<()>) -> Result<()> {
        let config = self.optimizer_config()?;
        let mut r = Reference::new(config.clone());
        for v in &self.variables {
            r.add_variable_with(&v.shape, &v.init, &v.options())?;
        }
        for step in &self.steps {
            // Validation made every index non-negative and below the row count.
            let indices: Vec<Vec<usize>> = step
                .grads
                .iter()
                .map(|g| match g {
                    CaseGradient::Sparse { indices, .. } => {
                        indices.iter().map(|&i| i as usize).collect()
                    }
                    CaseGradient::Dense { .. } => Vec::new(),
                })
                .collect();
            let grads: Vec<Option<RefGradient>> = step
                .grads
                .iter()
                .zip(&indices)
                .map(|(g, idx)| {
                    Some(match g {
                        CaseGradient::Dense { values } => RefGradient::Dense(values),
                        CaseGradient::Sparse { values, .. } => RefGradient::Sparse {
                            indices: idx,
                            values,
                        },
                    })
                })
                .collect();
            let lr = config.scalars(r.iterations + 1)?.lr;
            r.step(&grads)?;
            // LazyExact: the state is read with every row up to date, as the GPU's reads do.
            r.catch_up();
            // A slot a variable does not keep is `null`; a slot no variable keeps is left out.
            let mut slots: BTreeMap<String, Vec<Option<Vec<f32>>>> = BTreeMap::new();
            slots.insert(
                Slot::Velocity.name().into(),
                r.vars.iter().map(|v| Some(v.v.clone())).collect(),
            );
            if r.vars.iter().any(|v| v.m.is_some()) {
                let m = r.vars.iter().map(|v| v.m.clone()).collect();
                slots.insert(Slot::Momentum.name().into(), m);
            }
            if r.vars.iter().any(|v| v.a.is_some()) {
                let a = r.vars.iter().map(|v| v.a.clone()).collect();
                slots.insert(Slot::AverageGradient.name().into(), a);
            }
            if r.vars.iter().any(|v| v.ema.is_some()) {
                let e = r.vars.iter().map(|v| v.ema.clone()).collect();
                slots.insert(Slot::Ema.name().into(), e);
            }
            on_step(StepState {
                step: r.iterations,
                learning_rate: Some(f64::from(lr)),
                variables: r.vars.iter().map(|v| v.x.clone()).collect(),
                slots,
            })?;
        }
        Ok(())
    }
}

/// A gradient's values in a 16-bit type (empty for f32).
enum Halves {
    F32,
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
}

impl Halves {
    fn of(values: &[f32], dtype: crate::dtype::Dtype) -> Self {
        match dtype {
            crate::dtype::Dtype::F32 | crate::dtype::Dtype::Q8 => Halves::F32,
            crate::dtype::Dtype::F16 => {
                Halves::F16(values.iter().map(|&x| half::f16::from_f32(x)).collect())
            }
            crate::dtype::Dtype::Bf16 => {
                Halves::Bf16(values.iter().map(|&x| half::bf16::from_f32(x)).collect())
            }
        }
    }

    fn slice(&self) -> Option<crate::step::types::HalfSlice<'_>> {
        match self {
            Halves::F32 => None,
            Halves::F16(v) => Some(crate::step::types::HalfSlice::F16(v)),
            Halves::Bf16(v) => Some(crate::step::types::HalfSlice::Bf16(v)),
        }
    }
}
