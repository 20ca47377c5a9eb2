//! The crate inside a caller's GPU loop: a borrowed device, the caller's backward shader writing into the
//! optimizer's gradient buffer, forward + backward + step recorded into one encoder and one submit.

mod common;

use common::{assert_matches, ctx};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{GpuContext, Gradient, RmsProp, RmsPropConfig};

// loss = 0.5 * ||w - target||^2, so the gradient is w - target.
const BACKWARD: &str = r#"
struct P { w: u32, n: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;
@group(0) @binding(3) var<storage, read> target_: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x < p.n {
        grads[p.w + gid.x] = params[p.w + gid.x] - target_[gid.x];
    }
}
"#;

#[test]
fn forward_backward_and_steps_in_one_encoder_and_one_submit() {
    // The caller owns the device; the optimizer borrows it.
    let borrowed = GpuContext::from_device(ctx().device().clone(), ctx().queue().clone()).unwrap();
    let device = borrowed.device();
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.05)
        .momentum(0.5)
        .name("caller")
        .build()
        .unwrap();
    let n = 37usize;
    let init: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
    let target: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.3).collect();
    let mut opt = RmsProp::new(&borrowed, cfg.clone()).unwrap();
    let w = opt.add_variable("w", &[n], &init).unwrap();
    let (p, g) = (
        &opt.variable_slices(w).unwrap()[0],
        &opt.gradient_slices(w).unwrap()[0],
    );
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("p"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    borrowed.queue().write_buffer(
        &uniform,
        0,
        bytemuck::cast_slice(&[(p.offset / 4) as u32, n as u32, 0, 0]),
    );
    let target_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("target"),
        size: (n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    borrowed
        .queue()
        .write_buffer(&target_buf, 0, bytemuck::cast_slice(&target));
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("backward"),
        source: wgpu::ShaderSource::Wgsl(BACKWARD.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("backward"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("backward"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: p.buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: g.buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 3,
                resource: target_buf.as_entire_binding(),
            },
        ],
    });
    // Three (backward, step) pairs in one encoder, one submit.
    let mut encoder = device.create_command_encoder(&Default::default());
    let mut recorded = Vec::new();
    for _ in 0..3 {
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        recorded.push(
            opt.record(&mut encoder, &[(w, Gradient::Resident)])
                .unwrap(),
        );
    }
    let index = borrowed.queue().submit([encoder.finish()]);
    for step in recorded {
        opt.submitted(step, index.clone()).unwrap();
    }

    let mut r = Reference::new(cfg);
    r.add_variable(&[n], &init);
    for _ in 0..3 {
        let grad: Vec<f32> = r.vars[0]
            .x
            .iter()
            .zip(&target)
            .map(|(x, t)| x - t)
            .collect();
        r.step(&[Some(RefGradient::Dense(&grad))]).unwrap();
    }
    assert_eq!(opt.iterations(), 3);
    assert_matches(&mut opt, w, &r.vars[0], "after one submit");
}
