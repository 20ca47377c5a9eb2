//! `SparseMode::LazyExact` tests' harness: the GPU in LazyExact, its twin in LazyExact and the twin in
//! Dense mode, fed the same steps and compared with stated tolerances.

use super::{ctx, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Gradient, Indices, Preset, RmsProp, RmsPropConfig, RmsPropConfigBuilder, Schedule, Slot,
    SparseMode, VarId,
};

/// Every slot and the variable of `opt`'s variables against the twin's, within `rtol` (relative to
/// the largest magnitude of the tensor, so that values decayed towards 0 are judged at its scale).
pub fn close(opt: &mut RmsProp, r: &Reference, ids: &[VarId], rtol: f32, label: &str) {
    for (k, &id) in ids.iter().enumerate() {
        let s = &r.vars[k];
        let mut pairs = vec![
            ("x", opt.read_variable(id).unwrap(), s.x.clone()),
            ("v", opt.read_slot(id, Slot::Velocity).unwrap(), s.v.clone()),
        ];
        if let Some(m) = &s.m {
            pairs.push(("m", opt.read_slot(id, Slot::Momentum).unwrap(), m.clone()));
        }
        if let Some(a) = &s.a {
            let got = opt.read_slot(id, Slot::AverageGradient).unwrap();
            pairs.push(("a", got, a.clone()));
        }
        for (name, got, want) in pairs {
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30);
            let bad = (0..got.len())
                .filter(|&i| (got[i] - want[i]).abs() > rtol * scale)
                .collect::<Vec<_>>();
            if let Some(&i) = bad.first() {
                panic!(
                    "{label} var{k} {name}: {} of {} off by more than {rtol} x {scale}, first [{i}]: \
                     {} vs {}",
                    bad.len(),
                    got.len(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

/// The GPU in LazyExact, its twin, and the twin in Dense mode, fed the same steps.
pub struct Trio {
    pub opt: RmsProp,
    pub exact: Reference,
    pub dense: Reference,
    pub ids: Vec<VarId>,
}

impl Trio {
    pub fn new(b: RmsPropConfigBuilder, shapes: &[[usize; 2]], seed: u64) -> Self {
        let config = b
            .clone()
            .sparse_mode(SparseMode::LazyExact)
            .build()
            .unwrap();
        let dense_config = b.sparse_mode(SparseMode::Dense).build().unwrap();
        let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
        let (mut exact, mut dense) = (Reference::new(config), Reference::new(dense_config));
        let mut rng = Rng::new(seed);
        let mut ids = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            let init = rng.vec(shape[0] * shape[1], 1.0, 0);
            ids.push(opt.add_variable(&format!("t{k}"), shape, &init).unwrap());
            exact.add_variable(shape, &init);
            dense.add_variable(shape, &init);
        }
        Trio {
            opt,
            exact,
            dense,
            ids,
        }
    }

    /// One step: variable `k` gets rows `rows[k]` (duplicates allowed) with values from `rng`, or a
    /// dense gradient where `rows[k]` is `None`.
    pub fn step(&mut self, rows: &[Option<Vec<usize>>], rng: &mut Rng, scale: f32) {
        let mut values = Vec::new();
        for (k, r) in rows.iter().enumerate() {
            let row_len = self.exact.vars[k].shape[1];
            let n = match r {
                Some(r) => r.len() * row_len,
                None => self.exact.vars[k].x.len(),
            };
            values.push(rng.vec(n, scale, 4));
        }
        let i64s: Vec<Vec<i64>> = rows
            .iter()
            .map(|r| r.iter().flatten().map(|&i| i as i64).collect())
            .collect();
        let g: Vec<(VarId, Gradient)> = (0..rows.len())
            .map(|k| {
                let grad = match &rows[k] {
                    Some(_) => Gradient::Sparse {
                        indices: Indices::I64(&i64s[k]),
                        values: &values[k],
                    },
                    None => Gradient::Dense(&values[k]),
                };
                (self.ids[k], grad)
            })
            .collect();
        self.opt.apply(&g).unwrap();
        let rg: Vec<Option<RefGradient>> = (0..rows.len())
            .map(|k| {
                Some(match &rows[k] {
                    Some(r) => RefGradient::Sparse {
                        indices: r,
                        values: &values[k],
                    },
                    None => RefGradient::Dense(&values[k]),
                })
            })
            .collect();
        self.exact.step(&rg).unwrap();
        self.dense.step(&rg).unwrap();
    }

    /// The GPU (read: caught up) against the twin caught up (tight) and the dense twin (`rtol`).
    pub fn check(&mut self, rtol: f32, label: &str) {
        self.exact.catch_up();
        close(
            &mut self.opt,
            &self.exact,
            &self.ids,
            2e-6,
            &format!("{label} (twin)"),
        );
        close(
            &mut self.opt,
            &self.dense,
            &self.ids,
            rtol,
            &format!("{label} (dense)"),
        );
    }
}

/// A rate halving every 3 steps.
pub fn sched() -> Schedule {
    Schedule::ExponentialDecay {
        initial_learning_rate: 0.05,
        decay_steps: 3.0,
        decay_rate: 0.5,
        staircase: false,
    }
}

pub fn keras(lr: f64) -> RmsPropConfigBuilder {
    RmsPropConfig::preset(Preset::Keras).learning_rate(lr)
}

/// What the GPU holds for `id` (its variable, or `slot`), copied from its slices: no catch-up.
pub fn raw(opt: &mut RmsProp, id: VarId, slot: Option<Slot>) -> Vec<f32> {
    let slices = match slot {
        None => opt.variable_slices(id).unwrap(),
        Some(s) => opt.slot_slices(id, s).unwrap(),
    };
    let bytes: u64 = slices.iter().map(|s| s.len as u64 * 4).sum();
    let device = ctx().device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes.next_multiple_of(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    let mut at = 0;
    for s in &slices {
        let n = s.len as u64 * 4;
        enc.copy_buffer_to_buffer(&s.buffer, s.offset, &staging, at, n);
        at += n;
    }
    ctx().queue().submit([enc.finish()]);
    map(&staging)
}

pub fn map(buffer: &wgpu::Buffer) -> Vec<f32> {
    buffer.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    ctx()
        .device()
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
        .unwrap();
    let out = bytemuck::cast_slice(&buffer.slice(..).get_mapped_range().unwrap()).to_vec();
    buffer.unmap();
    out
}
