//! Host data of a step goes through two reused staging buffers (copies recorded in the step's encoder),
//! or through `queue.write_buffer` past `OptimizerOptions::max_staging_bytes`: results against the CPU
//! reference for the variables and every slot, neighbours in the pool left alone, nothing created per
//! step once warm.

mod common;

use common::{assert_matches, ctx, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{Gradient, Indices, OptimizerOptions, RmsProp, RmsPropConfig};

fn config() -> RmsPropConfig {
    RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .centered(true)
        .build()
        .unwrap()
}

/// Sizes that break vec4 tiling and workgroups, packed next to each other in one pool buffer.
const SIZES: [usize; 12] = [1, 3, 4, 5, 37, 255, 256, 257, 1000, 2, 4, 63];

#[test]
fn host_gradients_staged_next_to_resident_ones_match_the_reference() {
    let mut rng = Rng::new(11);
    let mut opt = RmsProp::new(ctx(), config()).unwrap();
    let mut r = Reference::new(config());
    let mut ids = Vec::new();
    for (k, &n) in SIZES.iter().enumerate() {
        let init = rng.vec(n, 1.0, 0);
        ids.push(opt.add_variable(&format!("v{k}"), &[n], &init).unwrap());
        r.add_variable(&[n], &init);
    }
    let mut created_after_first = None;
    for step in 0..5 {
        let grads: Vec<Vec<f32>> = SIZES.iter().map(|&n| rng.vec(n, 2.0, 7)).collect();
        // Every third variable's gradient is written by "the caller" straight into the gradient pool.
        let mut list = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            if k % 3 == 1 {
                let slice = &opt.gradient_slices(id).unwrap()[0];
                ctx().queue().write_buffer(
                    &slice.buffer,
                    slice.offset,
                    bytemuck::cast_slice(&grads[k]),
                );
                list.push((id, Gradient::Resident));
            } else {
                list.push((id, Gradient::Dense(&grads[k])));
            }
        }
        opt.apply(&list).unwrap();
        let refs: Vec<Option<RefGradient<'_>>> =
            grads.iter().map(|g| Some(RefGradient::Dense(g))).collect();
        r.step(&refs).unwrap();
        if step == 0 {
            created_after_first = Some(opt.gpu_objects_created());
        }
    }
    assert_eq!(
        Some(opt.gpu_objects_created()),
        created_after_first,
        "steps with the same amount of host data must reuse the staging buffers"
    );
    for (k, &id) in ids.iter().enumerate() {
        assert_matches(&mut opt, id, &r.vars[k], &format!("variable {k}"));
    }
}

#[test]
fn small_large_and_sparse_steps_across_the_staging_limit_match_the_reference() {
    // 0: every step through queue.write_buffer; 1 KiB: small steps staged, large ones direct; default.
    for max_staging_bytes in [0u64, 1024, OptimizerOptions::default().max_staging_bytes] {
        let options = OptimizerOptions {
            max_staging_bytes,
            ..Default::default()
        };
        let mut rng = Rng::new(5);
        let mut opt = RmsProp::with_options(ctx(), config(), options).unwrap();
        let mut r = Reference::new(config());
        let (small_init, big_init, table_init) = (
            rng.vec(10, 1.0, 0),
            rng.vec(1001, 1.0, 0),
            rng.vec(50 * 3, 1.0, 0),
        );
        let small = opt.add_variable("small", &[10], &small_init).unwrap();
        let big = opt.add_variable("big", &[1001], &big_init).unwrap();
        let table = opt.add_variable("table", &[50, 3], &table_init).unwrap();
        r.add_variable(&[10], &small_init);
        r.add_variable(&[1001], &big_init);
        r.add_variable(&[50, 3], &table_init);
        // (small, big, sparse rows): 40 B; 4 KiB; 40 B + 2 rows; 4 KiB + 90 rows (with repeats).
        let plan: [(bool, bool, usize); 6] = [
            (true, false, 0),
            (false, true, 0),
            (true, false, 2),
            (true, true, 90),
            (true, false, 0),
            (false, false, 30),
        ];
        for (s, &(with_small, with_big, rows)) in plan.iter().enumerate() {
            let gs = rng.vec(10, 2.0, 5);
            let gb = rng.vec(1001, 2.0, 5);
            let idx: Vec<i64> = (0..rows).map(|i| ((i * 7 + s) % 50) as i64).collect();
            let uidx: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
            let vals = rng.vec(rows * 3, 1.0, 0);
            let mut list = Vec::new();
            let mut refs = vec![None, None, None];
            if with_small {
                list.push((small, Gradient::Dense(&gs)));
                refs[0] = Some(RefGradient::Dense(&gs));
            }
            if with_big {
                list.push((big, Gradient::Dense(&gb)));
                refs[1] = Some(RefGradient::Dense(&gb));
            }
            if rows > 0 {
                list.push((
                    table,
                    Gradient::Sparse {
                        indices: Indices::I64(&idx),
                        values: &vals,
                    },
                ));
                refs[2] = Some(RefGradient::Sparse {
                    indices: &uidx,
                    values: &vals,
                });
            }
            opt.apply(&list).unwrap();
            r.step(&refs).unwrap();
        }
        let label = format!("max_staging_bytes {max_staging_bytes}");
        assert_matches(&mut opt, small, &r.vars[0], &format!("{label}: small"));
        assert_matches(&mut opt, big, &r.vars[1], &format!("{label}: big"));
        assert_matches(&mut opt, table, &r.vars[2], &format!("{label}: table"));
    }
}
