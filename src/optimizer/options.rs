//! Per-variable options (parameter groups): setting them, name exclusions from weight decay, the slots a
//! variable keeps, and the kernel and pool changes options can need (prepared, then installed).
//!
//! The kernels are built for a [`Variant`]: the slots any variable keeps, the weight decay mode and
//! whether the options table is read (`VAR_OPTIONS`). Options that need more (a slot the pools lack, a
//! decay mode, the table) make the pools keep the slot for every variable from then on (fresh, zeroed
//! buffers in every chunk; nothing moves) and the pipelines are rebuilt; both are done before anything
//! is committed, so a failure changes nothing.

use super::{kinds_for, RmsProp};
use crate::error::{Error, Result};
use crate::kernels::{self, VAR_INFO_BYTES};
use crate::pool::{Kind, Slot};
use crate::step::types::VarId;
use crate::var_options::{name_excluded, VarHyper, VarOptions, Variant};

/// Kernel and pool changes for a new set of per-variable values, allocated and compiled.
pub(super) struct Prepared {
    variant: Variant,
    /// The kinds every chunk keeps afterwards.
    pub kinds: Vec<Kind>,
    /// Buffers of the kinds new to the pools, for each existing chunk not being replaced.
    buffers: Vec<(usize, [Option<wgpu::Buffer>; crate::pool::KINDS])>,
    pipelines: Option<crate::step::gpu::Pipelines>,
    /// The override constants of `variant`.
    pub constants: Vec<(&'static str, f64)>,
}

impl RmsProp {
    /// What the kernels read for variable `name` with `options` (validated): name exclusions applied.
    pub(super) fn resolve(&self, name: &str, options: &VarOptions) -> VarHyper {
        if name_excluded(name, &self.exclude_names) && options.weight_decay.is_none() {
            let excluded = VarOptions {
                exclude_from_weight_decay: true,
                ..options.clone()
            };
            return excluded.hyper(&self.config);
        }
        options.hyper(&self.config)
    }

    /// Allocates the kinds and builds the pipelines `hypers` (every variable's, in order) need, for the
    /// existing chunks but those in `replaced` (which the caller reallocates with [`Prepared::kinds`]).
    /// Changes nothing.
    pub(super) fn prepare(&mut self, hypers: &[VarHyper], replaced: &[usize]) -> Result<Prepared> {
        let variant = Variant::of(&self.config, hypers.iter().copied());
        let kinds = kinds_for(&self.config, &variant, &self.gpu.kinds);
        let new: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| !self.gpu.kinds.contains(k))
            .collect();
        let mut buffers = Vec::new();
        if !new.is_empty() {
            for (index, chunk) in self.layout.chunks.iter().enumerate() {
                if !replaced.contains(&index) {
                    let b = self.gpu.allocate_chunk(
                        index,
                        chunk.capacity,
                        &new,
                        (chunk.storage, chunk.rowwise),
                    )?;
                    buffers.push((index, b));
                }
            }
        }
        let c = &self.plan_cfg;
        let constants = kernels::variant_constants(
            &self.config,
            &variant,
            c.workgroup_size,
            c.vec4s_per_invocation,
        );
        let pipelines = if variant != self.variant {
            Some(self.gpu.build_pipelines(&constants)?)
        } else {
            None
        };
        Ok(Prepared {
            variant,
            kinds,
            buffers,
            pipelines,
            constants,
        })
    }

    /// Installs what [`RmsProp::prepare`] made (the caller rebuilds the bind groups afterwards).
    pub(super) fn install(&mut self, p: Prepared) {
        if p.variant != self.variant {
            log::debug!(
                "{}: kernels now built for {:?}",
                self.config.name(),
                p.variant
            );
        }
        self.gpu.add_kinds(p.kinds, p.buffers);
        if let Some(pipelines) = p.pipelines {
            self.gpu.set_pipelines(pipelines);
        }
        self.variant = p.variant;
        self.plan_cfg.var_options = p.variant.var_options != 0;
    }

    /// Writes the segment map and the options table into `var_info` (after the per-variable entries),
    /// with `queue.write_buffer`: they land before the next submission.
    pub(super) fn write_tables(&self) {
        let (_, mut entries) = self.layout.segment_map();
        entries.extend(self.layout.options_table());
        let at = self.layout.variables.len() as u64 * VAR_INFO_BYTES;
        let queue = self.ctx.queue();
        queue.write_buffer(
            &self.gpu.var_info.buffer,
            at,
            bytemuck::cast_slice(&entries),
        );
    }

    /// Sets the options of an existing variable (see [`VarOptions`]): validated first
    /// ([`Error::InvalidVarOptions`]); refused with [`Error::UnresolvedSteps`] while recorded steps wait
    /// for their resolution. The storage types are fixed when the variable is added: options whose
    /// storage ([`VarOptions::storage`], else the configuration's) differs are refused
    /// ([`Error::InvalidVarOptions`] on `storage`). On error nothing changes.
    ///
    /// Slots: a slot the variable keeps before and after keeps its values (as a torch param group's
    /// state when its momentum changes from 0.9 to 0.5). A slot the variable gains starts at 0, as a
    /// fresh variable's; a slot it loses is dropped (reading it is [`Error::SlotNotPresent`]). A slot
    /// new to the pools is allocated for every variable (zeroed) and the pipelines are rebuilt; nothing
    /// moves, so the slices taken before stay valid.
    pub fn set_variable_options(&mut self, id: VarId, options: &VarOptions) -> Result<()> {
        self.ensure_resolved("set variable options")?;
        self.ctx.check_alive()?;
        let v = self.layout.var(id)?;
        options.validate(&v.name, &self.config)?;
        // SparseMode::LazyExact: rows behind take the steps they missed with the old options first.
        self.catch_up(&[id])?;
        let v = self.layout.var(id)?;
        // The storage types are fixed when the variable is added: its buffers are in pools of that type.
        let storage = options.storage.unwrap_or(self.config.storage());
        if storage != v.storage {
            return Err(Error::InvalidVarOptions {
                variable: v.name.clone(),
                field: "storage",
                value: format!("{storage:?}"),
                requirement: "cannot change after the variable is added",
            });
        }
        // So is the row-wise velocity: its chunks keep no element-wise velocity.
        if options.rowwise_velocity != v.rowwise {
            return Err(Error::InvalidVarOptions {
                variable: v.name.clone(),
                field: "rowwise_velocity",
                value: options.rowwise_velocity.to_string(),
                requirement:
                    "cannot change after the variable is added (its velocity is one value \
                              per row or per element for good)",
            });
        }
        let hyper = self.resolve(&v.name, options);
        let old = v.hyper;
        let mut hypers: Vec<VarHyper> = self.layout.variables.iter().map(|v| v.hyper).collect();
        hypers[id.index()] = hyper;
        let prepared = self.prepare(&hypers, &[])?;
        let rebind = prepared.kinds != self.gpu.kinds;
        self.install(prepared);
        let var = &mut self.layout.variables[id.index()];
        var.options = options.clone();
        var.hyper = hyper;
        // Slots gained start at 0 (their region may hold values from an earlier time the variable kept
        // them).
        let gained = [
            (Kind::Momentum, hyper.momentum_slot && !old.momentum_slot),
            (Kind::AverageGradient, hyper.centered && !old.centered),
        ];
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&format!("{}/variable options", self.config.name())),
        });
        for (kind, _) in gained.into_iter().filter(|&(_, g)| g) {
            for s in &self.layout.variables[id.index()].segments {
                let b = self.gpu.chunks[s.chunk].buffer(kind)?;
                let layout = self.layout.elems(kind, self.layout.chunks[s.chunk].storage);
                encoder.clear_buffer(b, layout.at(s.offset), Some(layout.span(s.vec4s())));
            }
        }
        self.write_tables();
        self.ctx.queue().submit([encoder.finish()]);
        if rebind {
            self.gpu.rebuild_bind_groups();
        }
        Ok(())
    }

    /// The options of a variable, as given to [`RmsProp::add_variable_with`] or
    /// [`RmsProp::set_variable_options`] (default for [`RmsProp::add_variable`]). Name exclusions from
    /// weight decay are not folded in: see [`RmsProp::excluded_from_weight_decay`].
    pub fn variable_options(&self, id: VarId) -> Result<&VarOptions> {
        Ok(&self.layout.var(id)?.options)
    }

    /// What the kernels read for a variable: its options resolved against the configuration, name
    /// exclusions included (the CPU twin uses the same values).
    pub fn variable_hyper(&self, id: VarId) -> Result<VarHyper> {
        Ok(self.layout.var(id)?.hyper)
    }

    /// Whether weight decay skips a variable: by its options or by a name given to
    /// [`RmsProp::exclude_from_weight_decay_names`] (a `weight_decay` set in its own options wins over a
    /// name match: the name list excludes variables that do not choose their decay themselves).
    pub fn excluded_from_weight_decay(&self, id: VarId) -> Result<bool> {
        let v = self.layout.var(id)?;
        let o = &v.options;
        Ok(o.exclude_from_weight_decay
            || (o.weight_decay.is_none() && name_excluded(&v.name, &self.exclude_names)))
    }

    /// Keras's `optimizer.exclude_from_weight_decay(var_names=...)`: variables whose name contains one of
    /// `names` (a substring match) get no weight decay, those added so far and those added later, unless
    /// their own options set `weight_decay`. Names accumulate over calls. An empty name (it would match
    /// every variable) is [`Error::InvalidConfig`]; refused with [`Error::UnresolvedSteps`] while recorded
    /// steps wait. On error nothing changes.
    pub fn exclude_from_weight_decay_names(&mut self, names: &[&str]) -> Result<()> {
        self.ensure_resolved("exclude variables from weight decay")?;
        self.ctx.check_alive()?;
        if let Some(pos) = names.iter().position(|n| n.is_empty()) {
            return Err(Error::InvalidConfig {
                field: "exclude_from_weight_decay_names",
                value: format!("\"\" at position {pos}"),
                requirement: "must not hold an empty name (it would match every variable)",
            });
        }
        let mut patterns = self.exclude_names.clone();
        patterns.extend(names.iter().map(|n| n.to_string()));
        let before = std::mem::replace(&mut self.exclude_names, patterns);
        let hypers: Vec<VarHyper> = self
            .layout
            .variables
            .iter()
            .map(|v| self.resolve(&v.name, &v.options))
            .collect();
        // Excluding only removes decay: no slot is new, but the table may now be read.
        let prepared = match self.prepare(&hypers, &[]) {
            Ok(p) => p,
            Err(e) => {
                self.exclude_names = before;
                return Err(e);
            }
        };
        self.install(prepared);
        for (v, h) in self.layout.variables.iter_mut().zip(hypers) {
            v.hyper = h;
        }
        self.write_tables();
        self.ctx.queue().submit([]);
        Ok(())
    }

    /// The slots a variable keeps (velocity, then momentum and average_gradient as its options and the
    /// configuration say); the others are [`Error::SlotNotPresent`] for it.
    pub fn variable_slots(&self, id: VarId) -> Result<Vec<Slot>> {
        let all = [
            Slot::Velocity,
            Slot::Momentum,
            Slot::AverageGradient,
            Slot::Ema,
        ];
        let mut kept = Vec::new();
        for slot in all {
            if self.keeps(id, slot)? {
                kept.push(slot);
            }
        }
        Ok(kept)
    }

    /// Whether variable `id` keeps `slot`, by the configuration and its own options.
    pub(super) fn keeps(&self, id: VarId, slot: Slot) -> Result<bool> {
        let h = self.layout.var(id)?.hyper;
        Ok(match slot {
            Slot::Velocity => true,
            Slot::Momentum => h.momentum_slot,
            Slot::AverageGradient => h.centered,
            Slot::Ema => self.config.use_ema(),
        })
    }
}
