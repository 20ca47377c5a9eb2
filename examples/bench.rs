//! Benchmarks of the GPU step, one JSON object per line.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--sweep] [--dense N VARIANT] [--case NAME] [--reps N]
//!     [--dtype f32|f16|bf16 | --storage var=T,grad=T,state=T]
//! ```
//!
//! VARIANT: plain, momentum, centered, centered_momentum. NAME: host, dense, dense_options, scale,
//! dense_many, clip_many, sparse, rowwise. Unknown options and malformed values exit with status 2.
//!
//! Each case times the GPU work to completion after warm-up and reports the median, min and max over the
//! repetitions: with timestamp queries written around the step in its encoder where the device has
//! `TIMESTAMP_QUERY_INSIDE_ENCODERS` (`"timing": "timestamp_query"`), else from encoding to the end of a
//! wait for the queue (`"submit_wait"`). `gb_s` counts the bytes RMSprop must move: 20/28/28/36 bytes per
//! element (plain/momentum/centered/centered_momentum); for sparse steps, the touched rows' state plus
//! the listed values and indices. `minimal_kernel` is a WGSL kernel with the same loads and stores and
//! trivial arithmetic (`examples/bench_minimal.wgsl`); it and the step it is compared with are timed
//! alternately, repetition by repetition, so that both see the same machine. `host` cases report the
//! time the calling thread spends per step (validate, encode, submit; not waiting) above an empty submit.
//! `dense_options` is the dense step of a variable with per-variable options (the kernels then read the
//! options table), against the minimal kernel. `rowwise` is a 1M x 64 table with one velocity per row
//! (`VarOptions::rowwise_velocity`) against the same table with the element-wise velocity, timed
//! alternately: a dense step (resident gradients) and a lazy sparse step (the `sparse` case's indices),
//! each line with `velocity` (`element` or `rowwise`), `step` and `state_bytes`.
//!
//! `--dtype` / `--storage` set the storage types of every optimizer of the run (`--dtype bf16`: variables
//! and state bf16; `f16`: state f16, variables f32; gradients f32; `--storage` names each role, the
//! others f32). Cases that step with f32 host gradients (`host`, `sparse`) keep f32 gradients. Every line
//! has `dtype` (`{"variable":..,"gradient":..,"state":..}`, what its optimizer stores) and
//! `state_bytes` (`PoolStats::state_bytes` of its optimizer; a `minimal_kernel` line has those of the step
//! it is compared with); the bytes behind `gb_s` count each role in its type (`2 variable + gradient + 2
//! state x slots` bytes per element), and the minimal kernel moves as many: each of its f32 buffers holds
//! its role's bytes (a 16-bit role's buffer has half the vec4s).

use std::time::Instant;

use serde_json::{json, Value};
use wgpu_rmsprop::{
    Dtype, GpuContext, Gradient, Indices, OptimizerOptions, RmsProp, SparseMode, StorageTypes,
    VarId, VarOptions,
};

#[path = "../benches/support/mod.rs"]
mod support;
use support::{
    bytes_per_element_in, dense_optimizer_in, fill_gradients, resident, sparse_indices,
    state_slots, stats, variant_builder, variant_config_in, Minimal, Stats, Timer,
};
#[path = "support/cli.rs"]
mod cli;

const USAGE: &str =
    "usage: bench [--quick] [--sweep] [--dense N VARIANT] [--case NAME] [--reps N] \
[--dtype f32|f16|bf16 | --storage var=T,grad=T,state=T]";
const VARIANTS: [&str; 4] = ["plain", "momentum", "centered", "centered_momentum"];
const CASES: [&str; 8] = [
    "host",
    "dense",
    "dense_options",
    "scale",
    "dense_many",
    "clip_many",
    "sparse",
    "rowwise",
];

/// Microseconds the calling thread spends in `f` and in an empty submit, alternately (the GPU is
/// drained outside the timing), after 20 untimed rounds.
fn time_host(ctx: &GpuContext, reps: usize, mut f: impl FnMut()) -> (Stats, Stats) {
    let timed = |g: &mut dyn FnMut()| {
        let start = Instant::now();
        g();
        let us = start.elapsed().as_secs_f64() * 1e6;
        ctx.wait_idle().unwrap();
        us
    };
    let mut empty = || {
        let encoder = ctx.device().create_command_encoder(&Default::default());
        ctx.queue().submit([encoder.finish()]);
    };
    let (mut tf, mut te) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for i in 0..reps + 20 {
        let (a, b) = (timed(&mut f), timed(&mut empty));
        if i >= 20 {
            tf.push(a);
            te.push(b);
        }
    }
    (stats(tf), stats(te))
}

/// One optimizer step recorded for the timer.
fn step(
    timer: &Timer,
    ctx: &GpuContext,
    opt: &mut RmsProp,
    grads: &[(VarId, Gradient<'_>)],
) -> f64 {
    let mut recorded = None;
    let (ms, index) = timer.once_submitted(ctx, |e| recorded = Some(opt.record(e, grads).unwrap()));
    opt.submitted(recorded.unwrap(), index).unwrap();
    ms
}

/// One step of each optimizer with its gradients, timed alternately (two warm-up rounds).
fn steps_alternately<'g, G: AsRef<[(VarId, Gradient<'g>)]>>(
    timer: &Timer,
    ctx: &GpuContext,
    opts: &mut [RmsProp],
    grads: &[G],
    reps: usize,
) -> Vec<Stats> {
    let mut runs: Vec<_> = opts
        .iter_mut()
        .zip(grads)
        .map(|(opt, g)| move || step(timer, ctx, opt, g.as_ref()))
        .collect();
    let mut runs: Vec<&mut dyn FnMut() -> f64> = runs
        .iter_mut()
        .map(|r| r as &mut dyn FnMut() -> f64)
        .collect();
    time_alternately(2, reps, &mut runs)
}

/// Times each of `runs` in turn, round after round (`warmup` untimed rounds, then `reps` timed ones), so
/// that all of them see the same machine; one `Stats` per run.
fn time_alternately(
    warmup: usize,
    reps: usize,
    runs: &mut [&mut dyn FnMut() -> f64],
) -> Vec<Stats> {
    let mut times = vec![Vec::with_capacity(reps); runs.len()];
    for round in 0..warmup + reps {
        for (run, t) in runs.iter_mut().zip(&mut times) {
            let ms = run();
            if round >= warmup {
                t.push(ms);
            }
        }
    }
    times.into_iter().map(stats).collect()
}

/// What a line measured besides its times: dispatches per step, the storage types and the bytes of the
/// optimizer state.
struct Of {
    dispatches: usize,
    storage: StorageTypes,
    state_bytes: u64,
}

/// Those of `opt` and its last step.
fn of(opt: &RmsProp) -> Of {
    Of {
        dispatches: opt.last_step_dispatches(),
        storage: opt.config().storage(),
        state_bytes: opt.pool_stats().state_bytes,
    }
}

/// The common fields of a timed row.
fn row(case: &str, variant: &str, n: usize, tensors: usize, s: &Stats, bytes: f64) -> Value {
    json!({"case": case, "variant": variant, "n": n, "tensors": tensors, "rows": null, "nnz": null,
    "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
    "host_us_per_step": null})
}

fn main() {
    env_logger::init();
    let mut cli = cli::Cli::new(USAGE);
    let (mut quick, mut sweep) = (false, false);
    let mut reps = None;
    // `--dense N VARIANT`: only that comparison. `--case NAME`: only that family.
    let mut only: Option<(usize, &str)> = None;
    let mut case: Option<&str> = None;
    let mut storage = StorageTypes::default();
    while let Some(option) = cli.next_option() {
        match option.as_str() {
            "--quick" => quick = true,
            "--sweep" => sweep = true,
            "--reps" => reps = Some(cli.count(&option)),
            "--dense" => only = Some((cli.count(&option), cli.choice(&option, &VARIANTS))),
            "--case" => case = Some(cli.choice(&option, &CASES)),
            "--dtype" => storage = cli.dtype(&option),
            "--storage" => storage = cli.storage(&option),
            _ => cli.unknown(&option),
        }
    }
    let reps = reps.unwrap_or(if quick { 15 } else { 30 });
    // Cases stepping with f32 host gradients.
    let host_storage = StorageTypes {
        gradient: Dtype::F32,
        ..storage
    };
    let ctx = support::context();
    let timer = Timer::new(&ctx);
    let adapter = ctx.adapter_description();
    let emit = |mut v: Value, of: Of| {
        let s = of.storage;
        v["dispatches_per_step"] = json!(of.dispatches);
        v["dtype"] = json!({"variable": s.variable.name(), "gradient": s.gradient.name(),
            "state": s.state.name()});
        v["state_bytes"] = json!(of.state_bytes);
        v["adapter"] = json!(adapter);
        if v.get("timing").is_none() {
            v["timing"] = json!(timer.method());
        }
        println!("{v}");
    };
    let variants = VARIANTS;

    if sweep {
        // What the adapter rewards: invocations per workgroup, and vec4s per invocation.
        let shapes = [
            (64u32, 1u32),
            (128, 1),
            (256, 1),
            (512, 1),
            (1024, 1),
            (256, 2),
            (256, 4),
        ];
        for n in [16usize << 20, 64 << 20] {
            for variant in ["plain", "centered_momentum"] {
                for (wg, per) in shapes {
                    let options = OptimizerOptions {
                        workgroup_size: wg,
                        vec4s_per_invocation: per,
                        ..Default::default()
                    };
                    let Ok(mut opt) =
                        RmsProp::with_options(&ctx, variant_config_in(variant, storage), options)
                    else {
                        continue;
                    };
                    let init = vec![0.5f32; n];
                    let id = opt.add_variable("w", &[n], &init).unwrap();
                    fill_gradients(&ctx, &mut opt, &[id], |_| 0.5);
                    let grads = resident(&[id]);
                    let s = &time_alternately(
                        2,
                        reps,
                        &mut [&mut || step(&timer, &ctx, &mut opt, &grads)],
                    )[0];
                    let bytes = bytes_per_element_in(variant, storage) * n as f64;
                    let mut v = row("dense_workgroup_size", variant, n, 1, s, bytes);
                    v["workgroup_size"] = json!(wg);
                    v["vec4s_per_invocation"] = json!(per);
                    emit(v, of(&opt));
                }
            }
        }
        return;
    }

    let wants = |name: &str| only.is_none() && case.is_none_or(|c| c == name);

    if wants("host") {
        // Host overhead first, on a quiet machine: tiny steps whose GPU work is negligible, above an empty
        // submit, on a context as `GpuContext::new()` makes it (no timestamp queries).
        let host_ctx = GpuContext::new().expect("a GPU adapter");
        // Gradients already on the GPU (`Resident`), then uploaded from host slices each step.
        for (tensors, from_host) in [(1usize, false), (1000, false), (1, true), (1000, true)] {
            let (mut opt, ids) =
                dense_optimizer_in(&host_ctx, "plain", &vec![4; tensors], host_storage);
            let host_grads = [0.25f32; 4];
            let grads: Vec<(VarId, Gradient<'_>)> = ids
                .iter()
                .map(|&id| {
                    let g = if from_host {
                        Gradient::Dense(&host_grads)
                    } else {
                        Gradient::Resident
                    };
                    (id, g)
                })
                .collect();
            let (s, empty) = time_host(&host_ctx, 1000, || {
                opt.apply(&grads).unwrap();
            });
            let ms = Stats {
                median: s.median / 1e3,
                min: s.min / 1e3,
                max: s.max / 1e3,
            };
            let mut v = row("host", "plain", 4 * tensors, tensors, &ms, 0.0);
            v["gb_s"] = Value::Null;
            v["host_us_per_step"] = json!(s.median - empty.median);
            v["empty_submit_us"] = json!(empty.median);
            v["gradients"] = json!(if from_host { "host" } else { "resident" });
            v["timing"] = json!("host_clock");
            emit(v, of(&opt));
        }
    }

    // Dense steps against the minimal kernel, timed alternately.
    let sizes: &[usize] = match (&only, quick) {
        (Some((n, _)), _) => std::slice::from_ref(n),
        (None, _) if !wants("dense") => &[],
        (None, true) => &[1 << 20],
        (None, false) => &[1 << 20, 16 << 20, 64 << 20],
    };
    for &n in sizes {
        for variant in variants {
            if only.is_some_and(|(_, v)| v != variant) {
                continue;
            }
            let (mut opt, ids) = dense_optimizer_in(&ctx, variant, &[n], storage);
            let grads = resident(&ids);
            let minimal = Minimal::with_storage(&ctx, variant, n, storage);
            // The ratio is what matters here: twice the repetitions where a step is short.
            let pair_reps = if n <= 16 << 20 { 2 * reps } else { reps };
            let t = time_alternately(
                2,
                pair_reps,
                &mut [&mut || step(&timer, &ctx, &mut opt, &grads), &mut || {
                    timer.once(&ctx, |e| minimal.record(e))
                }],
            );
            let (s, m) = (&t[0], &t[1]);
            let bytes = bytes_per_element_in(variant, storage) * n as f64;
            emit(row("dense", variant, n, 1, s, bytes), of(&opt));
            emit(
                row("minimal_kernel", variant, n, 1, m, bytes),
                Of {
                    dispatches: minimal.dispatches(),
                    ..of(&opt)
                },
            );
        }
    }

    if only.is_some() {
        return;
    }

    // The same dense steps with per-variable options (the kernels read the options table: VAR_OPTIONS),
    // against the minimal kernel: what a parameter group costs on top of the default path.
    let option_sizes: &[usize] = match (wants("dense_options"), quick) {
        (false, _) => &[],
        (true, true) => &[1 << 20],
        (true, false) => &[1 << 20, 16 << 20],
    };
    for &n in option_sizes {
        // A learning-rate group (the kernels read one field of the table), and options setting every
        // field (rate, rho, epsilon, momentum where the variant has it, weight decay, flags), with the
        // slots of the variant (the bytes the minimal kernel moves).
        let lr_only = VarOptions {
            lr_multiplier: 0.5,
            ..VarOptions::default()
        };
        for variant in variants {
            let every = VarOptions {
                lr_multiplier: 0.5,
                rho: Some(0.8),
                epsilon: Some(1e-6),
                momentum: variant.contains("momentum").then_some(0.5),
                weight_decay: Some(0.01),
                maximize: Some(true),
                ..VarOptions::default()
            };
            for (label, options) in [("lr", &lr_only), ("every_field", &every)] {
                let (mut opt, ids) = dense_optimizer_in(&ctx, variant, &[n], storage);
                opt.set_variable_options(ids[0], options).unwrap();
                let grads = resident(&ids);
                let minimal = Minimal::with_storage(&ctx, variant, n, storage);
                let t = time_alternately(
                    2,
                    2 * reps,
                    &mut [&mut || step(&timer, &ctx, &mut opt, &grads), &mut || {
                        timer.once(&ctx, |e| minimal.record(e))
                    }],
                );
                let bytes = bytes_per_element_in(variant, storage) * n as f64;
                let mut v = row("dense_options", variant, n, 1, &t[0], bytes);
                v["options"] = json!(label);
                emit(v, of(&opt));
                let mut m = row("minimal_kernel", variant, n, 1, &t[1], bytes);
                m["options"] = json!(label);
                emit(
                    m,
                    Of {
                        dispatches: minimal.dispatches(),
                        ..of(&opt)
                    },
                );
            }
        }
    }

    // Scale: a state of several GiB (256M elements, centered + momentum: 5 GiB with the gradients).
    if !quick && wants("scale") {
        let (n, variant) = (256usize << 20, "centered_momentum");
        let (mut opt, ids) = dense_optimizer_in(&ctx, variant, &[n], storage);
        let grads = resident(&ids);
        let s = &time_alternately(1, 3, &mut [&mut || step(&timer, &ctx, &mut opt, &grads)])[0];
        let mut v = row(
            "dense",
            variant,
            n,
            1,
            s,
            bytes_per_element_in(variant, storage) * n as f64,
        );
        // Every pooled buffer (variables, gradients, state); `state_bytes` is the state's alone.
        v["pool_bytes"] = json!(opt.pool_stats().pool_bytes);
        emit(v, of(&opt));
    }

    // 1,000 tensors of 16k against one of the same total size, timed alternately.
    let (tensors, each) = if quick {
        (1000, 1 << 12)
    } else {
        (1000, 1 << 14)
    };
    let many_variants: &[&str] = if wants("dense_many") {
        &["plain", "centered_momentum"]
    } else {
        &[]
    };
    for &variant in many_variants {
        let n = tensors * each;
        let (mut many, many_ids) = dense_optimizer_in(&ctx, variant, &vec![each; tensors], storage);
        let many_grads = resident(&many_ids);
        let (mut one, one_ids) = dense_optimizer_in(&ctx, variant, &[n], storage);
        let one_grads = resident(&one_ids);
        let t = time_alternately(
            2,
            reps,
            &mut [
                &mut || step(&timer, &ctx, &mut many, &many_grads),
                &mut || step(&timer, &ctx, &mut one, &one_grads),
            ],
        );
        let (sm, so) = (&t[0], &t[1]);
        let bytes = bytes_per_element_in(variant, storage) * n as f64;
        emit(row("dense_many", variant, n, tensors, sm, bytes), of(&many));
        emit(row("dense", variant, n, 1, so, bytes), of(&one));
    }

    // 1,000 tensors with global_clipnorm (per-variable clipping state, one dense dispatch per pool
    // buffer through the segment map) against the same tensors without clipping, timed alternately;
    // then saving a checkpoint of them (one read-back, one wait).
    if wants("clip_many") {
        let sizes = vec![each; tensors];
        let clip_cfg = wgpu_rmsprop::RmsPropConfig::builder()
            .learning_rate(1e-4)
            .global_clipnorm(1.0)
            .storage(storage)
            .build()
            .unwrap();
        let mut clipped = RmsProp::new(&ctx, clip_cfg).unwrap();
        let clipped_ids: Vec<VarId> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                clipped
                    .add_variable(&format!("w{k}"), &[n], &vec![0.5; n])
                    .unwrap()
            })
            .collect();
        let clipped_grads = resident(&clipped_ids);
        clipped.apply(&clipped_grads).unwrap();
        let (mut plain, plain_ids) = dense_optimizer_in(&ctx, "plain", &sizes, storage);
        let plain_grads = resident(&plain_ids);
        let t = time_alternately(
            2,
            reps,
            &mut [
                &mut || step(&timer, &ctx, &mut clipped, &clipped_grads),
                &mut || step(&timer, &ctx, &mut plain, &plain_grads),
            ],
        );
        // Clipping reads every gradient once more (the norm) on top of the update's bytes.
        let n = tensors * each;
        let bytes =
            (bytes_per_element_in("plain", storage) + storage.gradient.bytes() as f64) * n as f64;
        let mut v = row(
            "clip_many",
            "plain_global_clipnorm",
            n,
            tensors,
            &t[0],
            bytes,
        );
        v["baseline_ms"] = json!(t[1].median);
        emit(v, of(&clipped));
        let path =
            std::env::temp_dir().join(format!("bench-save-{}.safetensors", std::process::id()));
        let saves: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                clipped.save_checkpoint(&path, true).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let _ = std::fs::remove_file(&path);
        let ms = stats(saves);
        let mut v = row(
            "save_checkpoint",
            "plain_global_clipnorm",
            n,
            tensors,
            &ms,
            0.0,
        );
        v["gb_s"] = Value::Null;
        v["timing"] = json!("host_clock");
        v["read_backs"] = json!(1);
        emit(
            v,
            Of {
                dispatches: 0,
                ..of(&clipped)
            },
        );
    }

    // Sparse: k = 16,384 indices (about 20% repeats) on 64-column tables of 100k and 1M rows, the two
    // tables timed alternately.
    let (k, cols) = (16_384usize, 64usize);
    // Both table sizes even in quick runs: their ratio is the point (O(touched rows)).
    let row_counts: &[usize] = &[100_000, 1_000_000];
    let sparse_variants: &[&str] = if wants("sparse") {
        &["plain", "centered_momentum"]
    } else {
        &[]
    };
    // Each variant lazily (the default), lazy-exact (rows caught up in closed form: the dense
    // numbers at the lazy cost) and, plain only, in dense mode (every row, for contrast).
    let mut sparse_runs: Vec<(&str, SparseMode)> = Vec::new();
    for &variant in sparse_variants {
        sparse_runs.push((variant, SparseMode::Lazy));
        sparse_runs.push((variant, SparseMode::LazyExact));
        if variant == "plain" {
            sparse_runs.push((variant, SparseMode::Dense));
        }
    }
    for (variant, mode) in sparse_runs {
        let values: Vec<f32> = (0..k * cols)
            .map(|i| ((i % 11) as f32 - 5.0) * 0.01)
            .collect();
        let mut opts = Vec::new();
        let mut lists = Vec::new();
        for &rows in row_counts {
            let config = variant_builder(variant, host_storage)
                .sparse_mode(mode)
                .build()
                .unwrap();
            let mut opt = RmsProp::new(&ctx, config).unwrap();
            let table = opt
                .add_variable("table", &[rows, cols], &vec![0.5; rows * cols])
                .unwrap();
            opts.push(opt);
            lists.push((table, sparse_indices(rows, k)));
        }
        let grads: Vec<[(VarId, Gradient<'_>); 1]> = lists
            .iter()
            .map(|(table, indices)| {
                [(
                    *table,
                    Gradient::Sparse {
                        indices: Indices::I64(indices),
                        values: &values,
                    },
                )]
            })
            .collect();
        let times = steps_alternately(&timer, &ctx, &mut opts, &grads, reps);
        for (((&rows, opt), (_, indices)), t) in
            row_counts.iter().zip(&opts).zip(&lists).zip(&times)
        {
            let mut distinct = indices.clone();
            distinct.sort_unstable();
            distinct.dedup();
            // Variables and state of the touched rows (read + write) plus the listed values and
            // indices.
            let s = host_storage;
            let per_touched = 2 * s.variable.bytes() + 2 * state_slots(variant) * s.state.bytes();
            // Dense mode: every row; lazy-exact: the touched rows' counters too (read and write).
            let touched = match mode {
                SparseMode::Dense => rows,
                _ => distinct.len(),
            };
            let counters = match mode {
                SparseMode::LazyExact => 8 * distinct.len() as u64,
                _ => 0,
            };
            let touched_bytes = per_touched * (touched * cols) as u64 + counters;
            let bytes =
                (touched_bytes + (k * cols) as u64 * s.gradient.bytes() + k as u64 * 8) as f64;
            let mut v = row("sparse", variant, rows * cols, 1, t, bytes);
            v["rows"] = json!(rows);
            v["nnz"] = json!(k);
            v["sparse_mode"] = json!(match mode {
                SparseMode::Lazy => "lazy",
                SparseMode::LazyExact => "lazy_exact",
                SparseMode::Dense => "dense",
            });
            emit(v, of(opt));
        }
    }

    // Row-wise velocity: a 1M x 64 table, one velocity per row against one per element, timed
    // alternately (a dense step with resident gradients, then a lazy sparse step).
    if wants("rowwise") {
        let (rows, cols, k) = (1_000_000usize, 64usize, 16_384usize);
        let indices = sparse_indices(rows, k);
        let values: Vec<f32> = (0..k * cols)
            .map(|i| ((i % 11) as f32 - 5.0) * 0.01)
            .collect();
        for variant in ["plain", "momentum"] {
            let mut opts = Vec::new();
            let mut ids = Vec::new();
            for rowwise in [false, true] {
                let config = variant_builder(variant, StorageTypes::default())
                    .build()
                    .unwrap();
                let mut opt = RmsProp::new(&ctx, config).unwrap();
                let options = VarOptions {
                    rowwise_velocity: rowwise,
                    ..VarOptions::default()
                };
                let init = vec![0.5; rows * cols];
                let id = opt
                    .add_variable_with("table", &[rows, cols], &init, &options)
                    .unwrap();
                fill_gradients(&ctx, &mut opt, &[id], |i| ((i % 7) as f32 - 3.0) * 0.01);
                opts.push(opt);
                ids.push(id);
            }
            for sparse in [false, true] {
                let grads: Vec<[(VarId, Gradient<'_>); 1]> = ids
                    .iter()
                    .map(|&id| match sparse {
                        false => [(id, Gradient::Resident)],
                        true => [(
                            id,
                            Gradient::Sparse {
                                indices: Indices::I64(&indices),
                                values: &values,
                            },
                        )],
                    })
                    .collect();
                let times = steps_alternately(&timer, &ctx, &mut opts, &grads, reps);
                for ((opt, t), velocity) in opts.iter().zip(&times).zip(["element", "rowwise"]) {
                    // Bytes moved: the variable (and momentum) read and written and the gradient
                    // read per element; the velocity read and written per element or per row.
                    let touched = if sparse { k } else { rows };
                    let per_row = (cols as u64) * (12 + 8 * state_slots(variant).saturating_sub(1));
                    let velocity_bytes = if velocity == "rowwise" {
                        8
                    } else {
                        8 * cols as u64
                    };
                    let bytes = ((per_row + velocity_bytes) * touched as u64) as f64;
                    let mut v = row("rowwise", variant, rows * cols, 1, t, bytes);
                    v["rows"] = json!(rows);
                    v["nnz"] = json!(if sparse { Some(k) } else { None });
                    v["velocity"] = json!(velocity);
                    v["step"] = json!(if sparse { "lazy_sparse" } else { "dense" });
                    emit(v, of(opt));
                }
            }
        }
    }
}
