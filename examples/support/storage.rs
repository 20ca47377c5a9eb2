//! What the optimizer's variable pool holds, for the examples' shaders that read the parameters straight
//! from it: f32 values, or 16-bit ones two per u32 word (element `2k` in the low half). The shaders take
//! the type as the override constant `VAR_DTYPE` ([`shader_code`]).
#![allow(dead_code)]

use wgpu_rmsprop::Dtype;

/// `VAR_DTYPE` of the examples' shaders: 0 f32, 1 f16, 2 bf16.
pub fn shader_code(d: Dtype) -> f64 {
    match d {
        Dtype::F32 => 0.0,
        Dtype::F16 => 1.0,
        Dtype::Bf16 => 2.0,
    }
}

/// The element index at `byte_offset` of a pool buffer of `d` values (what the shaders index with).
pub fn element_offset(byte_offset: u64, d: Dtype) -> u32 {
    (byte_offset / d.bytes()) as u32
}

/// The type the pool really stores for a variable whose first two initial values are `a` and `b`,
/// judged from the first u32 `word` of its slice: `configured` when that is what the word holds, f32
/// when the word still holds `a` as f32 (a build whose kernels do not store 16-bit types yet), else an
/// error (an unknown layout: better stop than train on misread weights).
pub fn stored_dtype(configured: Dtype, word: u32, a: f32, b: f32) -> Result<Dtype, String> {
    let packed = u32::from(configured.to_bits16(a)) | (u32::from(configured.to_bits16(b)) << 16);
    if configured == Dtype::F32 || word == packed {
        Ok(configured)
    } else if word == a.to_bits() {
        Ok(Dtype::F32)
    } else {
        Err(format!(
            "the variable pool holds neither {configured} nor f32 values (first word {word:#010x})"
        ))
    }
}
