//! One sharded step: reduce-scatter of dense gradients, routing of sparse rows to their owners, the
//! host's clipping with all-reduced norms, the agreed non-finite skip, the shard's update on the GPU
//! and the all-gather of the updated parameters.

use std::ops::Range;

use half::{bf16, f16};

use super::*;
use crate::config::SparseMode;
use crate::reference::clip_value;
use crate::sparse::Indices;
use crate::step::types::{Gradient, HalfSlice, Tensor};

/// A piece's gradient in this step, as the host holds it after the exchange.
#[derive(Debug, Clone, Default)]
pub(super) struct Rows {
    /// Row indices within the piece.
    pub rows: Vec<i64>,
    /// One row of the piece's values per index.
    pub values: Vec<f32>,
}

/// 16-bit copies of gradients for pieces whose gradient type is 16-bit.
enum Halves {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Halves {
    fn of(values: &[f32], dtype: Dtype) -> Option<Halves> {
        match dtype {
            Dtype::F16 => Some(Halves::F16(
                values.iter().map(|&x| f16::from_f32(x)).collect(),
            )),
            Dtype::Bf16 => Some(Halves::Bf16(
                values.iter().map(|&x| bf16::from_f32(x)).collect(),
            )),
            _ => None,
        }
    }

    fn slice(&self) -> HalfSlice<'_> {
        match self {
            Halves::F16(v) => HalfSlice::F16(v),
            Halves::Bf16(v) => HalfSlice::Bf16(v),
        }
    }
}

fn kind(g: &ShardGradient<'_>) -> u8 {
    match g {
        ShardGradient::Dense(_) => 0,
        ShardGradient::Sparse { .. } => 1,
        ShardGradient::Resident => 2,
    }
}

impl ShardedRmsProp {
    /// One data-parallel step (a collective call: every rank lists the same variables with the same
    /// kinds of gradient, each its own values). Returns the new step count. Invalid inputs on any rank
    /// end the whole job (`MPI_Abort`, the message on stderr); a step whose variables or gradient
    /// kinds differ across ranks is [`Error::RankMismatch`] on every rank.
    pub fn step(&mut self, grads: &[(usize, ShardGradient<'_>)]) -> Result<u64> {
        if let Err(e) = self.validate(grads) {
            self.fail(&e);
        }
        let signature: Vec<(usize, u8)> = grads.iter().map(|(v, g)| (*v, kind(g))).collect();
        let (min, max) = self.comm.min_max_u64(&[hash_of(&signature)]);
        if min != max {
            return Err(Error::RankMismatch {
                field: "step.gradients".into(),
                detail: "the variables of the step or their kinds of gradient".into(),
            });
        }
        match self.exchange_and_apply(grads) {
            Ok(n) => Ok(n),
            Err(e) => self.fail(&e),
        }
    }

    fn validate(&self, grads: &[(usize, ShardGradient<'_>)]) -> Result<()> {
        let mut seen = vec![false; self.layout.vars.len()];
        for (v, g) in grads {
            let f = self
                .layout
                .vars
                .get(*v)
                .ok_or_else(|| Error::UnknownVariable(format!("index {v}")))?;
            if std::mem::replace(&mut seen[*v], true) {
                return Err(Error::DuplicateGradient {
                    name: f.name.clone(),
                });
            }
            match g {
                ShardGradient::Dense(values) if values.len() != f.len => {
                    return Err(Error::GradientLength {
                        name: f.name.clone(),
                        expected: f.len,
                        got: values.len(),
                    })
                }
                ShardGradient::Sparse { indices, values } => {
                    if f.shape.is_empty() {
                        return Err(Error::SparseScalar {
                            name: f.name.clone(),
                        });
                    }
                    if values.len() != indices.len() * f.row_len {
                        return Err(Error::SparseValuesLength {
                            name: f.name.clone(),
                            indices: indices.len(),
                            row_len: f.row_len,
                            got: values.len(),
                        });
                    }
                    let rows = f.shape[0];
                    if let Some((position, &index)) = indices
                        .iter()
                        .enumerate()
                        .find(|(_, &i)| i < 0 || i as u64 >= rows as u64)
                    {
                        return Err(Error::IndexOutOfRange {
                            name: f.name.clone(),
                            index,
                            position,
                            rows,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The range of `self.mine` (this rank's shard) that piece `k` covers.
    fn local(&self, k: usize) -> Range<usize> {
        let s = self.pieces[k].flat_start(&self.layout.vars) - self.layout.range(self.rank()).start;
        s..s + self.pieces[k].len
    }

    fn exchange_and_apply(&mut self, grads: &[(usize, ShardGradient<'_>)]) -> Result<u64> {
        let n = self.comm.size() as f32;
        let mean = self.options.reduction == Reduction::Mean;
        let dense = grads
            .iter()
            .any(|(_, g)| !matches!(g, ShardGradient::Sparse { .. }));
        // Resident gradients: the GPU copies them towards the host while the sparse rows travel.
        let pending = if grads
            .iter()
            .any(|(_, g)| matches!(g, ShardGradient::Resident))
        {
            Some(self.start_grads_read()?)
        } else {
            None
        };
        let mut sparse: Vec<Option<Rows>> = vec![None; self.pieces.len()];
        if grads
            .iter()
            .any(|(_, g)| matches!(g, ShardGradient::Sparse { .. }))
        {
            self.route(grads, &mut sparse)?;
            if mean {
                for r in sparse.iter_mut().flatten() {
                    r.values.iter_mut().for_each(|x| *x /= n);
                }
            }
        }
        if dense {
            if let Some(rx) = pending {
                self.finish_grads_read(rx)?;
            }
            for (v, g) in grads {
                if let ShardGradient::Dense(values) = g {
                    let f = &self.layout.vars[*v];
                    self.send[f.offset..f.offset + f.len].copy_from_slice(values);
                }
            }
            self.comm.reduce_scatter_sum(&self.send, &mut self.mine);
            if mean {
                self.mine.iter_mut().for_each(|x| *x /= n);
            }
        }
        let mut listed = vec![false; self.layout.vars.len()];
        for (v, _) in grads {
            // A frozen variable's gradient is ignored entirely (as one process): not in its norms,
            // its non-finite check, nor its shard's step.
            listed[*v] = !self.var_options[*v].frozen;
        }
        let stepped: Vec<usize> = (0..self.pieces.len())
            .filter(|&k| listed[self.pieces[k].var])
            .collect();
        let step = self.shard.iterations() + 1;
        // Non-finite values as the shard would see them (after the loss scale), before the host's
        // accumulation hides them in its accumulator.
        let nonfinite = self.skip_nonfinite() && {
            let scale = self.config.loss_scale_factor().map_or(1.0, |s| s as f32);
            stepped.iter().any(|&k| {
                // In the gradient type (a 16-bit type overflows to infinity where f32 does not).
                let d = self.var_options[self.pieces[k].var]
                    .storage
                    .unwrap_or(self.config.storage())
                    .gradient;
                let bad = |x: &f32| !(d.round(*x) / scale).is_finite();
                match &sparse[k] {
                    Some(r) => r.values.iter().any(bad),
                    None => self.mine[self.local(k)].iter().any(bad),
                }
            })
        };
        if self.host_clips {
            self.host_prepare(&listed, &stepped, &mut sparse, step)?;
        }
        if self.skip_nonfinite() {
            self.agree_on_skip(nonfinite, &stepped, &mut sparse, step);
        }
        self.apply_shard(&stepped, &sparse)?;
        // Lazy sparse steps change only the listed rows: only those travel.
        let rows_only = self.config.sparse_mode() == SparseMode::Lazy
            && !self.config.use_ema()
            && self.config.gradient_accumulation_steps().is_none()
            && grads
                .iter()
                .all(|(_, g)| matches!(g, ShardGradient::Sparse { .. }));
        if rows_only {
            self.gather_rows(&sparse)?;
        } else {
            self.gather_params()?;
        }
        Ok(self.shard.iterations())
    }

    /// Sends every sparse row's parts to the ranks that own them; fills `out` for every piece of a
    /// sparse variable (empty when no row of it came here), rows in rank order, then list order.
    fn route(
        &mut self,
        grads: &[(usize, ShardGradient<'_>)],
        out: &mut [Option<Rows>],
    ) -> Result<()> {
        let world = self.comm.size();
        let mut heads: Vec<Vec<i64>> = vec![Vec::new(); world];
        let mut vals: Vec<Vec<f32>> = vec![Vec::new(); world];
        for (v, g) in grads {
            let ShardGradient::Sparse { indices, values } = g else {
                continue;
            };
            for &k in &self.var_pieces[*v] {
                out[k] = Some(Rows::default());
            }
            let f = &self.layout.vars[*v];
            let l = f.row_len;
            for (k, &r) in indices.iter().enumerate() {
                let a = f.offset + r as usize * l;
                for t in self.layout.owners(a..a + l) {
                    let range = self.layout.range(t);
                    let (x, y) = (a.max(range.start), (a + l).min(range.end));
                    heads[t].extend([*v as i64, r]);
                    vals[t].extend_from_slice(&values[k * l + (x - a)..k * l + (y - a)]);
                }
            }
        }
        let counts: Vec<usize> = heads.iter().map(Vec::len).collect();
        let heads = self.comm.all_to_all(&heads.concat(), &counts)?;
        let counts: Vec<usize> = vals.iter().map(Vec::len).collect();
        let vals = self.comm.all_to_all(&vals.concat(), &counts)?;
        let me = self.layout.range(self.rank());
        let mut at = 0;
        for pair in heads.chunks_exact(2) {
            let (v, r) = (pair[0] as usize, pair[1] as usize);
            let f = &self.layout.vars[v];
            let a = f.offset + r * f.row_len;
            let (x, y) = (a.max(me.start), (a + f.row_len).min(me.end));
            let e = x - f.offset;
            let k = self.var_pieces[v]
                .iter()
                .copied()
                .find(|&k| {
                    (self.pieces[k].start..self.pieces[k].start + self.pieces[k].len).contains(&e)
                })
                .ok_or_else(|| Error::Gpu(format!("row {r} of variable {v} has no piece here")))?;
            let rows = out[k].get_or_insert_with(Rows::default);
            rows.rows.push((r - self.pieces[k].first_row) as i64);
            rows.values.extend_from_slice(&vals[at..at + (y - x)]);
            at += y - x;
        }
        Ok(())
    }

    /// The host's part of the step where a norm clip spans ranks, in Keras's order: the loss scale,
    /// gradient accumulation (a host accumulator of the shard; the shard optimizer sees zeros on the
    /// calls that only accumulate, and `N` times the clipped mean on update calls, which its own
    /// accumulation divides by `N` again), then clipping by value and by norm, the norms from
    /// all-reduced partial squared norms.
    fn host_prepare(
        &mut self,
        listed: &[bool],
        stepped: &[usize],
        sparse: &mut [Option<Rows>],
        step: u64,
    ) -> Result<()> {
        let scale = self.config.loss_scale_factor().map_or(1.0, |s| s as f32);
        for &k in stepped {
            let range = self.local(k);
            // The gradient buffers hold the gradient type: the summed values are rounded to it first,
            // as one process rounds a gradient on entry (identity for f32).
            let dtype = self.var_options[self.pieces[k].var]
                .storage
                .unwrap_or(self.config.storage())
                .gradient;
            let values = match sparse[k].as_mut() {
                Some(r) => &mut r.values[..],
                None => &mut self.mine[range],
            };
            values.iter_mut().for_each(|x| *x = dtype.round(*x) / scale);
        }
        let accumulation = self.config.gradient_accumulation_steps();
        if let Some(n) = accumulation {
            let update = step.is_multiple_of(n);
            for &k in stepped {
                let range = self.local(k);
                // Sparse rows made dense (duplicates summed in list order, absent rows 0), as Keras.
                if let Some(r) = sparse[k].take() {
                    let l = self.pieces[k].row_len;
                    self.mine[range.clone()].fill(0.0);
                    for (i, &row) in r.rows.iter().enumerate() {
                        let at = range.start + row as usize * l;
                        for c in 0..l {
                            self.mine[at + c] += r.values[i * l + c];
                        }
                    }
                }
                for i in range {
                    if update {
                        self.mine[i] = (self.mine[i] + self.acc[i]) / n as f32;
                    } else {
                        self.acc[i] += self.mine[i];
                        self.mine[i] = 0.0;
                    }
                }
            }
            if !update {
                return Ok(());
            }
            self.acc.fill(0.0);
        }
        self.clip(listed, stepped, sparse, step)?;
        if let Some(n) = accumulation {
            for &k in stepped {
                let range = self.local(k);
                self.mine[range].iter_mut().for_each(|x| *x *= n as f32);
            }
        }
        Ok(())
    }

    /// Clipping by value and by norm, the norms from all-reduced partial squared norms.
    fn clip(
        &mut self,
        listed: &[bool],
        stepped: &[usize],
        sparse: &mut [Option<Rows>],
        step: u64,
    ) -> Result<()> {
        let cv = self.config.scalars(step)?.clipvalue;
        let mut sums = vec![0f64; self.layout.vars.len()];
        for &k in stepped {
            let range = self.local(k);
            let values = match sparse[k].as_mut() {
                Some(r) => &mut r.values[..],
                None => &mut self.mine[range],
            };
            let mut s = 0f64;
            for x in values.iter() {
                let y = f64::from(clip_value(*x, cv));
                s += y * y;
            }
            sums[self.pieces[k].var] += s;
        }
        // clipnorm: each variable's partial squared norms across its shards; global_clipnorm: one
        // partial squared norm per rank.
        let total = if self.config.clipnorm().is_some() {
            self.comm.sum_f64(&mut sums);
            0.0
        } else {
            let mut total = [sums
                .iter()
                .zip(listed)
                .filter(|(_, &l)| l)
                .map(|(s, _)| s)
                .sum::<f64>()];
            self.comm.sum_f64(&mut total);
            total[0] as f32
        };
        let factors: Vec<(f32, f32)> = sums
            .iter()
            .map(|&s| {
                let s = s as f32;
                if let Some(cn) = self.config.clipnorm() {
                    let cn = cn as f32;
                    let div = if s.is_nan() {
                        f32::NAN
                    } else {
                        s.sqrt().max(cn)
                    };
                    (cn, div)
                } else if let Some(cn) = self.config.global_clipnorm() {
                    let cn = cn as f32;
                    let n = total.sqrt();
                    let mul = if !total.is_finite() {
                        f32::NAN
                    } else if n > 0.0 {
                        cn * (1.0 / n).min(1.0 / cn)
                    } else {
                        cn * (1.0 / cn)
                    };
                    (mul, 1.0)
                } else {
                    (1.0, 1.0)
                }
            })
            .collect();
        for &k in stepped {
            let range = self.local(k);
            let (mul, div) = factors[self.pieces[k].var];
            let values = match sparse[k].as_mut() {
                Some(r) => &mut r.values[..],
                None => &mut self.mine[range],
            };
            for x in values.iter_mut() {
                *x = (clip_value(*x, cv) * mul) / div;
            }
        }
        Ok(())
    }

    /// [`NonFinite::SkipStep`] on every rank alike: a non-finite value on any rank (since the last
    /// update call, with gradient accumulation) makes every rank's shard see one and skip.
    fn agree_on_skip(
        &mut self,
        local: bool,
        stepped: &[usize],
        sparse: &mut [Option<Rows>],
        step: u64,
    ) {
        self.poisoned |= self.comm.any(local);
        let update = self
            .config
            .gradient_accumulation_steps()
            .is_none_or(|n| step.is_multiple_of(n));
        if !update || !std::mem::take(&mut self.poisoned) {
            return;
        }
        self.skipped += 1;
        if let Some(&k) = stepped.first() {
            let range = self.local(k);
            match sparse[k].as_mut() {
                Some(r) if !r.values.is_empty() => r.values[0] = f32::NAN,
                Some(r) => {
                    r.rows.push(0);
                    r.values
                        .extend(std::iter::repeat_n(f32::NAN, self.pieces[k].row_len));
                }
                None => self.mine[range.start] = f32::NAN,
            }
        }
    }

    fn apply_shard(&mut self, stepped: &[usize], sparse: &[Option<Rows>]) -> Result<()> {
        let dtype = |k: usize| {
            self.var_options[self.pieces[k].var]
                .storage
                .unwrap_or(self.config.storage())
                .gradient
        };
        let halves: Vec<Option<Halves>> = stepped
            .iter()
            .map(|&k| match &sparse[k] {
                Some(r) => Halves::of(&r.values, dtype(k)),
                None => Halves::of(&self.mine[self.local(k)], dtype(k)),
            })
            .collect();
        let ranges: Vec<Range<usize>> = stepped.iter().map(|&k| self.local(k)).collect();
        let mine = &self.mine;
        let list: Vec<(VarId, Gradient<'_>)> = stepped
            .iter()
            .zip(&halves)
            .zip(ranges)
            .map(|((&k, h), range)| {
                let g = match (&sparse[k], h) {
                    (Some(r), None) => Gradient::Sparse {
                        indices: Indices::I64(&r.rows),
                        values: &r.values,
                    },
                    (Some(r), Some(h)) => Gradient::Sparse16 {
                        indices: Indices::I64(&r.rows),
                        values: h.slice(),
                    },
                    (None, None) => Gradient::Dense(&mine[range]),
                    (None, Some(h)) => Gradient::Dense16(h.slice()),
                };
                (self.ids[k], g)
            })
            .collect();
        self.shard.apply(&list)?;
        Ok(())
    }

    /// Reads this rank's updated pieces and all-gathers them into every rank's full variables.
    pub(super) fn gather_params(&mut self) -> Result<()> {
        let items: Vec<(VarId, Tensor)> =
            self.ids.iter().map(|&id| (id, Tensor::Variable)).collect();
        let mut gathered = std::mem::take(&mut self.gathered);
        let result = self.gather_pieces(&items, &mut gathered);
        self.gathered = gathered;
        result?;
        let used = self.layout.used;
        self.ctx.queue().write_buffer(
            &self.params,
            0,
            bytemuck::cast_slice(&self.gathered[..used]),
        );
        Ok(())
    }

    /// After a lazy sparse step: all-gathers the listed rows of every rank's pieces (each rank's part of
    /// each distinct row once) into every rank's full variables.
    fn gather_rows(&mut self, sparse: &[Option<Rows>]) -> Result<()> {
        let with_rows: Vec<usize> = (0..self.pieces.len())
            .filter(|&k| sparse[k].as_ref().is_some_and(|r| !r.rows.is_empty()))
            .collect();
        let items: Vec<(VarId, Tensor)> = with_rows
            .iter()
            .map(|&k| (self.ids[k], Tensor::Variable))
            .collect();
        let values = if items.is_empty() {
            Vec::new()
        } else {
            self.shard.read_many(&items)?
        };
        let (mut heads, mut vals) = (Vec::new(), Vec::new());
        for (&k, piece_values) in with_rows.iter().zip(&values) {
            let p = &self.pieces[k];
            let mut rows: Vec<i64> = sparse[k]
                .as_ref()
                .map(|r| r.rows.clone())
                .unwrap_or_default();
            rows.sort_unstable();
            rows.dedup();
            for r in rows {
                let r = r as usize;
                heads.extend([p.var as i64, (p.first_row + r) as i64]);
                vals.extend_from_slice(&piece_values[r * p.row_len..(r + 1) * p.row_len]);
            }
        }
        let (heads, head_counts) = self.comm.all_gather_varcount(&heads)?;
        let (vals, _) = self.comm.all_gather_varcount(&vals)?;
        let (mut lo, mut hi) = (usize::MAX, 0);
        let (mut h, mut at) = (0, 0);
        for (t, &count) in head_counts.iter().enumerate() {
            let range = self.layout.range(t);
            for pair in heads[h..h + count].chunks_exact(2) {
                let f = &self.layout.vars[pair[0] as usize];
                let a = f.offset + pair[1] as usize * f.row_len;
                let (x, y) = (a.max(range.start), (a + f.row_len).min(range.end));
                self.gathered[x..y].copy_from_slice(&vals[at..at + (y - x)]);
                at += y - x;
                (lo, hi) = (lo.min(x), hi.max(y));
            }
            h += count;
        }
        if lo < hi {
            self.ctx.queue().write_buffer(
                &self.params,
                (lo * 4) as u64,
                bytemuck::cast_slice(&self.gathered[lo..hi]),
            );
        }
        Ok(())
    }

    /// Reads `items` (one per piece, in piece order) from the shard and all-gathers them into
    /// `out` (the flattened space; zeros where a piece lacks the tensor).
    pub(super) fn gather_pieces(
        &mut self,
        items: &[(VarId, Tensor)],
        out: &mut [f32],
    ) -> Result<()> {
        let values = if items.is_empty() {
            Vec::new()
        } else {
            self.shard.read_many(items)?
        };
        self.mine.fill(0.0);
        let mut values = values.into_iter();
        for k in 0..self.pieces.len() {
            if items.iter().any(|(id, _)| *id == self.ids[k]) {
                let v = values.next().unwrap_or_default();
                let r = self.local(k);
                self.mine[r].copy_from_slice(&v);
            }
        }
        self.comm.all_gather(&self.mine, out);
        Ok(())
    }
}

/// A read of the gradient buffer under way (the copy submitted, the map requested).
pub(super) type PendingRead =
    std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

impl ShardedRmsProp {
    /// Submits the copy of the gradient buffer into the (reused) staging buffer and requests its map;
    /// [`ShardedRmsProp::finish_grads_read`] waits for it.
    fn start_grads_read(&mut self) -> Result<PendingRead> {
        let bytes = (self.layout.used.max(4) * 4) as u64;
        let device = self.ctx.device();
        let staging = self.staging.get_or_insert_with(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("sharded/gradient read"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.grads, 0, staging, 0, bytes);
        self.ctx.queue().submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        Ok(rx)
    }

    /// Waits for the read started by [`ShardedRmsProp::start_grads_read`] and puts the gradients into
    /// the send buffer.
    fn finish_grads_read(&mut self, pending: PendingRead) -> Result<()> {
        self.ctx.wait_idle()?;
        pending
            .recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let used = self.layout.used;
        let staging = self
            .staging
            .as_ref()
            .ok_or_else(|| Error::Gpu("no staging buffer".into()))?;
        {
            let slice = staging.slice(..);
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(e.to_string()))?;
            self.send[..used].copy_from_slice(&bytemuck::cast_slice::<u8, f32>(&view)[..used]);
        }
        staging.unmap();
        Ok(())
    }
}

/// Reads `len` f32 of `buffer` (copied to a mapped staging buffer, one wait).
pub(super) fn read_buffer(ctx: &GpuContext, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let bytes = (len * 4) as u64;
    if bytes == 0 {
        return Ok(Vec::new());
    }
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("sharded/read"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
    ctx.queue().submit([encoder.finish()]);
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait_idle()?;
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
    Ok(out)
}
