//! Non-finite gradients, checkpoints, long runs.

mod common;

use common::{assert_matches, ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{Gradient, Indices, NonFinite, RmsProp, RmsPropConfig, Slot};

#[test]
fn skip_step_skips_the_whole_step_on_the_gpu_and_counts_it() {
    for clip in [false, true] {
        let mut b = RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .centered(true)
            .non_finite(NonFinite::SkipStep);
        if clip {
            b = b.global_clipnorm(1.0);
        }
        let cfg = b.build().unwrap();
        let mut rng = Rng::new(4);
        let (i0, i1) = (rng.vec(300, 1.0, 0), rng.vec(40, 1.0, 0));
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let a = opt.add_variable("a", &[300], &i0).unwrap();
        let t = opt.add_variable("t", &[10, 4], &i1).unwrap();
        let mut r = Reference::new(cfg.clone());
        r.add_variable(&[300], &i0);
        r.add_variable(&[10, 4], &i1);
        for step in 0..6 {
            let mut g = rng.vec(300, 1.0, 0);
            let mut rows = rng.vec(8, 1.0, 0);
            match step {
                1 => g[123] = f32::NAN,
                3 => rows[5] = f32::INFINITY,
                4 => g[0] = f32::NEG_INFINITY,
                _ => {}
            }
            let before = snapshot(&mut opt, &[a, t]);
            opt.apply(&[
                (a, Gradient::Dense(&g)),
                (
                    t,
                    Gradient::Sparse {
                        indices: Indices::I32(&[7, 2]),
                        values: &rows,
                    },
                ),
            ])
            .unwrap();
            r.step(&[
                Some(RefGradient::Dense(&g)),
                Some(RefGradient::Sparse {
                    indices: &[7, 2],
                    values: &rows,
                }),
            ])
            .unwrap();
            if matches!(step, 1 | 3 | 4) {
                let after = snapshot(&mut opt, &[a, t]);
                assert_eq!(
                    after.1, before.1,
                    "step {step} must leave every variable and slot as it was"
                );
            }
            assert_matches(&mut opt, a, &r.vars[0], &format!("a after step {step}"));
            assert_matches(&mut opt, t, &r.vars[1], &format!("t after step {step}"));
        }
        assert_eq!(opt.skipped_steps().unwrap(), 3);
        assert_eq!(r.skipped, 3);
        assert_eq!(opt.iterations(), 6);
    }
}

#[test]
fn propagate_lets_nan_flow_into_the_state_as_tensorflow_does() {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let a = opt.add_variable("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    opt.apply_gradients(&[(a, &[0.5, f32::NAN, 0.5])]).unwrap();
    let x = opt.read_variable(a).unwrap();
    let v = opt.read_slot(a, Slot::Velocity).unwrap();
    assert!(x[0].is_finite() && x[2].is_finite());
    assert!(x[1].is_nan() && v[1].is_nan());
    assert_eq!(opt.skipped_steps().unwrap(), 0);
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wgpu-rmsprop-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bits(states: &[wgpu_rmsprop::case::StepState]) -> Vec<Vec<u32>> {
    states
        .iter()
        .flat_map(|s| {
            s.variables
                .iter()
                .chain(s.slots.values().flatten().flatten())
        })
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn save_restore_continue_is_bit_identical_for_every_golden_case() {
    let dir = temp_dir("resume");
    let cases = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases");
    let mut n = 0;
    for entry in std::fs::read_dir(cases).unwrap() {
        let case = wgpu_rmsprop::case::Case::from_path(&entry.unwrap().path()).unwrap();
        let k = case.steps.len() / 2;
        let straight = case.run_gpu(ctx()).unwrap();
        let file = dir.join(format!("{}.safetensors", case.name));
        let resumed = case.run_gpu_resumed(ctx(), Some((k, &file))).unwrap();
        assert_eq!(
            bits(&straight),
            bits(&resumed),
            "{} resumed after step {k}",
            case.name
        );
        n += 1;
    }
    assert_eq!(n, 92, "the golden cases, the 15 f16/bf16 ones included");
    // Only the checkpoints are left: no temporary files.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            name.ends_with(".safetensors") && !name.starts_with('.'),
            "{name}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_are_typed_errors_and_change_nothing() {
    let dir = temp_dir("bad");
    let cfg = RmsPropConfig::builder()
        .momentum(0.9)
        .centered(true)
        .build()
        .unwrap();
    let make = |cfg: &RmsPropConfig, shape: &[usize]| {
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let n: usize = shape.iter().product();
        let id = opt.add_variable("w", shape, &vec![0.25; n]).unwrap();
        opt.apply_gradients(&[(id, &vec![0.5; n])]).unwrap();
        (opt, id)
    };
    let (mut src, _) = make(&cfg, &[3, 4]);
    let good = dir.join("good.safetensors");
    src.save_checkpoint(&good, true).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let (mut opt, id) = make(&cfg, &[3, 4]);
    opt.apply_gradients(&[(id, &[1.0; 12])]).unwrap();
    let before = snapshot(&mut opt, &[id]);

    let mut files: Vec<(std::path::PathBuf, &str)> = Vec::new();
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    files.push((
        write("truncated.safetensors", &bytes[..bytes.len() - 7]),
        "",
    ));
    files.push((write("header-only.safetensors", &bytes[..20]), ""));
    let mut flipped = bytes.clone();
    flipped[3] ^= 0x55;
    files.push((write("flipped-length.safetensors", &flipped), ""));
    files.push((write("garbage.safetensors", b"not a checkpoint at all"), ""));
    let mut data_flip = bytes.clone();
    let last = data_flip.len() - 3;
    data_flip[last] ^= 0x10;
    files.push((write("flipped-data.safetensors", &data_flip), "checksum"));
    files.push((dir.join("missing.safetensors"), ""));
    // Valid files that do not match this optimizer.
    let other_rho = RmsPropConfig::builder()
        .momentum(0.9)
        .centered(true)
        .rho(0.8)
        .build()
        .unwrap();
    let (mut o, _) = make(&other_rho, &[3, 4]);
    let p = dir.join("rho.safetensors");
    o.save_checkpoint(&p, false).unwrap();
    files.push((p, "config `rho`"));
    let (mut o, _) = make(&cfg, &[4, 3]);
    let p = dir.join("shape.safetensors");
    o.save_checkpoint(&p, false).unwrap();
    files.push((p, "variables"));
    let torch = RmsPropConfig::preset(wgpu_rmsprop::Preset::Torch)
        .momentum(0.9)
        .centered(true)
        .build()
        .unwrap();
    let (mut o, _) = make(&torch, &[3, 4]);
    let p = dir.join("preset.safetensors");
    o.save_checkpoint(&p, false).unwrap();
    files.push((p, "preset"));

    for (file, needle) in &files {
        match opt.load_checkpoint(file) {
            Err(wgpu_rmsprop::Error::Checkpoint { message, .. }) => {
                assert!(message.contains(needle), "{}: {message}", file.display())
            }
            other => panic!(
                "{}: expected a checkpoint error, got {other:?}",
                file.display()
            ),
        }
        assert_eq!(
            snapshot(&mut opt, &[id]),
            before,
            "{} changed the state",
            file.display()
        );
    }
    // A save that fails midway (its temporary file cannot be created) leaves the old file intact.
    let blocker = dir.join(format!(".good.safetensors.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&blocker).unwrap();
    assert!(matches!(
        src.save_checkpoint(&good, true),
        Err(wgpu_rmsprop::Error::Checkpoint { .. })
    ));
    assert_eq!(
        std::fs::read(&good).unwrap(),
        bytes,
        "the previous checkpoint must survive"
    );
    std::fs::remove_dir(&blocker).unwrap();
    // The good file restores the source's state exactly.
    opt.load_checkpoint(&good).unwrap();
    let src_id = src.variable("w").unwrap();
    assert_eq!(snapshot(&mut opt, &[id]).1, snapshot(&mut src, &[src_id]).1);
    assert_eq!(opt.iterations(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_gradient_buffer_from_another_device_is_an_error_not_a_panic() {
    let cfg = RmsPropConfig::builder().momentum(0.5).build().unwrap();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let w = opt.add_variable("w", &[4], &[1.0; 4]).unwrap();
    opt.apply_gradients(&[(w, &[0.5; 4])]).unwrap();
    let before = snapshot(&mut opt, &[w]);
    let other = wgpu_rmsprop::GpuContext::new().unwrap();
    let foreign = other.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("foreign"),
        size: 16,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = opt
        .apply_gpu_gradients(&[(
            w,
            wgpu_rmsprop::GpuGradient {
                buffer: &foreign,
                offset: 0,
            },
        )])
        .unwrap_err();
    // wgpu's error is kept as the source.
    let wgpu_rmsprop::Error::Wgpu { source, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(source.kind, "validation");
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(snapshot(&mut opt, &[w]), before);
    // And the optimizer still works.
    assert_eq!(opt.apply_gradients(&[(w, &[0.5; 4])]).unwrap(), 2);
}

#[test]
fn twenty_thousand_mixed_steps_keep_memory_flat_and_match_the_reference() {
    let cfg = RmsPropConfig::builder()
        .learning_rate(1e-3)
        .momentum(0.9)
        .centered(true)
        .clipnorm(5.0)
        .build()
        .unwrap();
    let mut rng = Rng::new(77);
    let (i0, i1) = (rng.vec(37, 1.0, 0), rng.vec(64 * 3, 1.0, 0));
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let a = opt.add_variable("dense", &[37], &i0).unwrap();
    let t = opt.add_variable("table", &[64, 3], &i1).unwrap();
    let mut r = Reference::new(cfg.clone());
    r.add_variable(&[37], &i0);
    r.add_variable(&[64, 3], &i1);
    let steps = 20_000;
    let mut stats: Option<(wgpu_rmsprop::PoolStats, u64)> = None;
    // A fixed pool of gradients (generation would dominate the run time).
    let dense: Vec<Vec<f32>> = (0..16).map(|_| rng.vec(37, 1.0, 5)).collect();
    let rows: Vec<Vec<f32>> = (0..16).map(|_| rng.vec(5 * 3, 1.0, 0)).collect();
    for s in 0..steps {
        let idx: [i64; 5] = [
            (s % 64) as i64,
            ((s * 7) % 64) as i64,
            3,
            3,
            ((s * 13) % 64) as i64,
        ];
        let (g, v) = (&dense[s % 16], &rows[(s / 3) % 16]);
        opt.apply(&[
            (a, Gradient::Dense(g)),
            (
                t,
                Gradient::Sparse {
                    indices: Indices::I64(&idx),
                    values: v,
                },
            ),
        ])
        .unwrap();
        let uidx: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
        r.step(&[
            Some(RefGradient::Dense(g)),
            Some(RefGradient::Sparse {
                indices: &uidx,
                values: v,
            }),
        ])
        .unwrap();
        if s == 100 {
            stats = Some((opt.pool_stats(), opt.gpu_objects_created()));
        }
    }
    let (pool, created) = stats.unwrap();
    assert_eq!(
        opt.pool_stats(),
        pool,
        "GPU memory held must not grow after warm-up"
    );
    assert_eq!(
        opt.gpu_objects_created(),
        created,
        "no buffer or bind group may be created per step"
    );
    assert_eq!(opt.iterations(), steps as u64);
    assert_matches(&mut opt, a, &r.vars[0], "dense after 20k steps");
    assert_matches(&mut opt, t, &r.vars[1], "table after 20k steps");
}

#[test]
fn a_lost_device_is_an_error_on_the_next_call() {
    let own = wgpu_rmsprop::GpuContext::new().unwrap();
    let mut opt = RmsProp::new(&own, RmsPropConfig::default()).unwrap();
    let w = opt.add_variable("w", &[4], &[1.0; 4]).unwrap();
    opt.apply_gradients(&[(w, &[0.5; 4])]).unwrap();
    own.device().destroy();
    let _ = own.wait_idle();
    let e = opt.apply_gradients(&[(w, &[0.5; 4])]).unwrap_err();
    assert!(matches!(e, wgpu_rmsprop::Error::DeviceLost(_)), "{e:?}");
    assert!(matches!(
        opt.read_variable(w),
        Err(wgpu_rmsprop::Error::DeviceLost(_))
    ));
}
