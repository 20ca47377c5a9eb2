//! 16-bit storage (f16, bf16) on the GPU against the CPU twin, bit for bit: the variable and every slot
//! after several steps, for every preset and storage combination, sizes that break tiling, split pools,
//! sparse steps (lazy, sequential, Keras 3 scatter), per-variable storage, gradients on the GPU, typed
//! errors that write nothing, f16 subnormals, and the slices a caller binds. Every comparison is of bit
//! patterns, except after a norm clip (see `clipping_with_16_bit_storage`).

mod common;

use common::{ctx, Rng};
use std::iter::zip;
use wgpu_rmsprop::half::{bf16, f16};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Dtype, DuplicateIndices, Error, GpuGradient, Gradient, HalfSlice, Indices, OptimizerOptions,
    Preset, RmsProp, RmsPropConfig, RmsPropConfigBuilder, Slot, SparseMode, StorageTypes, Tensor,
    VarId, VarOptions,
};
use Dtype::{Bf16, F16, F32};

type Opts = OptimizerOptions;
/// A configuration change, for tables of cases.
type Knob = fn(RmsPropConfigBuilder) -> RmsPropConfigBuilder;

fn st(variable: Dtype, gradient: Dtype, state: Dtype) -> StorageTypes {
    StorageTypes {
        variable,
        gradient,
        state,
        copy: None,
    }
}

/// The storage combinations under test.
fn storages() -> [(&'static str, StorageTypes); 5] {
    [
        ("all_f16", StorageTypes::all(F16)),
        ("all_bf16", StorageTypes::all(Bf16)),
        ("x32_state_f16", st(F32, F32, F16)),
        ("x_bf16_g32_state_bf16", st(Bf16, F32, Bf16)),
        ("gradient_bf16", st(F32, Bf16, F32)),
    ]
}

fn with(storage: StorageTypes) -> VarOptions {
    VarOptions {
        storage: Some(storage),
        ..VarOptions::default()
    }
}

fn opts(max_chunk_bytes: Option<u64>, slice_alignment: Option<u64>) -> Opts {
    Opts {
        max_chunk_bytes,
        slice_alignment,
        ..Opts::default()
    }
}

/// Keras with momentum and centered state (every slot), non-default rho.
fn keras_full(storage: StorageTypes) -> RmsPropConfig {
    let b = RmsPropConfig::builder().learning_rate(0.01).rho(0.8);
    let b = b.momentum(0.7).centered(true);
    b.storage(storage).build().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn is_f16_subnormal(x: f32) -> bool {
    x != 0.0 && x.abs() < 2f32.powi(-14)
}

/// Host values in a gradient type (rounded to nearest even).
enum Host {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Host {
    fn new(dtype: Dtype, v: &[f32]) -> Host {
        match dtype {
            F32 | Dtype::Q8 => Host::F32(v.to_vec()),
            F16 => Host::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            Bf16 => Host::Bf16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }
    /// The values as f32 (exact), for the twin.
    fn f32(&self) -> Vec<f32> {
        match self {
            Host::F32(v) => v.clone(),
            Host::F16(v) => v.iter().map(|h| h.to_f32()).collect(),
            Host::Bf16(v) => v.iter().map(|h| h.to_f32()).collect(),
        }
    }
    fn dense(&self) -> Gradient<'_> {
        match self {
            Host::F32(v) => Gradient::Dense(v),
            Host::F16(v) => Gradient::Dense16(HalfSlice::F16(v)),
            Host::Bf16(v) => Gradient::Dense16(HalfSlice::Bf16(v)),
        }
    }
    fn sparse<'a>(&'a self, rows: &'a [i64]) -> Gradient<'a> {
        let indices = Indices::I64(rows);
        let values = match self {
            Host::F32(values) => return Gradient::Sparse { indices, values },
            Host::F16(v) => HalfSlice::F16(v),
            Host::Bf16(v) => HalfSlice::Bf16(v),
        };
        Gradient::Sparse16 { indices, values }
    }
    /// The bytes of a buffer holding these values (16-bit: two per word, an odd count padded).
    fn words(&self) -> Vec<u8> {
        let mut b: Vec<u8> = match self {
            Host::F32(v) => bytemuck::cast_slice(v).to_vec(),
            Host::F16(v) => v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect(),
            Host::Bf16(v) => v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect(),
        };
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }
}

/// A variable's gradient in one step: f32 values, given to the optimizer in its gradient type.
enum G {
    Absent,
    /// `Dense` or `Dense16`.
    Dense(Vec<f32>),
    /// `Sparse` or `Sparse16`: rows and their values.
    Sparse(Vec<i64>, Vec<f32>),
    /// `Gradient::Gpu`: packed values from byte 4 of a buffer just long enough (odd: last word padded).
    Gpu(Vec<f32>),
    /// `Gradient::Resident`: packed values written into the optimizer's gradient slices, the padding
    /// lanes up to `bound_bytes()` with junk (they belong to the variable and are never used).
    Resident(Vec<f32>),
}

impl G {
    fn values(&self) -> Option<&[f32]> {
        match self {
            G::Absent => None,
            G::Dense(v) | G::Sparse(_, v) | G::Gpu(v) | G::Resident(v) => Some(v),
        }
    }
}

/// `n` values of magnitude log-uniform in [1e-8, 1e2), random sign, one in 11 exactly 0: in f16 state
/// the small ones give subnormal velocities (and f16 gradients below 6e-8 round to 0 or subnormals).
fn wide(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut one = |i| {
        let (u, s) = (rng.next_f32(), rng.next_f32());
        let x = 10f32.powf(-3.0 + 5.0 * u).copysign(s);
        if i % 11 == 10 {
            0.0
        } else {
            x
        }
    };
    (0..n).map(&mut one).collect()
}

/// A buffer (COPY_SRC) holding `bytes` from byte `offset` to its end.
fn gpu_buffer(offset: u64, bytes: &[u8]) -> wgpu::Buffer {
    let b = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test gradient"),
        size: offset + bytes.len() as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx().queue().write_buffer(&b, offset, bytes);
    b
}

fn gpu_at(buffer: &wgpu::Buffer, offset: u64) -> GpuGradient<'_> {
    GpuGradient { buffer, offset }
}

/// Distance in ulps of `dtype` between two finite values of that type.
fn ulps(dtype: Dtype, a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let magnitude = match dtype {
            F32 => i64::from(x.to_bits() & 0x7fff_ffff),
            d => i64::from(d.to_bits16(x) & 0x7fff),
        };
        if x.is_sign_negative() {
            -magnitude
        } else {
            magnitude
        }
    };
    (key(a) - key(b)).unsigned_abs() as u32
}

/// `got` equals `want` bit for bit (`tol == 0`), or within `tol` ulps of `dtype`; the worst distance.
fn compare(label: &str, got: &[f32], want: &[f32], dtype: Dtype, tol: u32) -> u32 {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let mut worst = 0;
    for (i, (&g, &w)) in zip(got, want).enumerate() {
        assert_eq!(dtype.round(w), w, "{label}[{i}] not {dtype}");
        if g.to_bits() != w.to_bits() {
            let finite = g.is_finite() && w.is_finite();
            let d = if finite { ulps(dtype, g, w) } else { u32::MAX };
            let (gb, wb) = (g.to_bits(), w.to_bits());
            let m = format!("{label}[{i}]: gpu {g:e} {gb:#x} twin {w:e} {wb:#x}");
            assert!(d <= tol, "{m}");
            worst = worst.max(d);
        }
    }
    worst
}

/// An optimizer, its twin and a generator; variables are named `var{k}`.
struct Pair {
    opt: RmsProp,
    twin: Reference,
    ids: Vec<VarId>,
    rng: Rng,
}

impl Pair {
    /// Variables `(shape, options)` with random initial values in [-2, 2).
    fn new(cfg: &RmsPropConfig, o: Opts, vars: &[(Vec<usize>, VarOptions)], seed: u64) -> Pair {
        let mut p = Pair {
            opt: RmsProp::with_options(ctx(), cfg.clone(), o).unwrap(),
            twin: Reference::new(cfg.clone()),
            ids: Vec::new(),
            rng: Rng::new(seed),
        };
        for (k, (shape, o)) in vars.iter().enumerate() {
            let init = p.rng.vec(shape.iter().product(), 2.0, 0);
            let id = p.opt.add_variable_with(&format!("var{k}"), shape, &init, o);
            p.ids.push(id.unwrap());
            p.twin.add_variable_with(shape, &init, o).unwrap();
        }
        p
    }

    fn write_resident(&mut self, k: usize, values: &[f32]) {
        let dtype = self.twin.vars[k].storage.gradient;
        let junk = Host::new(dtype, &[1234.5; 8]).words();
        for s in self.opt.gradient_slices(self.ids[k]).unwrap() {
            assert_eq!(s.dtype, dtype);
            let mut words = Host::new(dtype, &values[s.first_element..][..s.len]).words();
            words.extend_from_slice(&junk[..s.bound_bytes() as usize - words.len()]);
            ctx().queue().write_buffer(&s.buffer, s.offset, &words);
        }
    }

    /// One step of the optimizer and the twin.
    fn step(&mut self, grads: &[G]) {
        let hosts: Vec<Option<Host>> = zip(grads, &self.twin.vars)
            .map(|(g, v)| Some(Host::new(v.storage.gradient, g.values()?)))
            .collect();
        let mut buffers = Vec::new();
        for (k, g) in grads.iter().enumerate() {
            buffers.push(match (g, &hosts[k]) {
                (G::Gpu(_), Some(h)) => Some(gpu_buffer(4, &h.words())),
                (G::Resident(v), _) => {
                    self.write_resident(k, v);
                    None
                }
                _ => None,
            });
        }
        let values: Vec<Vec<f32>> = hosts.iter().flatten().map(Host::f32).collect();
        let rows: Vec<Vec<usize>> = (grads.iter())
            .map(|g| match g {
                G::Sparse(rows, _) => rows.iter().map(|&r| r as usize).collect(),
                _ => Vec::new(),
            })
            .collect();
        let (mut list, mut rg, mut values) = (Vec::new(), Vec::new(), values.iter());
        for (k, g) in grads.iter().enumerate() {
            let Some(h) = &hosts[k] else {
                rg.push(None);
                continue;
            };
            let (indices, values) = (&rows[k], values.next().unwrap());
            rg.push(Some(match g {
                G::Sparse(..) => RefGradient::Sparse { indices, values },
                _ => RefGradient::Dense(values),
            }));
            let gradient = match (g, &buffers[k]) {
                (G::Sparse(rows, _), _) => h.sparse(rows),
                (_, Some(buffer)) => Gradient::Gpu(gpu_at(buffer, 4)),
                (G::Resident(_), _) => Gradient::Resident,
                _ => h.dense(),
            };
            list.push((self.ids[k], gradient));
        }
        assert_eq!(self.opt.apply(&list).unwrap(), self.twin.iterations + 1);
        self.twin.step(&rg).unwrap();
    }

    /// A dense step of `wide` gradients for every variable.
    fn dense_step(&mut self) {
        let mut g = Vec::new();
        for v in &self.twin.vars {
            g.push(G::Dense(wide(&mut self.rng, v.x.len())));
        }
        self.step(&g);
    }

    /// Compares every variable and the slots it keeps with the twin, bit for bit; with `norm_clip`,
    /// 16-bit values within 1 ulp of their type and f32 ones within `common::assert_close`. Returns the
    /// worst 16-bit distance, the number of f32 values that differ, and every f16 velocity read.
    fn check(&mut self, norm_clip: bool, label: &str) -> (u32, usize, Vec<f32>) {
        let mut out = (0, 0, Vec::new());
        for (k, &id) in self.ids.iter().enumerate() {
            let r = &self.twin.vars[k];
            let (x, s) = (r.storage.variable, r.storage.state);
            let want = [
                (Tensor::Variable, Some(&r.x), x),
                (Tensor::Slot(Slot::Velocity), Some(&r.v), s),
                (Tensor::Slot(Slot::Momentum), r.m.as_ref(), s),
                (Tensor::Slot(Slot::AverageGradient), r.a.as_ref(), s),
            ];
            let want: Vec<_> = want.into_iter().filter(|w| w.1.is_some()).collect();
            let items: Vec<_> = want.iter().map(|w| (id, w.0)).collect();
            // The slots the variable keeps are the twin's (reading one it lacks is an error).
            let slots = self.opt.variable_slots(id).unwrap();
            assert_eq!(slots.len() + 1, items.len(), "{label} var{k}: {slots:?}");
            let got = self.opt.read_many(&items).unwrap();
            for ((t, w, dtype), g) in zip(want, got) {
                let (w, l) = (w.unwrap(), format!("{label} var{k} {t:?} ({dtype})"));
                if dtype == F32 && norm_clip {
                    common::assert_close(&l, &g, w);
                    out.1 += zip(&g, w).filter(|(a, b)| a != b).count();
                } else {
                    out.0 = out.0.max(compare(&l, &g, w, dtype, u32::from(norm_clip)));
                }
                if t == Tensor::Slot(Slot::Velocity) && dtype == F16 {
                    out.2.extend(g);
                }
            }
        }
        out
    }
}

fn dense_vars(sizes: &[usize]) -> Vec<(Vec<usize>, VarOptions)> {
    let var = |&n: &usize| (vec![n], VarOptions::default());
    sizes.iter().map(var).collect()
}

/// Five dense steps of `wide` gradients, checked bit for bit after the first and the last; returns the
/// pair and the f16 velocities read at the end.
fn run_dense(cfg: &RmsPropConfig, o: Opts, sizes: &[usize], seed: u64) -> (Pair, Vec<f32>) {
    let mut p = Pair::new(cfg, o, &dense_vars(sizes), seed);
    let label = format!("{:?} {:?} seed {seed}", cfg.preset_kind(), cfg.storage());
    let mut v = Vec::new();
    for t in 1..=5 {
        p.dense_step();
        if t == 1 || t == 5 {
            v = p.check(false, &format!("{label} step {t}")).2;
        }
    }
    (p, v)
}

#[test]
fn every_preset_and_storage_dense_bit_exact() {
    let mut subnormal = 0;
    for (pi, preset) in Preset::ALL.into_iter().enumerate() {
        // Without and with the momentum and average slots (Keras 2 places epsilon differently).
        let b = || RmsPropConfig::preset(preset).learning_rate(0.01);
        let variants = [b(), b().momentum(0.7).centered(true)];
        for (vi, builder) in variants.into_iter().enumerate() {
            for (si, (_, storage)) in storages().into_iter().enumerate() {
                let cfg = builder.clone().storage(storage).build().unwrap();
                let seed = 1000 + 100 * pi as u64 + 10 * vi as u64 + si as u64;
                let (_, v) = run_dense(&cfg, Opts::default(), &[301, 6], seed);
                subnormal += v.into_iter().filter(|&x| is_f16_subnormal(x)).count();
            }
        }
    }
    assert!(subnormal >= 100, "{subnormal} subnormal velocities");
}

#[test]
fn sizes_that_break_tiling_each_alone() {
    let sizes = [1usize, 3, 255, 256, 257, 1023, 100_003];
    for (si, (_, storage)) in storages().into_iter().enumerate() {
        for (i, &n) in sizes.iter().enumerate() {
            let seed = 300 + 10 * si as u64 + i as u64;
            run_dense(&keras_full(storage), Opts::default(), &[n], seed);
        }
    }
}

#[test]
fn odd_lengths_side_by_side_in_one_pool() {
    // Odd lengths next to each other: each variable's last word holds a pad half.
    let sizes = [1usize, 3, 5, 255, 7, 256, 257, 9, 1023, 1];
    for (si, (sname, storage)) in storages().into_iter().enumerate() {
        let cfg = keras_full(storage);
        let (p, _) = run_dense(&cfg, Opts::default(), &sizes, 400 + si as u64);
        assert_eq!(p.opt.pool_stats().chunks, 1, "{sname}");
        assert_eq!(p.opt.last_step_dispatches(), 1, "{sname}");
    }
}

#[test]
fn variables_split_across_pool_buffers_with_256_byte_slices() {
    let sizes = [3usize, 1001, 257, 5, 2049];
    for (si, (sname, storage)) in storages().into_iter().enumerate() {
        let o = opts(Some(1024), Some(256));
        let (mut p, _) = run_dense(&keras_full(storage), o, &sizes, 500 + si as u64);
        let stats = p.opt.pool_stats();
        assert!(stats.chunks >= 4, "{sname}: {stats:?}");
        assert_eq!(p.opt.last_step_dispatches(), stats.chunks, "{sname}");
        for (k, &id) in p.ids.clone().iter().enumerate() {
            let slices = p.opt.variable_slices(id).unwrap();
            assert!(sizes[k] < 1000 || slices.len() > 1, "{sname} var{k}");
            assert_eq!(slices.iter().map(|s| s.len).sum::<usize>(), sizes[k]);
            let velocity = p.opt.slot_slices(id, Slot::Velocity).unwrap();
            for s in slices.iter().chain(&velocity) {
                assert_eq!(s.offset % 256, 0, "{sname} var{k}: {s:?}");
            }
        }
    }
}

#[test]
fn clipping_with_16_bit_storage() {
    // The GPU sums a norm's squares in f32 along its reduction tree, the twin in f64 rounded once: the
    // clip factor can differ in its last f32 bit, and a stored value can round to the neighbouring
    // 16-bit value (seen on lavapipe: 1 ulp of f16 with global_clipnorm and all f16). So after
    // clipnorm and global_clipnorm 16-bit values may be 1 ulp of their type apart, and f32 roles
    // (mixed storage) are held to `common::assert_close` (cancellation in the momentum makes the small
    // difference hundreds of f32 ulps of a small result). clipvalue is per element: bit for bit.
    let b = || RmsPropConfig::preset(Preset::KerasLegacy).learning_rate(0.01);
    let b = || b().momentum(0.5).centered(true);
    let cases = [
        ("clipvalue", b().clipvalue(0.5), false),
        ("clipnorm", b().clipnorm(1.0), true),
        ("global_clipnorm", b().global_clipnorm(2.0), true),
        ("clipvalue_clipnorm", b().clipvalue(3.0).clipnorm(1.0), true),
    ];
    for (ci, (name, builder, norm)) in cases.into_iter().enumerate() {
        for (si, (sname, storage)) in storages().into_iter().enumerate() {
            let cfg = builder.clone().storage(storage).build().unwrap();
            let seed = 600 + 10 * ci as u64 + si as u64;
            let mut p = Pair::new(&cfg, Opts::default(), &dense_vars(&[257, 3, 1000]), seed);
            let (mut worst, mut inexact) = (0, 0);
            for t in 1..=5 {
                p.dense_step();
                let (w, n, _) = p.check(norm, &format!("{name} {sname} step {t}"));
                (worst, inexact) = (worst.max(w), inexact + n);
            }
            eprintln!("{name} {sname}: 16-bit values within {worst} ulp, {inexact} f32 inexact");
        }
    }
}

/// A sparse gradient of `shape` at step `t`: unsorted rows with repeats (one three times) and the
/// last row, and `wide` values; no rows at all at `t == 2`.
fn sparse_grad(rng: &mut Rng, shape: &[usize], t: usize) -> G {
    let n = shape[0] as i64;
    let mut pick = || (rng.next_f32().abs() * n as f32) as i64 % n;
    let mut rows: Vec<i64> = (0..1 + 2 * pick()).map(|_| pick()).collect();
    rows.extend([rows[0], n - 1, rows[0]]);
    if t == 2 {
        rows.clear();
    }
    let len = rows.len() * shape[1..].iter().product::<usize>();
    G::Sparse(rows, wide(rng, len))
}

#[test]
fn sparse_lazy_sequential_and_keras3_scatter() {
    let m = |p| RmsPropConfig::preset(p).learning_rate(0.02).momentum(0.5);
    let m = |p| m(p).centered(true);
    let keras3 = m(Preset::Keras).sparse_mode(SparseMode::Dense);
    let configs = [
        // Lazy, each listed pair a complete update stored (rounded) before the next.
        ("tf_raw_sequential", m(Preset::TfRaw)),
        // Lazy, duplicates summed (Keras 2 with momentum; TF1 with the velocity starting at 1).
        ("keras_legacy_sum", m(Preset::KerasLegacy)),
        ("tf1_sum", m(Preset::Tf1)),
        // Dense: merged rows scattered into the (16-bit) gradient pool; Keras 3's sums of squares f32.
        ("keras3", keras3.duplicate_indices(DuplicateIndices::Keras3)),
        ("torch_dense_sum", m(Preset::Torch)),
    ];
    // Rows of 3 and 5 elements: neighbouring rows share a u32 word of a 16-bit buffer and are written
    // by concurrent invocations (the atomic half-word stores); rows of 1, and of 4 (whole words).
    let shapes = [vec![11, 3], vec![9, 5], vec![13], vec![6, 4]];
    let vars = shapes.clone().map(|s| (s, VarOptions::default()));
    for (ci, (cname, builder)) in configs.into_iter().enumerate() {
        for (si, (sname, storage)) in storages().into_iter().enumerate() {
            let cfg = builder.clone().storage(storage).build().unwrap();
            let seed = 700 + 10 * ci as u64 + si as u64;
            let mut p = Pair::new(&cfg, Opts::default(), &vars, seed);
            for t in 0..4 {
                let g = shapes.each_ref().map(|s| sparse_grad(&mut p.rng, s, t));
                p.step(&g);
                p.check(false, &format!("{cname} {sname} step {}", t + 1));
            }
        }
    }
}

#[test]
fn per_variable_storage_in_one_optimizer() {
    let cfg = RmsPropConfig::builder().learning_rate(0.01).momentum(0.5);
    let o = |storage, centered, momentum| VarOptions {
        centered,
        momentum,
        ..with(storage)
    };
    let vars = vec![
        (vec![257], VarOptions::default()),
        (vec![51, 5], o(StorageTypes::all(F16), Some(true), None)),
        (vec![3], o(StorageTypes::all(Bf16), None, Some(0.0))),
        (vec![1023], o(st(F32, F32, F16), Some(true), Some(0.9))),
        (vec![5], o(st(F32, Bf16, F32), None, None)),
        (vec![7, 3], o(StorageTypes::all(F16), None, None)),
        (vec![9], o(st(Bf16, F32, Bf16), Some(true), None)),
    ];
    let mut p = Pair::new(&cfg.build().unwrap(), Opts::default(), &vars, 800);
    // One pool per storage combination (the two f16 variables share one).
    assert_eq!(p.opt.pool_stats().chunks, 6);
    for t in 0..6 {
        let mut g = Vec::new();
        for (k, (shape, _)) in vars.iter().enumerate() {
            g.push(match (t, k) {
                (3, 2) => G::Absent, // must not move or decay
                (2 | 4, 1 | 5) => sparse_grad(&mut p.rng, shape, 0),
                (1 | 5, _) => G::Gpu(wide(&mut p.rng, shape.iter().product())),
                _ => G::Dense(wide(&mut p.rng, shape.iter().product())),
            });
        }
        p.step(&g);
        p.check(false, &format!("mixed step {}", t + 1));
    }
}

#[test]
fn state_bytes_halve_with_bf16_state() {
    let n = 1_000_003;
    let stats = |storage| {
        let cfg = RmsPropConfig::builder().momentum(0.9).storage(storage);
        let mut opt = RmsProp::new(ctx(), cfg.build().unwrap()).unwrap();
        opt.add_variable("w", &[n], &vec![0.5; n]).unwrap();
        assert_eq!(opt.slots(), [Slot::Velocity, Slot::Momentum]);
        opt.pool_stats()
    };
    let (f, h) = (stats(StorageTypes::default()), stats(st(F32, F32, Bf16)));
    let near = |a: u64, b: u64, ratio: f64| (a as f64 / b as f64 / ratio - 1.0).abs() < 0.01;
    assert!(f.state_bytes >= 2 * 4 * n as u64, "{f:?}");
    assert!(near(h.state_bytes, f.state_bytes, 0.5), "{h:?} {f:?}");
    assert!(near(h.variable_bytes, f.variable_bytes, 1.0), "{h:?} {f:?}");
    assert!(near(h.gradient_bytes, f.gradient_bytes, 1.0), "{h:?} {f:?}");
    let all = stats(StorageTypes::all(Bf16));
    assert!(near(all.pool_bytes, f.pool_bytes, 0.5), "{all:?} {f:?}");
}

#[test]
fn gpu_and_resident_gradients_of_packed_halves() {
    // 1001 elements span pool buffers of 1 KiB: a Resident gradient is written slice by slice.
    let sizes = [5usize, 257, 1001];
    for (si, (sname, storage)) in storages().into_iter().enumerate() {
        let (cfg, o) = (keras_full(storage), opts(Some(1024), None));
        let mut p = Pair::new(&cfg, o, &dense_vars(&sizes), 900 + si as u64);
        for t in 0..4 {
            let mut g = Vec::new();
            for (k, &n) in sizes.iter().enumerate() {
                let kind: fn(Vec<f32>) -> G = if (t + k) % 2 == 0 {
                    G::Gpu
                } else {
                    G::Resident
                };
                g.push(kind(wide(&mut p.rng, n)));
            }
            p.step(&g);
            p.check(false, &format!("{sname} step {}", t + 1));
        }
    }
}

/// Bit patterns of every variable, its slots and its gradient buffer, and the step count.
fn snapshot(opt: &mut RmsProp) -> (u64, Vec<Vec<u32>>) {
    let mut items = Vec::new();
    for k in 0..opt.num_variables() {
        let id = opt.variable(&format!("var{k}")).unwrap();
        let slots = opt.variable_slots(id).unwrap().into_iter();
        items.extend([(id, Tensor::Variable), (id, Tensor::Gradient)]);
        items.extend(slots.map(|s| (id, Tensor::Slot(s))));
    }
    let values = opt.read_many(&items).unwrap();
    (opt.iterations(), values.iter().map(|v| bits(v)).collect())
}

/// Whether an error is `GradientType` with these types.
fn ty(x: Dtype, y: Dtype) -> impl Fn(&Error) -> bool {
    move |e| match e {
        Error::GradientType { expected, got, .. } => (*expected, *got) == (x, y),
        _ => false,
    }
}

/// The kind and `field` of a configuration or options error.
fn field(e: &Error) -> (&'static str, &'static str) {
    match e {
        Error::InvalidConfig { field, .. } => ("config", field),
        Error::InvalidVarOptions { field, .. } => ("options", field),
        _ => ("", ""),
    }
}

#[test]
fn wrong_gradient_types_and_short_buffers_are_refused_and_write_nothing() {
    let vars = vec![
        (vec![5], with(StorageTypes::all(F16))),
        (vec![2, 3], with(st(F32, Bf16, F32))),
        (vec![4], VarOptions::default()),
    ];
    let cfg = keras_full(StorageTypes::default());
    let mut p = Pair::new(&cfg, Opts::default(), &vars, 1100);
    p.dense_step();
    p.dense_step();
    let (a, b, c) = (p.ids[0], p.ids[1], p.ids[2]);
    let before = snapshot(&mut p.opt);
    let host = |dtype, n| Host::new(dtype, &vec![0.5; n]);
    let (f32_5, f32_4, f32_6) = (host(F32, 5), host(F32, 4), host(F32, 6));
    let (bf16_5, f16_4, f16_6) = (host(Bf16, 5), host(F16, 4), host(F16, 6));
    let rows = [1i64, 0];
    // 5 halves need 3 words (12 bytes): 8 bytes are too few, and so are 16 from offset 8.
    let (short, sixteen) = (gpu_buffer(0, &[0; 8]), gpu_buffer(0, &[0; 16]));
    let sparse_gpu = Gradient::SparseGpu {
        indices: Indices::I64(&rows),
        values: gpu_at(&sixteen, 0),
    };
    let mut refused = |label: &str, list: &[(VarId, Gradient)], want: &dyn Fn(&Error) -> bool| {
        let e = p.opt.apply(list).unwrap_err();
        assert!(want(&e), "{label}: {e:?}");
        assert_eq!(snapshot(&mut p.opt), before, "{label}: written");
    };
    refused("f32 for f16", &[(a, f32_5.dense())], &ty(F16, F32));
    refused("bf16 for f16", &[(a, bf16_5.dense())], &ty(F16, Bf16));
    refused("f16 for f32", &[(c, f16_4.dense())], &ty(F32, F16));
    refused("f16 for bf16", &[(b, f16_6.dense())], &ty(Bf16, F16));
    refused("sparse f32", &[(b, f32_6.sparse(&rows))], &ty(Bf16, F32));
    refused("sparse f16", &[(b, f16_6.sparse(&rows))], &ty(Bf16, F16));
    let any_ty = |e: &Error| matches!(e, Error::GradientType { .. });
    refused("sparse on the gpu", &[(b, sparse_gpu)], &any_ty);
    let buf = |e: &Error| matches!(e, Error::GradientBuffer { .. });
    let short = Gradient::Gpu(gpu_at(&short, 0));
    let from_8 = Gradient::Gpu(gpu_at(&sixteen, 8));
    refused("short buffer", &[(a, short)], &buf);
    refused("short from offset 8", &[(a, from_8)], &buf);
    // A valid gradient in the same step is not applied either.
    let both = [(c, f32_4.dense()), (a, f32_5.dense())];
    refused("valid then wrong", &both, &ty(F16, F32));
    // 12 bytes from offset 4 of 16: accepted, and the step is the twin's.
    let g = vec![1.0, -2.0, 0.25, 3.0, -0.5];
    p.step(&[G::Gpu(g), G::Absent, G::Absent]);
    p.check(false, "after the refused steps");
}

#[test]
fn keras_base_features_with_16_bit_storage_are_refused() {
    let base: [(&str, Knob); 3] = [
        ("use_ema", |b| b.use_ema(true)),
        ("loss_scale_factor", |b| b.loss_scale_factor(128.0)),
        ("accumulation", |b| b.gradient_accumulation_steps(2)),
    ];
    for (name, f) in base {
        let b = f(RmsPropConfig::builder());
        for (sname, storage) in storages() {
            let e = b.clone().storage(storage).build().unwrap_err();
            assert_eq!(field(&e), ("config", "storage"), "{name} {sname}");
            // Per variable: refused when the variable is added, and nothing is added.
            let mut opt = RmsProp::new(ctx(), b.clone().build().unwrap()).unwrap();
            let e = opt.add_variable_with("w", &[3], &[1.0; 3], &with(storage));
            let e = field(&e.unwrap_err());
            assert_eq!((e, opt.num_variables()), (("options", "storage"), 0));
        }
    }
}

#[test]
fn storage_is_fixed_once_a_variable_is_added() {
    let f16_all = with(StorageTypes::all(F16));
    let vars = vec![(vec![5], f16_all.clone()), (vec![3], VarOptions::default())];
    let cfg = keras_full(StorageTypes::default());
    let mut p = Pair::new(&cfg, Opts::default(), &vars, 1200);
    p.dense_step();
    let before = snapshot(&mut p.opt);
    // To f32 (the configuration's), from f32 to bf16, from f16 to bf16: refused by both.
    for (k, d) in [(0, None), (0, Some(Bf16)), (1, Some(Bf16))] {
        let o = d.map_or(VarOptions::default(), |d| with(StorageTypes::all(d)));
        let e = p.opt.set_variable_options(p.ids[k], &o).unwrap_err();
        assert_eq!(field(&e), ("options", "storage"), "var{k}: {e:?}");
        let t = p.twin.set_variable_options(k, &o).unwrap_err();
        assert_eq!(field(&t), ("options", "storage"));
        assert_eq!(p.opt.variable_options(p.ids[k]).unwrap(), &vars[k].1);
    }
    assert_eq!(snapshot(&mut p.opt), before);
    // The same storage, given again or left to the configuration, with other options: accepted.
    let fewer_slots = VarOptions {
        centered: Some(false),
        momentum: Some(0.2),
        ..f16_all
    };
    for (k, o) in [(0, fewer_slots), (1, with(StorageTypes::default()))] {
        p.opt.set_variable_options(p.ids[k], &o).unwrap();
        p.twin.set_variable_options(k, &o).unwrap();
    }
    p.dense_step();
    p.check(false, "after the option changes");
    // Initial values from a GPU buffer need an f32 variable.
    let init = gpu_buffer(0, bytemuck::cast_slice(&[0.5f32; 4]));
    let f16_state = st(F32, F16, F16);
    for storage in [StorageTypes::all(F16), st(Bf16, F32, F32), f16_state] {
        let mut opt = RmsProp::new(ctx(), keras_full(storage)).unwrap();
        match opt.add_variable_from_buffer("w", &[4], gpu_at(&init, 0)) {
            Ok(id) => assert!(storage == f16_state && opt.read_variable(id).unwrap() == [0.5; 4]),
            Err(e) => assert_eq!((field(&e).1, opt.num_variables()), ("storage", 0)),
        }
    }
}

#[test]
fn f16_subnormals_zero_and_overflow_round_trip() {
    let tiny = 2f32.powi(-24); // the smallest f16 subnormal
    let multiples = [1.0, 2.0, 3.0, 511.0, 512.0, 1023.0, -5.0];
    let mut init = multiples.map(|k| k * tiny).to_vec();
    init.extend([
        2f32.powi(-14), // the smallest normal
        1.5 * tiny,     // a tie: to the even 2 * tiny
        2.5 * tiny,     // a tie: to the even 2 * tiny
        3.3e-6,         // to a subnormal
        -1e-7,          // to -2 * tiny
        2f32.powi(-25), // a tie with 0: to 0
        1e-9,           // to 0
        -2.9e-8,        // to -0
        1e-40,          // an f32 denormal: to 0
        -0.0,
        65504.0, // the largest finite f16
        65519.0, // to 65504
        65520.0, // to inf
        -7e4,    // to -inf
        f32::INFINITY,
        1.0 + 2f32.powi(-11), // a tie: to 1
    ]);
    let expected: Vec<f32> = init.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert!(expected.iter().filter(|&&x| is_f16_subnormal(x)).count() >= 10);
    // A starting velocity that is an f16 subnormal too.
    let cfg = RmsPropConfig::builder().learning_rate(0.01);
    let cfg = cfg
        .initial_accumulator_value(1e-7)
        .storage(StorageTypes::all(F16));
    let mut p = Pair::new(&cfg.build().unwrap(), Opts::default(), &dense_vars(&[3]), 0);
    let n = init.len();
    let id = p.opt.add_variable("var1", &[n], &init).unwrap();
    p.ids.push(id);
    p.twin.add_variable(&[n], &init);
    assert_eq!(bits(&p.opt.read_variable(id).unwrap()), bits(&expected));
    let (v, sub) = (
        p.opt.read_slot(id, Slot::Velocity).unwrap(),
        F16.round(1e-7),
    );
    assert!(is_f16_subnormal(sub) && v.iter().all(|&v| v == sub));
    // A zero gradient: the kernel unpacks and repacks every element (x - 0 = x, the velocity decays).
    p.step(&[G::Dense(vec![0.0; 3]), G::Dense(vec![0.0; n])]);
    p.check(false, "zero gradient");
    assert_eq!(bits(&p.opt.read_variable(id).unwrap()), bits(&expected));
    // bf16 has f32's exponent range: its subnormals (f32 denormals) are kept as they are.
    let mut opt = RmsProp::new(ctx(), keras_full(StorageTypes::all(Bf16))).unwrap();
    // Subnormals; the largest finite value and one that rounds to inf; a tie (1 + 2^-8) to 1.
    let values = [1e-40f32, -3e-39, 1e-45, 3e38, 3.4e38, 1.0039062, 0.1];
    let id = opt.add_variable("w", &[values.len()], &values).unwrap();
    let want = values.map(|x| bf16::from_f32(x).to_f32());
    assert_eq!(bits(&opt.read_variable(id).unwrap()), bits(&want));
}

#[test]
fn slices_of_16_bit_variables_are_aligned_and_bound_whole_words() {
    let device_align = u64::from(ctx().device().limits().min_storage_buffer_offset_alignment);
    let sizes = [1usize, 3, 5, 257, 6, 4];
    for alignment in [None, Some(256)] {
        let align = device_align.max(alignment.unwrap_or(0));
        for (sname, storage) in storages() {
            let cfg = keras_full(storage);
            let mut p = Pair::new(&cfg, opts(None, alignment), &dense_vars(&sizes), 1300);
            let roles = [storage.variable, storage.gradient, storage.state];
            for (role, dtype) in roles.into_iter().enumerate() {
                let mut all = Vec::new();
                for (k, &id) in p.ids.iter().enumerate() {
                    let s = match role {
                        0 => p.opt.variable_slices(id),
                        1 => p.opt.gradient_slices(id),
                        _ => p.opt.slot_slices(id, Slot::Velocity),
                    };
                    let s = s.unwrap().pop().unwrap();
                    let label = format!("{sname} {alignment:?} role {role} var{k}: {s:?}");
                    // Whole vec4s bound: 8 bytes (two words of halves) for a 16-bit type.
                    let (n, vec4) = (sizes[k], 4 * dtype.bytes());
                    let got = (
                        s.dtype,
                        s.len,
                        s.first_element,
                        s.offset % align,
                        s.bound_bytes(),
                    );
                    let want = (dtype, n, 0, 0, n.div_ceil(4) as u64 * vec4);
                    assert_eq!(got, want, "{label}");
                    all.push(s);
                }
                // The bound ranges of the variables in one buffer do not overlap.
                all.sort_by_key(|s| s.offset);
                for w in all.windows(2) {
                    let apart = w[0].offset + w[0].bound_bytes() <= w[1].offset;
                    assert!(w[0].buffer != w[1].buffer || apart, "{sname}: {w:?}");
                }
            }
            // Stepping the layout the slices describe stays bit for bit.
            p.dense_step();
            p.check(false, sname);
        }
    }
}
