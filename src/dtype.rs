//! Storage types: what each pooled buffer holds (f32, f16 or bf16). Every kernel computes in f32 and
//! rounds once, to nearest even, when it stores a value of a 16-bit type; float16 subnormals are kept.
//! 16-bit buffers hold two elements per u32 word (element `2k` in the low half).

use half::{bf16, f16};

/// An element type of a pooled buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// IEEE 754 binary32.
    #[default]
    F32,
    /// IEEE 754 binary16 (`half::f16`): 11-bit significand, largest finite 65504.
    F16,
    /// bfloat16 (`half::bf16`): 8-bit significand, float32's exponent range.
    Bf16,
    /// 8-bit block-wise quantized state (optimizer state only): one code per element on a dynamic
    /// (non-linear) map of 256 values, unsigned for the velocity and signed for momentum and average
    /// gradient, and one f32 absmax per block of [`crate::RmsPropConfig::q8_block`] elements
    /// (Dettmers et al., "8-bit Optimizers via Block-wise Quantization"; see [`crate::quant`]).
    Q8,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::Q8 => 1,
        }
    }

    /// The name used in checkpoints, golden cases and benchmark lines: `f32`, `f16`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Q8 => "q8",
        }
    }

    /// Parses `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`.
    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "f32" | "float32" => Some(Dtype::F32),
            "f16" | "float16" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            "q8" => Some(Dtype::Q8),
            _ => None,
        }
    }

    /// `x` rounded to this type (round to nearest, ties to even; f16 subnormals kept; overflow to
    /// infinity) and widened back to f32, exactly: what a kernel stores, seen as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            // Q8 is quantized block-wise (crate::quant), not element by element.
            Dtype::F32 | Dtype::Q8 => x,
            Dtype::F16 => f16::from_f32(x).to_f32(),
            Dtype::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// The 16 bits of `x` rounded to this type (`F32`: the high half of its bits, unused).
    pub fn to_bits16(self, x: f32) -> u16 {
        match self {
            Dtype::F32 | Dtype::Q8 => (x.to_bits() >> 16) as u16,
            Dtype::F16 => f16::from_f32(x).to_bits(),
            Dtype::Bf16 => bf16::from_f32(x).to_bits(),
        }
    }

    /// The f32 value of 16 stored bits (`F32`: the bits as the high half of an f32).
    pub fn from_bits16(self, bits: u16) -> f32 {
        match self {
            Dtype::F32 | Dtype::Q8 => f32::from_bits(u32::from(bits) << 16),
            Dtype::F16 => f16::from_bits(bits).to_f32(),
            Dtype::Bf16 => bf16::from_bits(bits).to_f32(),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `values` as the bytes of a buffer holding `dtype` (16-bit types: rounded to nearest even, two per
/// word, an odd count padded with a zero half so that the bytes fill whole words).
pub(crate) fn encode(values: &[f32], dtype: Dtype) -> std::borrow::Cow<'_, [u8]> {
    if dtype == Dtype::F32 {
        return std::borrow::Cow::Borrowed(bytemuck::cast_slice(values));
    }
    let mut bits: Vec<u16> = values.iter().map(|&x| dtype.to_bits16(x)).collect();
    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    std::borrow::Cow::Owned(bytemuck::cast_slice(&bits).to_vec())
}

/// The f32 values of the first `elems` elements of `bytes`, a buffer holding `dtype` (exact).
pub(crate) fn decode(bytes: &[u8], dtype: Dtype, elems: usize, out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend_from_slice(&bytemuck::cast_slice::<u8, f32>(bytes)[..elems]),
        _ => out.extend(
            bytes
                .chunks_exact(2)
                .take(elems)
                .map(|b| dtype.from_bits16(u16::from_le_bytes([b[0], b[1]]))),
        ),
    }
}

/// The storage type of each role: the variables, the gradient buffers the optimizer reads, and the
/// optimizer state (velocity, momentum, average gradient). The default is f32 everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StorageTypes {
    /// The variables.
    pub variable: Dtype,
    /// The gradients (host slices and GPU buffers given to a step, and the gradient pool).
    pub gradient: Dtype,
    /// Velocity, momentum and average gradient.
    pub state: Dtype,
    /// A copy of the variables in this type, written by the same kernels whenever they write a
    /// variable (master weights: f32 variables for the optimizer, a 16-bit copy for the caller's
    /// forward pass, with no cast pass; rounded to nearest even). `None` (default): no copy. Set it in
    /// the configuration: every variable then has its copy ([`crate::RmsProp::copy_slices`]), and a
    /// variable's own [`crate::VarOptions::storage`] must keep the same `copy`. The variables must be
    /// f32 (refused otherwise: a 16-bit variable is its own 16-bit copy). Needs 9 storage
    /// buffers per shader stage (WebGPU's default limit is 8).
    pub copy: Option<Dtype>,
}

impl StorageTypes {
    /// Every role in `dtype` (what TensorFlow, Keras 3 and PyTorch do for a half-precision variable).
    pub fn all(dtype: Dtype) -> Self {
        StorageTypes {
            variable: dtype,
            gradient: dtype,
            state: dtype,
            copy: None,
        }
    }

    /// Whether every role is f32.
    pub fn is_f32(&self) -> bool {
        *self == StorageTypes::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even_and_keeps_f16_subnormals() {
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10 in f16: even (1) wins.
        assert_eq!(Dtype::F16.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(
            Dtype::F16.round(1.0 + 3.0 * 2f32.powi(-11)),
            1.0 + 2.0 * 2f32.powi(-10)
        );
        // The smallest f16 subnormal, and half of it (a tie to 0).
        assert_eq!(Dtype::F16.round(2f32.powi(-24)), 2f32.powi(-24));
        assert_eq!(Dtype::F16.round(2f32.powi(-25)), 0.0);
        assert_eq!(Dtype::F16.round(1e6), f32::INFINITY);
        assert_eq!(Dtype::Bf16.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(Dtype::Bf16.round(1e-40), bf16::from_f32(1e-40).to_f32());
        for d in [Dtype::F16, Dtype::Bf16] {
            assert_eq!(d.from_bits16(d.to_bits16(0.3)), d.round(0.3));
        }
    }
}
