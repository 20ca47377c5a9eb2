//! # wgpu-rmsprop
//!
//! The RMSprop optimizer on the GPU through [wgpu](https://wgpu.rs): WGSL compute shaders update
//! variables and their optimizer state in pooled storage buffers, one fused dispatch per pool buffer,
//! with TensorFlow/Keras semantics, validated against a CPU reference ([`reference`]).
//!
//! ## The update (Keras `RMSprop`)
//!
//! Per element, with gradient `g`, variable `x`, velocity `v`, momentum `m`, average gradient `a`, all
//! `f32`:
//!
//! ```text
//! v = rho*v + (1-rho)*g^2
//! a = rho*a + (1-rho)*g                      (centered)
//! d = sqrt(v - a^2 + epsilon)  (centered)   |  sqrt(v + epsilon)
//! inc = lr*g / d
//! momentum > 0:  m = momentum*m + inc ; x = x - m
//! momentum = 0:  x = x - inc                 (no momentum slot)
//! ```
//!
//! Defaults: `learning_rate = 0.001`, `rho = 0.9`, `momentum = 0.0`, `epsilon = 1e-7`,
//! `centered = false`. Dense updates decay the accumulators even where the gradient is zero. As in
//! Keras, the centered variant takes no guard against `v - a^2 + epsilon` rounding below zero.
//!
//! ## Example
//!
//! ```no_run
//! use wgpu_rmsprop::{GpuContext, RmsProp, RmsPropConfig, Slot};
//! let ctx = GpuContext::new()?; // honours WGPU_BACKEND and WGPU_ADAPTER_NAME
//! let mut opt = RmsProp::new(&ctx, RmsPropConfig::builder().learning_rate(0.1).build()?)?;
//! let var1 = opt.add_variable("var1", &[], &[10.0])?;
//! assert_eq!(opt.apply_gradients(&[(var1, &[10.0])])?, 1);
//! println!("{:?} {:?}", opt.read_variable(var1)?, opt.read_slot(var1, Slot::Velocity)?);
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```

#![warn(missing_docs)]

pub mod case;
pub mod config;
pub mod context;
pub mod error;
pub mod kernels;
pub mod optimizer;
pub mod pool;
pub mod reference;
pub mod schedule;

pub use config::{
    AverageForm, ClipRules, DuplicateIndices, EpsilonPlacement, MomentumForm, Preset,
    RmsPropConfig, RmsPropConfigBuilder, SparseMode, StepScalars, WeightDecay,
};
pub use context::{ContextOptions, GpuContext};
pub use error::{Error, Result};
pub use optimizer::{GpuGradient, Gradient, Indices, OptimizerOptions, RmsProp, VarId};
pub use pool::{PoolStats, Slot};
pub use schedule::{LearningRate, Schedule};
