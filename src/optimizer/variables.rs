//! Adding variables: placement in the pools (growing them on the GPU), slots, row counters and the
//! initial values.

use super::*;

impl RmsProp {
    /// Adds a variable with its initial values (row-major, `prod(shape)` of them; `[]` is a scalar) and
    /// freshly initialised slots. Its state is placed in the pools, which grow (on the GPU, copying what
    /// they hold) when full; steady-state steps allocate nothing.
    pub fn add_variable(&mut self, name: &str, shape: &[usize], init: &[f32]) -> Result<VarId> {
        self.add(name, shape, Init::Host(init), &VarOptions::default())
    }

    /// As [`RmsProp::add_variable`], with per-variable options (a parameter group; see
    /// [`VarOptions`]), validated first ([`Error::InvalidVarOptions`]). A variable whose options need a
    /// slot the pools do not keep yet (momentum or centered where the configuration has neither) makes
    /// the pools keep that slot for every variable from now on (fresh buffers, pipelines rebuilt; no
    /// slice moves, so [`RmsProp::layout_version`] moves only if a pool buffer grows, as always).
    pub fn add_variable_with(
        &mut self,
        name: &str,
        shape: &[usize],
        init: &[f32],
        options: &VarOptions,
    ) -> Result<VarId> {
        self.add(name, shape, Init::Host(init), options)
    }

    /// Adds a variable whose initial values are `prod(shape)` f32 already on the GPU (copied GPU-to-GPU
    /// into the pool, no host round trip; the buffer needs `COPY_SRC`).
    pub fn add_variable_from_buffer(
        &mut self,
        name: &str,
        shape: &[usize],
        init: GpuGradient<'_>,
    ) -> Result<VarId> {
        self.add(name, shape, Init::Gpu(init), &VarOptions::default())
    }

    fn add(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init<'_>,
        options: &VarOptions,
    ) -> Result<VarId> {
        self.ensure_resolved("add a variable")?;
        self.ctx.check_alive()?;
        if self.frozen {
            return Err(Error::LayoutFrozen { name: name.into() });
        }
        options.validate(name, &self.config)?;
        if options.rowwise_velocity && shape.len() < 2 {
            return Err(Error::InvalidVarOptions {
                variable: name.into(),
                field: "rowwise_velocity",
                value: format!("true for shape {shape:?}"),
                requirement: "needs a variable of rank >= 2 (one velocity per row along axis 0); \
                              scalars and 1-D variables keep the element-wise velocity",
            });
        }
        let hyper = self.resolve(name, options);
        let mut storage = options.storage.unwrap_or(self.config.storage());
        if storage.state == Dtype::Q8 && !self.gpu.q8 {
            return Err(Error::InvalidVarOptions {
                variable: name.into(),
                field: "storage",
                value: format!("{storage:?}"),
                requirement: "can hold q8 state only where the configuration's state is q8 (its \
                              kernels bind the quantization maps)",
            });
        }
        if storage.state == Dtype::Q8 {
            // Small variables keep f32 state (bitsandbytes' min_8bit_size).
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n.is_some_and(|n| n < self.config.q8_min_size()) {
                storage.state = Dtype::F32;
            } else if !u64::from(self.plan_cfg.workgroup_size).is_multiple_of(self.gpu.q8_block) {
                return Err(Error::InvalidConfig {
                    field: "q8_block",
                    value: format!(
                        "{} with workgroup_size {}",
                        self.config.q8_block(),
                        self.plan_cfg.workgroup_size
                    ),
                    requirement:
                        "must divide 4x the workgroup size (a workgroup finds the absmax of \
                                  whole blocks)",
                });
            }
        }
        let plain = storage.variable == Dtype::F32 && storage.copy.is_none();
        if let (Init::Gpu(_), false) = (&init, plain) {
            return Err(Error::InvalidVarOptions {
                variable: name.into(),
                field: "storage",
                value: format!("{storage:?}"),
                requirement: "needs an f32 variable without a 16-bit copy to take its initial \
                              values from a GPU buffer (add the others from host values)",
            });
        }
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let init_len = match init {
            Init::Host(v) => v.len(),
            // An overflowing shape is refused by the placement below (InvalidShape).
            Init::Gpu(g) => match len {
                Some(n) => {
                    check_gpu_buffer(name, &g, n)?;
                    n
                }
                None => 0,
            },
        };
        // Plan the placement, then allocate (and compile) everything it needs before changing any state:
        // grown chunks get every kind kept from now on, the other chunks the kinds new to the pools.
        let rowwise = options.rowwise_velocity;
        let p = self
            .layout
            .plan_variable_rows(name, shape, init_len, storage, rowwise)?;
        // A caller's buffer is first copied into one of ours, in its own submission under an error
        // scope: what the host cannot check (e.g. a buffer of another device) fails here, not in the
        // submission that moves the pools.
        let copied;
        let init = match init {
            Init::Gpu(g) => {
                copied = self.copy_in(g, init_len)?;
                Init::Gpu(GpuGradient {
                    buffer: &copied,
                    offset: 0,
                })
            }
            host => host,
        };
        let hypers: Vec<_> = self.layout.variables.iter().map(|v| v.hyper).collect();
        let grown: Vec<usize> = p.grow.iter().map(|&(index, _)| index).collect();
        let prepared = self.prepare(&[&hypers[..], &[hyper]].concat(), &grown)?;
        let typed = self.gpu.build_storage(storage, Some(&prepared.constants))?;
        let mut new_buffers = Vec::new();
        for &(index, capacity) in &p.grow {
            let kinds = &prepared.kinds;
            let buffers = self
                .gpu
                .allocate_chunk(index, capacity, kinds, (storage, rowwise))?;
            new_buffers.push((index, buffers));
        }
        // Per-variable tables grow with the variables (read by diagnostics before any step), `var_info`
        // with the segment map and the options table after its entries.
        let vars = self.layout.variables.len() as u64 + 1;
        let map = self.layout.var_info_entries() + 3 + 2 * p.segments.len() as u64;
        let regrown = self.gpu.reserve(&StepSizes {
            var_info: map * crate::kernels::VAR_INFO_BYTES,
            var_step: vars * 16,
            ..StepSizes::default()
        })?;
        if regrown.var_step {
            self.committed.generation += 1;
            self.committed.var_step.clear();
        }
        // Commit: copy grown chunks' contents on the GPU, swap buffers.
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&format!("{}/grow pools", self.config.name())),
        });
        // SparseMode::LazyExact: the variable's step count and one count per row, zero (current);
        // under a schedule, room for its history of skipped-step maps (2 x history entries of 4 words).
        let rows_base = self.layout.lazy_rows_used;
        let rows = match shape.first() {
            None => 1,
            Some(&r) => r as u64,
        };
        // (Scalars take no sparse gradients: no history.)
        let history = match shape.is_empty() {
            true => 0,
            false => 8 * u64::from(self.config.lazy_history()),
        };
        if self.gpu.exact {
            let words = rows_base + 1 + rows + history;
            self.gpu.grow_lazy_rows(&mut encoder, words * 4)?;
        }
        // A row-wise velocity: one f32 per row (fresh memory past the old contents is zero).
        let velocity_base = self.layout.row_velocity_used;
        let rows = shape.first().map_or(1, |&r| r as u64);
        if rowwise {
            self.gpu
                .grow_row_velocity(&mut encoder, (velocity_base + rows) * 4)?;
        }
        for (index, buffers) in new_buffers {
            let used = self.layout.chunks.get(index).map_or(0, |c| c.used);
            self.gpu
                .install_chunk(&mut encoder, index, buffers, used, storage);
        }
        self.install(prepared);
        self.gpu.add_storage(typed);
        let id = self
            .layout
            .commit_variable(name, shape, p, options.clone(), hyper);
        if self.gpu.exact {
            let v = &mut self.layout.variables[id.index()];
            v.rows_base = rows_base as u32;
            v.hist_base = (rows_base + 1 + rows) as u32;
            self.layout.lazy_rows_used = rows_base + 1 + rows + history;
        }
        if rowwise {
            self.layout.variables[id.index()].rows_base = velocity_base as u32;
            self.layout.row_velocity_used = velocity_base + rows;
        }
        // Never taken: nothing can have been written into a buffer the pools left (growth copies the
        // gradient pool along with the rest).
        self.gradients_seen.push(u64::MAX);
        let queue = self.ctx.queue().clone();
        let accumulator = self.config.initial_accumulator_value() as f32;
        // The moving average starts from the variable's values (Keras's first call overwrites it anyway;
        // a variable added later does not start from zero).
        let mut targets = vec![Kind::Variable];
        if self.config.use_ema() {
            targets.push(Kind::Ema);
        }
        if storage.copy.is_some() {
            targets.push(Kind::Copy);
        }
        if rowwise && accumulator != 0.0 && rows > 0 {
            // Copied in the encoder, after the growth's copy of the old contents (a write_buffer would
            // land before it, and be overwritten where the old buffer had spare room).
            use wgpu::util::DeviceExt;
            let v = vec![accumulator; rows as usize];
            let init = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&format!("{}/initial row velocity", self.config.name())),
                contents: bytemuck::cast_slice(&v),
                usage: wgpu::BufferUsages::COPY_SRC,
            });
            let at = velocity_base * 4;
            encoder.copy_buffer_to_buffer(&init, 0, &self.gpu.row_velocity, at, rows * 4);
        }
        for s in &self.layout.variables[id.index()].segments {
            let chunk = &self.gpu.chunks[s.chunk];
            for &kind in &targets {
                let x = chunk.buffer(kind)?;
                let layout = self.layout.elems(kind, storage);
                match init {
                    Init::Host(values) => {
                        let part = &values[s.first_elem..s.first_elem + s.elems];
                        let bytes = crate::dtype::encode(part, layout.dtype);
                        queue.write_buffer(x, layout.at(s.offset), &bytes);
                    }
                    Init::Gpu(g) => {
                        let src = g.offset + s.first_elem as u64 * 4;
                        let bytes = s.elems as u64 * 4;
                        let at = layout.at(s.offset);
                        encoder.copy_buffer_to_buffer(g.buffer, src, x, at, bytes);
                    }
                }
            }
            if accumulator != 0.0 && !rowwise {
                let layout = self.layout.elems(Kind::Velocity, storage);
                let v = vec![accumulator; s.elems];
                let velocity = chunk.buffer(Kind::Velocity)?;
                let bytes = match layout.dtype {
                    // Whole blocks: absmax words and codes (the pad lanes' codes stand for 0).
                    Dtype::Q8 => std::borrow::Cow::Owned(crate::pool_q8::encode_blocks(
                        &v,
                        layout.block as usize * 4,
                        true,
                    )),
                    dtype => crate::dtype::encode(&v, dtype),
                };
                queue.write_buffer(velocity, layout.at(s.offset), &bytes);
            }
        }
        // The segment map and the options table move with every variable added (they follow the
        // per-variable entries).
        self.write_tables();
        queue.submit([encoder.finish()]);
        self.gpu.rebuild_bind_groups();
        log::debug!("{}: added variable {name:?} {shape:?}", self.config.name());
        Ok(id)
    }

    /// Copies `len` f32 from a caller's buffer into a fresh buffer of this optimizer (waits for nothing;
    /// a wgpu validation error is returned, with nothing changed).
    fn copy_in(&self, g: GpuGradient<'_>, len: usize) -> Result<wgpu::Buffer> {
        let device = self.ctx.device();
        let bytes = len as u64 * 4;
        let buffer = crate::context::create_buffer_checked(
            device,
            &wgpu::BufferDescriptor {
                label: Some(&format!("{}/initial values", self.config.name())),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            },
        )?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = device.create_command_encoder(&Default::default());
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(g.buffer, g.offset, &buffer, 0, bytes);
        }
        self.ctx.queue().submit([encoder.finish()]);
        match crate::context::poll_once(scope.pop()) {
            Some(Some(e)) => Err(Error::Wgpu {
                context: "the initial values could not be copied".into(),
                source: (&e).into(),
            }),
            _ => Ok(buffer),
        }
    }
}
