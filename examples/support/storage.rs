//! What the optimizer's variable pool holds, for the examples' shaders that read the parameters straight
//! from it: f32 values, or 16-bit ones two per u32 word (element `2k` in the low half). The shaders take
//! the type as the override constant `VAR_DTYPE` ([`shader_code`]).
#![allow(dead_code)]

use wgpu_rmsprop::Dtype;

/// `VAR_DTYPE` of the examples' shaders: 0 f32, 1 f16, 2 bf16.
pub fn shader_code(d: Dtype) -> f64 {
    match d {
        Dtype::F32 | Dtype::Q8 => 0.0,
        Dtype::F16 => 1.0,
        Dtype::Bf16 => 2.0,
    }
}

/// The element index at `byte_offset` of a pool buffer of `d` values (what the shaders index with).
pub fn element_offset(byte_offset: u64, d: Dtype) -> u32 {
    (byte_offset / d.bytes()) as u32
}
