//! The variable registry and where everything sits in the pools: pure bookkeeping, no GPU.

use crate::dtype::StorageTypes;
use crate::error::{Error, Result};
use crate::pool::{self, Segment};
use crate::step::types::VarId;
use crate::var_options::{VarHyper, VarOptions};

/// One variable: its name, shape and where its elements sit in the pools.
#[derive(Debug, Clone)]
pub(crate) struct Variable {
    pub name: String,
    pub shape: Vec<usize>,
    pub len: usize,
    /// Elements per row along axis 0 (the whole variable for a scalar).
    pub row_len: usize,
    pub segments: Vec<Segment>,
    /// The options as the caller gave them.
    pub options: VarOptions,
    /// What the kernels read for it (the options resolved against the configuration, name exclusions
    /// included): its entries of the options table.
    pub hyper: VarHyper,
    /// The storage types of its buffers.
    pub storage: StorageTypes,
    /// Its entry in a per-row side buffer, in words: `SparseMode::LazyExact`'s row counters
    /// (`Gpu::lazy_rows`: its step count, then one per row), or its row-wise velocity
    /// (`Gpu::row_velocity`: one per row; the two never meet, see `var_options::rowwise_conflict`).
    pub rows_base: u32,
    /// ... and its history of skipped-step maps under a schedule (in words; see
    /// `rmsprop_lazy_exact.wgsl`).
    pub hist_base: u32,
    /// ... and its lazy steps recorded since its counts were last reset (an upper bound of the GPU's
    /// count: steps the non-finite policy skips count here too; an abandoned step sets it to the
    /// history's length, so that the next lazy step resets).
    pub lazy_steps: u32,
    /// One velocity per row ([`VarOptions::rowwise_velocity`]): the velocity lives in
    /// `Gpu::row_velocity` from `rows_base`, its chunks keep no element-wise velocity.
    pub rowwise: bool,
    /// `SparseMode::LazyExact`: a lazy step may have left rows behind (a dense step, a read or a
    /// checkpoint catches them up first).
    pub stale: bool,
}

impl Variable {
    /// Rows along axis 0 (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.len / self.row_len.max(1)
    }

    /// Whether the variable ignores its gradients.
    pub fn frozen(&self) -> bool {
        self.options.frozen
    }
}

/// One pool chunk's bookkeeping (its buffers live in [`crate::step::gpu::ChunkBuffers`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkLayout {
    /// Capacity of each buffer, in vec4.
    pub capacity: u64,
    /// Vec4 in use (alignment padding included).
    pub used: u64,
    /// `(begin, end, variable)` in vec4, in placement order (ascending `begin`).
    pub segments: Vec<(u64, u64, usize)>,
    /// The layout version at which this chunk's buffers were last replaced (or created).
    pub moved: u64,
    /// The storage types of its buffers: a variable goes into a chunk of its own storage types.
    pub storage: StorageTypes,
    /// It holds variables with a row-wise velocity only, and no velocity buffer (a variable goes into
    /// a chunk of its own kind).
    pub rowwise: bool,
}

/// Every variable and chunk of one optimizer.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub optimizer: u32,
    pub variables: Vec<Variable>,
    pub chunks: Vec<ChunkLayout>,
    /// Capacity of one chunk, in vec4.
    pub chunk_limit: u64,
    /// Alignment of every variable's first element in f32 buffers, in vec4 (twice as many in chunks
    /// with a 16-bit buffer, whose vec4s are half as long: see [`Layout::align_of`]).
    pub align_vec4: u64,
    /// Bumped whenever a pool buffer is replaced (grown): slices of it taken before are stale.
    pub version: u64,
    /// Vec4 per block of 8-bit quantized state: variables in chunks with q8 state start on a block.
    pub q8_block: u64,
    /// `SparseMode::LazyExact`: words of the row counters given to variables so far.
    pub lazy_rows_used: u64,
    /// Words of the row-wise velocity buffer given to variables so far.
    pub row_velocity_used: u64,
}

/// Where a new variable goes, and which chunks must grow to hold it.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub segments: Vec<Segment>,
    /// Fill level of every chunk after the placement (new chunks included).
    pub used: Vec<u64>,
    /// `(chunk, new capacity in vec4)` for each chunk to allocate or grow.
    pub grow: Vec<(usize, u64)>,
    /// The storage types of the variable (and of the chunks it goes into).
    pub storage: StorageTypes,
    /// A row-wise velocity: it goes into row-wise chunks, in whole rows.
    pub rowwise: bool,
}

impl Layout {
    pub fn new(optimizer: u32, chunk_limit: u64, align_vec4: u64) -> Self {
        Layout {
            optimizer,
            variables: Vec::new(),
            chunks: Vec::new(),
            chunk_limit,
            align_vec4,
            version: 0,
            q8_block: 64,
            lazy_rows_used: 0,
            row_velocity_used: 0,
        }
    }

    pub fn id(&self, index: usize) -> VarId {
        VarId {
            optimizer: self.optimizer,
            index: index as u32,
        }
    }

    pub fn var(&self, id: VarId) -> Result<&Variable> {
        if id.optimizer != self.optimizer {
            return Err(Error::UnknownVariable(format!(
                "{id:?} (from another optimizer)"
            )));
        }
        self.variables
            .get(id.index as usize)
            .ok_or_else(|| Error::UnknownVariable(format!("{id:?}")))
    }

    pub fn find(&self, name: &str) -> Result<VarId> {
        self.variables
            .iter()
            .position(|v| v.name == name)
            .map(|i| self.id(i))
            .ok_or_else(|| Error::UnknownVariable(format!("{name:?}")))
    }

    /// Alignment of a variable's first element in a chunk of `storage`, in vec4: the byte alignment
    /// holds in every buffer of the chunk, the 16-bit ones included (the copy of the variables too:
    /// its slices are bound by the caller).
    pub fn align_of(&self, storage: StorageTypes) -> u64 {
        let align = self.align_bytes_of(storage);
        if storage.state == crate::dtype::Dtype::Q8 {
            // Blocks never straddle variables.
            align.max(self.q8_block)
        } else {
            align
        }
    }

    /// [`Layout::align_of`] for the byte alignment alone.
    fn align_bytes_of(&self, storage: StorageTypes) -> u64 {
        let narrow = [storage.variable, storage.gradient, storage.state]
            .into_iter()
            .chain(storage.copy)
            .any(|d| d.bytes() == 2);
        if narrow {
            self.align_vec4 * 2
        } else {
            self.align_vec4
        }
    }

    /// Checks a new variable (name, shape, length) and plans where it goes among the chunks of its
    /// storage types, changing nothing.
    #[cfg(test)]
    pub fn plan_variable(
        &self,
        name: &str,
        shape: &[usize],
        init_len: usize,
        storage: StorageTypes,
    ) -> Result<Placement> {
        self.plan_variable_rows(name, shape, init_len, storage, false)
    }

    /// [`Layout::plan_variable`], for a variable with a row-wise velocity when `rowwise`: among the
    /// row-wise chunks, every part of it whole rows (a row longer than a chunk is refused).
    pub fn plan_variable_rows(
        &self,
        name: &str,
        shape: &[usize],
        init_len: usize,
        storage: StorageTypes,
        rowwise: bool,
    ) -> Result<Placement> {
        if self.variables.iter().any(|v| v.name == name) {
            return Err(Error::DuplicateVariable { name: name.into() });
        }
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| (n as u64) <= u64::from(u32::MAX))
            .ok_or_else(|| Error::InvalidShape {
                name: name.into(),
                shape: shape.to_vec(),
                reason: "has more elements than the kernels can index (2^32 - 1)",
            })?;
        if init_len != len {
            return Err(Error::InitLength {
                name: name.into(),
                shape: shape.to_vec(),
                expected: len,
                got: init_len,
            });
        }
        if self.variables.len() >= (u32::MAX / 2) as usize {
            return Err(Error::InvalidShape {
                name: name.into(),
                shape: shape.to_vec(),
                reason: "cannot be added: too many variables",
            });
        }
        // Placed among the chunks of its storage types only (in their order); new chunks go after all.
        let mine: Vec<usize> = (0..self.chunks.len())
            .filter(|&c| self.chunks[c].storage == storage && self.chunks[c].rowwise == rowwise)
            .collect();
        let mut local: Vec<u64> = mine.iter().map(|&c| self.chunks[c].used).collect();
        let align = self.align_of(storage);
        let unit = match rowwise {
            true => {
                let row_len = shape.iter().skip(1).product::<usize>().max(1) as u64;
                let unit = row_len / gcd(row_len, 4);
                if unit > self.chunk_limit {
                    return Err(Error::InvalidShape {
                        name: name.into(),
                        shape: shape.to_vec(),
                        reason: "has rows longer than one pool buffer, which a row-wise velocity \
                                 cannot split",
                    });
                }
                unit
            }
            false => 1,
        };
        let mut segments = pool::place_in_units(&mut local, self.chunk_limit, len, align, unit);
        let global = |j: usize| {
            mine.get(j)
                .copied()
                .unwrap_or(self.chunks.len() + j - mine.len())
        };
        for s in &mut segments {
            s.chunk = global(s.chunk);
        }
        let mut used: Vec<u64> = self.chunks.iter().map(|c| c.used).collect();
        for (j, &u) in local.iter().enumerate() {
            let c = global(j);
            if c >= used.len() {
                used.resize(c + 1, 0);
            }
            used[c] = u;
        }
        let grow = used
            .iter()
            .enumerate()
            .filter_map(|(index, &u)| {
                let current = self.chunks.get(index).map_or(0, |c| c.capacity);
                (u > current).then(|| (index, pool::grown_capacity(current, u, self.chunk_limit)))
            })
            .collect();
        Ok(Placement {
            segments,
            used,
            grow,
            storage,
            rowwise,
        })
    }

    /// Vec4s from a segment's start to where the next variable may start: its own vec4s and the
    /// alignment padding after them (owned by no other variable). Host gradients are written with that
    /// padding as zeros, so that the writes of variables placed one after another merge into one copy
    /// (with 32-byte alignment, 1,000 four-element gradients were 1,000 copies: 0.7 ms of host time).
    pub fn padded_vec4s(&self, s: &Segment) -> u64 {
        // A power of two: a mask, not a division (this runs twice per host gradient per step).
        let mask = self.align_of(self.chunks[s.chunk].storage) - 1;
        let end = (s.offset + s.vec4s() + mask) & !mask;
        end.min(self.chunks[s.chunk].capacity) - s.offset
    }

    /// Entries of `var_info` (16 bytes each) the per-variable state, the segment map and the options
    /// table need: one per variable, then two per segment (see [`Layout::segment_map`]), then two per
    /// variable (see [`Layout::options_table`]).
    pub fn var_info_entries(&self) -> u64 {
        self.options_base() + 2 * self.variables.len() as u64
    }

    /// The first entry of the options table in `var_info`: after the per-variable entries and the
    /// segment map.
    pub fn options_base(&self) -> u64 {
        let segments: usize = self.chunks.iter().map(|c| c.segments.len()).sum();
        (self.variables.len() + 2 * segments) as u64
    }

    /// The options table the kernels read with `VAR_OPTIONS` (`hyper` in `rmsprop_update.wgsl`): two
    /// entries per variable, in variable order, from [`Layout::options_base`] on.
    pub fn options_table(&self) -> Vec<[u32; 4]> {
        self.variables
            .iter()
            .flat_map(|v| v.hyper.entries())
            .collect()
    }

    /// The segment map the dense kernel searches for the variable of a vec4 (`variable_of` in
    /// `rmsprop_dense.wgsl`), placed in `var_info` after the per-variable entries: per chunk, its
    /// segments' first vec4 (ascending), then their variables, each in the `flags` word of an entry.
    /// Returns each chunk's (first entry, segment count) and the entries.
    pub fn segment_map(&self) -> (Vec<(u32, u32)>, Vec<[u32; 4]>) {
        let mut at = self.variables.len() as u32;
        let mut regions = Vec::with_capacity(self.chunks.len());
        let mut entries = Vec::new();
        for (ci, c) in self.chunks.iter().enumerate() {
            let n = c.segments.len() as u32;
            regions.push((at, n));
            // The segment's first element in its variable rides in the first word (stochastic
            // rounding hashes it).
            entries.extend(c.segments.iter().map(|&(begin, _, var)| {
                let first = self.variables[var]
                    .segments
                    .iter()
                    .find(|s| s.chunk == ci && s.offset == begin)
                    .map_or(0, |s| s.first_elem as u32);
                [first, 0, 0, begin as u32]
            }));
            entries.extend(c.segments.iter().map(|&(_, _, var)| [0, 0, 0, var as u32]));
            at += 2 * n;
        }
        (regions, entries)
    }

    /// How the buffers of `kind` lay out their elements in a chunk of `storage`.
    pub fn elems(&self, kind: crate::pool::Kind, storage: StorageTypes) -> crate::pool::Elems {
        crate::pool::Elems {
            dtype: kind.dtype(storage),
            block: self.q8_block,
        }
    }

    /// Records a planned variable (after its buffers were allocated) with its options and what they
    /// resolve to. Returns its handle.
    pub fn commit_variable(
        &mut self,
        name: &str,
        shape: &[usize],
        p: Placement,
        options: VarOptions,
        hyper: VarHyper,
    ) -> VarId {
        let index = self.variables.len();
        if p.grow.iter().any(|&(c, _)| c < self.chunks.len()) {
            self.version += 1;
        }
        for &(chunk, capacity) in &p.grow {
            if chunk >= self.chunks.len() {
                self.chunks.resize(chunk + 1, ChunkLayout::default());
            }
            self.chunks[chunk].capacity = capacity;
            self.chunks[chunk].moved = self.version;
            self.chunks[chunk].storage = p.storage;
            self.chunks[chunk].rowwise = p.rowwise;
        }
        for (chunk, u) in self.chunks.iter_mut().zip(&p.used) {
            chunk.used = *u;
        }
        for s in &p.segments {
            self.chunks[s.chunk]
                .segments
                .push((s.offset, s.offset + s.vec4s(), index));
        }
        let len = shape.iter().product::<usize>();
        let row_len = if shape.is_empty() || shape[0] == 0 {
            len.max(1)
        } else {
            len / shape[0]
        };
        self.variables.push(Variable {
            name: name.into(),
            shape: shape.to_vec(),
            len,
            row_len,
            segments: p.segments,
            options,
            hyper,
            storage: p.storage,
            rows_base: 0,
            rowwise: p.rowwise,
            hist_base: 0,
            lazy_steps: 0,
            stale: false,
        });
        self.id(index)
    }
}

/// Greatest common divisor.
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
impl Layout {
    /// Records a planned variable without options (tests).
    pub fn commit_plain(&mut self, name: &str, shape: &[usize], p: Placement) -> VarId {
        let config = crate::config::RmsPropConfig::default();
        let hyper = VarOptions::default().hyper(&config);
        self.commit_variable(name, shape, p, VarOptions::default(), hyper)
    }
}
