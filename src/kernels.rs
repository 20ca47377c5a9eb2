//! The shader table: WGSL sources (one file per kernel family), their bind-group layouts declared in Rust,
//! and pipeline creation with `override` constants.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// `shaders/rmsprop_dense.wgsl`.
pub const RMSPROP_DENSE_WGSL: &str = include_str!("../shaders/rmsprop_dense.wgsl");

/// How a binding of a kernel is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>` with a dynamic offset (one slot per dispatch).
    UniformDynamic,
    /// `var<storage, read>`.
    ReadOnly,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// Bindings of group 0 of `rmsprop_dense.wgsl`, in binding order: params, x, g, v, m, a.
pub const DENSE_BINDINGS: [BindingKind; 6] = [
    BindingKind::UniformDynamic,
    BindingKind::ReadWrite,
    BindingKind::ReadOnly,
    BindingKind::ReadWrite,
    BindingKind::ReadWrite,
    BindingKind::ReadWrite,
];

/// The `Params` uniform of `rmsprop_dense.wgsl` (48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq)]
pub struct DenseParams {
    /// Learning rate of the step.
    pub lr: f32,
    /// `rho`.
    pub rho: f32,
    /// `1 - rho`.
    pub one_minus_rho: f32,
    /// Momentum coefficient.
    pub momentum: f32,
    /// Epsilon.
    pub epsilon: f32,
    /// 1-based step number (wraps at 2^32 on the GPU).
    pub step: u32,
    /// First vec4 of the dispatch's range.
    pub begin: u32,
    /// One past the last vec4 of the range.
    pub end: u32,
    /// Workgroups along x (the fold width).
    pub groups_x: u32,
    /// Padding to 16 bytes.
    pub pad: [u32; 3],
}

/// Variant of the dense kernel, mapped to its `override` constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseVariant {
    /// `CENTERED`.
    pub centered: bool,
    /// `HAS_MOMENTUM`.
    pub momentum: bool,
    /// `WORKGROUP_SIZE`.
    pub workgroup_size: u32,
}

pub(crate) fn bind_group_layout(
    device: &wgpu::Device,
    label: &str,
    bindings: &[BindingKind],
    uniform_size: u64,
) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .enumerate()
        .map(|(i, kind)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match kind {
                BindingKind::UniformDynamic => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(uniform_size),
                },
                BindingKind::ReadOnly | BindingKind::ReadWrite => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *kind == BindingKind::ReadOnly,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(16),
                },
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// Builds the dense pipeline for `variant`; compilation or validation failures become [`Error::Kernel`].
pub(crate) fn dense_pipeline(
    device: &wgpu::Device,
    prefix: &str,
    layout: &wgpu::BindGroupLayout,
    variant: DenseVariant,
) -> Result<wgpu::ComputePipeline> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&format!("{prefix}/rmsprop_dense.wgsl")),
        source: wgpu::ShaderSource::Wgsl(RMSPROP_DENSE_WGSL.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&format!("{prefix}/rmsprop_dense layout")),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    let constants = [
        ("WORKGROUP_SIZE", f64::from(variant.workgroup_size)),
        ("CENTERED", if variant.centered { 1.0 } else { 0.0 }),
        ("HAS_MOMENTUM", if variant.momentum { 1.0 } else { 0.0 }),
    ];
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&format!("{prefix}/rmsprop_dense")),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    match pollster::block_on(scope.pop()) {
        None => Ok(pipeline),
        Some(e) => Err(Error::Kernel {
            kernel: "rmsprop_dense",
            message: e.to_string(),
        }),
    }
}
