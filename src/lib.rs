//! # wgpu-rmsprop
//!
//! The RMSprop optimizer on the GPU through [wgpu](https://wgpu.rs): WGSL compute shaders update
//! variables and their optimizer state in pooled storage buffers, one fused dispatch per pool buffer,
//! validated against a CPU reference ([`mod@reference`]) and against golden cases recorded from TensorFlow,
//! Keras, PyTorch and Optax ([`case`]).
//!
//! ## Presets: every framework's RMSprop, explicitly
//!
//! Per element, with gradient `g`, variable `x`, velocity `v`, momentum `m`, average gradient `a`, the
//! step's learning rate `lr`, all `f32`. A step runs (1) clipping, (2) weight decay, (3) the update.
//!
//! **[`Preset::Keras`]** (default; `lr 0.001, rho 0.9, momentum 0, epsilon 1e-7`):
//! ```text
//! v = rho*v + (1-rho)*g^2
//! a = rho*a + (1-rho)*g                      (centered)
//! d = sqrt(v - a^2 + epsilon)  (centered)   |  sqrt(v + epsilon)
//! inc = lr*g / d
//! momentum > 0:  m = momentum*m + inc ; x = x - m
//! momentum = 0:  x = x - inc                 (no momentum slot)
//! ```
//! Weight decay is decoupled (`x = x - x*wd*lr`, before the update). At most one of `clipvalue`
//! (`clip(g, -c, c)`), `clipnorm` (per variable, `g*c / max(||g||, c)`) and `global_clipnorm`
//! (`g * c*min(1/n, 1/c)` with `n` the joint norm of the step's gradients).
//!
//! **[`Preset::KerasLegacy`]** (Keras 2): with momentum as Keras; without momentum epsilon goes outside:
//! `x = x - lr*g / (sqrt(v [- a^2]) + epsilon)`. Clipping: `clipvalue`, then one norm clip. Sparse steps
//! are lazy with momentum, dense without.
//!
//! **[`Preset::TfRaw`]** (TF's `ApplyRMSProp` kernels): a momentum slot always exists,
//! `m = momentum*m + lr*g / sqrt(v [- a^2] + epsilon); x = x - m`; sparse duplicates are applied one after
//! another. **[`Preset::Tf1`]**: the same with `v` starting at 1, `epsilon 1e-10`, duplicates summed.
//!
//! **[`Preset::Torch`]** (`lr 0.01, rho (alpha) 0.99, epsilon 1e-8`):
//! ```text
//! g = -g (maximize) ;  g = g + wd*x   (L2 weight decay)
//! v = rho*v + (1-rho)*g^2
//! a = a + (1-rho)*(g - a)                       (centered, torch's lerp)
//! d = sqrt(v - a^2) + epsilon  (centered)  |  sqrt(v) + epsilon
//! momentum > 0:  m = momentum*m + g/d ;  x = x - lr*m   (learning rate after the buffer)
//! momentum = 0:  x = x - lr*g/d
//! ```
//!
//! **[`Preset::Optax`]** (`lr 0.01, rho (decay) 0.9, epsilon 1e-8, eps_in_sqrt`):
//! ```text
//! v = rho*v + (1-rho)*g^2        (v starts at initial_accumulator_value, optax's initial_scale)
//! a = rho*a + (1-rho)*g          (centered)
//! bias_correction: vh = v/(1-rho^t), ah = a/(1-rho^t)
//! d = sqrt(vh [- ah^2] + epsilon) (eps_in_sqrt)  |  sqrt(vh [- ah^2]) + epsilon
//! u = -lr*g/d ;  momentum > 0: m = u + momentum*m ; u = m  (nesterov: u = u + momentum*m)
//! x = x + u                      (the momentum slot holds the trace of negative updates)
//! ```
//!
//! Every knob is also settable on its own ([`RmsPropConfigBuilder`]: epsilon placement, momentum form,
//! average form, initial accumulator, bias correction, Nesterov, weight decay mode, clipping rules, sparse
//! mode and duplicate rule) for combinations no framework ships.
//!
//! **Centered guard.** `v - a^2` can round below zero. Every preset treats a negative variance estimate
//! as zero: epsilon inside, `sqrt(max(v - a^2 + eps, eps))` only where `v - a^2 + eps < 0`; epsilon
//! outside, `sqrt(max(v - a^2, 0)) + eps`. Wherever the framework's result is defined it is unchanged;
//! where the framework would take the square root of a negative number (NaN), the crate gives a finite
//! step.
//!
//! ## Sparse gradients (IndexedSlices)
//!
//! [`Gradient::Sparse`] gives row indices along axis 0 (`i32`, `i64` or `u32`; unsorted, repeated or
//! empty) and one row of values per index. [`SparseMode::Lazy`] (the default for Keras, TF): only the
//! listed rows change, variable and every slot; other rows stay bit for bit. [`SparseMode::Dense`]
//! (PyTorch, Optax): every row is updated as if absent rows had gradient 0. [`SparseMode::LazyExact`]:
//! dense mode's numbers at the lazy cost (each row brought up to date for the steps it missed, in
//! closed form, when it is next listed, read, checkpointed, or on [`RmsProp::catch_up`]). Duplicates:
//! [`DuplicateIndices::Sum`] (summed, then one update), [`DuplicateIndices::Sequential`] (TF's raw
//! kernels: one full update per listed row, in list order), [`DuplicateIndices::Keras3`] (the summed rows
//! move the variable, the sum of their squares goes into the velocity). The host groups the indices by
//! row (indices only, `O(k log k)`); merging the values and the updates run on the GPU, one invocation per
//! (distinct row, column), so results are deterministic without atomics.
//!
//! **Row-wise velocity** (a variant no framework preset uses; FBGEMM's row-wise optimizers for
//! embedding tables): [`VarOptions::rowwise_velocity`] keeps one velocity per row of a variable of rank
//! `>= 2`, `v_r = rho*v_r + (1-rho)*mean_j(g_rj^2)`, and updates each element of the row with `v_r`
//! where the element-wise update uses its own velocity (momentum stays per element). A `[1M, 64]`
//! table's velocity is 64 times smaller ([`PoolStats::state_bytes`]); reads and checkpoints of its
//! [`Slot::Velocity`] hold one value per row.
//!
//! ## Example
//!
//! ```
//! use wgpu_rmsprop::{GpuContext, Gradient, Indices, Preset, RmsProp, RmsPropConfig, Schedule, Slot};
//! let ctx = GpuContext::new()?; // honours WGPU_BACKEND and WGPU_ADAPTER_NAME
//! let cfg = RmsPropConfig::preset(Preset::Keras)
//!     .learning_rate(Schedule::ExponentialDecay {
//!         initial_learning_rate: 0.1,
//!         decay_steps: 100.0,
//!         decay_rate: 0.9,
//!         staircase: false,
//!     })
//!     .momentum(0.9)
//!     .build()?;
//! let mut opt = RmsProp::new(&ctx, cfg)?;
//! let w = opt.add_variable("w", &[2], &[1.0, -1.0])?;
//! let table = opt.add_variable("embeddings", &[1000, 16], &vec![0.0; 16_000])?;
//! let rows = [3i64, 7, 3];
//! let values = vec![0.1f32; 3 * 16];
//! opt.apply(&[
//!     (w, Gradient::Dense(&[0.5, -0.5])),
//!     (table, Gradient::Sparse { indices: Indices::I64(&rows), values: &values }),
//! ])?;
//! println!("{:?} {:?}", opt.read_variable(w)?, opt.read_slot(w, Slot::Momentum)?);
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```

//! ## Parameter groups
//!
//! Per-variable options, as PyTorch's param groups and Keras's `exclude_from_weight_decay`:
//! [`RmsProp::add_variable_with`] or [`RmsProp::set_variable_options`] with a [`VarOptions`] (a
//! constant `learning_rate` and/or `lr_multiplier`, `weight_decay` or `exclude_from_weight_decay`,
//! `momentum`, `centered`, `epsilon`, `rho`, `maximize`, `frozen`; see [`mod@var_options`] for what each
//! means), and [`RmsProp::exclude_from_weight_decay_names`] for Keras's name matching. Each variable's
//! values ([`VarHyper`]) sit in a table the kernels read, so a step stays one dispatch per pool buffer;
//! a variable keeps only the slots its options give it ([`RmsProp::variable_slots`]).
//!
//! ```
//! use wgpu_rmsprop::{GpuContext, Preset, RmsProp, RmsPropConfig, Slot, VarOptions};
//! let ctx = GpuContext::new()?;
//! let mut opt = RmsProp::new(&ctx, RmsPropConfig::preset(Preset::Torch).momentum(0.9).build()?)?;
//! let w = opt.add_variable("w", &[256, 64], &vec![0.0; 256 * 64])?;
//! let b = opt.add_variable_with("b", &[64], &[0.0; 64], &VarOptions {
//!     learning_rate: Some(0.003), weight_decay: Some(0.1), momentum: Some(0.0), ..VarOptions::default()
//! })?;
//! opt.apply_gradients(&[(w, &vec![0.1; 256 * 64]), (b, &[0.1; 64])])?;
//! assert_eq!(opt.last_step_dispatches(), 1); // one pool buffer, one dispatch
//! assert!(opt.read_slot(b, Slot::Momentum).is_err()); // momentum 0: no momentum slot
//! assert_eq!(opt.variable_slots(w)?, [Slot::Velocity, Slot::Momentum]);
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```
//!
//! ## Keras's optimizer base class
//!
//! [`RmsPropConfigBuilder::loss_scale_factor`] (gradients divided first),
//! [`RmsPropConfigBuilder::gradient_accumulation_steps`] (`N` steps averaged, one update every `N`) and
//! [`RmsPropConfigBuilder::use_ema`] (a moving average of the weights in slot [`Slot::Ema`], with
//! `ema_momentum` and `ema_overwrite_frequency`), in Keras's order and counting; golden cases
//! `keras_ema_*`, `keras_accum_*`, `keras_lossscale_*`.
//!
//! ```
//! use wgpu_rmsprop::{GpuContext, RmsProp, RmsPropConfig, Slot};
//! let ctx = GpuContext::new()?;
//! let cfg = RmsPropConfig::builder()
//!     .gradient_accumulation_steps(2)
//!     .use_ema(true)
//!     .ema_momentum(0.9)
//!     .build()?;
//! let mut opt = RmsProp::new(&ctx, cfg)?;
//! let w = opt.add_variable("w", &[2], &[1.0, -1.0])?;
//! opt.apply_gradients(&[(w, &[0.5, -0.5])])?; // accumulated only
//! assert_eq!(opt.read_variable(w)?, [1.0, -1.0]);
//! opt.apply_gradients(&[(w, &[0.5, -0.5])])?; // the update, with the average of both
//! assert_ne!(opt.read_variable(w)?, [1.0, -1.0]);
//! // Both calls are Keras's first iteration (k = (t - 1) / 2 = 0): ema = x.
//! assert_eq!(opt.read_slot(w, Slot::Ema)?, opt.read_variable(w)?);
//! opt.swap_ema_weights()?; // evaluate with the averages, then swap back
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```
//!
//! ## Half the memory: f16 and bf16 storage
//!
//! [`StorageTypes`] gives the variables, the gradients and the optimizer state each a [`Dtype`] (f32,
//! f16 or bf16; [`RmsPropConfigBuilder::storage`] for all, [`VarOptions::storage`] per variable). The
//! kernels compute in f32 and round once when they store; the CPU twin ([`reference`](mod@reference)) does the same,
//! bit for bit. [`RmsPropConfigBuilder::stochastic_rounding`] rounds bf16 variables stochastically;
//! [`StorageTypes::copy`] keeps f32 master weights with a 16-bit copy written by the same kernels
//! ([`RmsProp::copy_slices`]). Host gradients of a 16-bit type travel as [`Gradient::Dense16`] /
//! [`Gradient::Sparse16`]; reads widen to f32 exactly. [`Dtype::Q8`] keeps the state in 8 bits with one
//! absmax per block ([`quant`], bitsandbytes' dynamic map), a quarter of f32's bytes.
//!
//! ```
//! use wgpu_rmsprop::half::bf16;
//! use wgpu_rmsprop::{Dtype, GpuContext, Gradient, HalfSlice, RmsProp, RmsPropConfig, StorageTypes};
//! let ctx = GpuContext::new()?;
//! let cfg = RmsPropConfig::builder()
//!     .storage(StorageTypes::all(Dtype::Bf16))
//!     .stochastic_rounding(7)
//!     .build()?;
//! let mut opt = RmsProp::new(&ctx, cfg)?;
//! let w = opt.add_variable("w", &[3], &[1.0, 0.5, -2.0])?;
//! let g = [bf16::from_f32(0.1), bf16::from_f32(-0.2), bf16::from_f32(0.3)];
//! opt.apply(&[(w, Gradient::Dense16(HalfSlice::Bf16(&g)))])?;
//! let x = opt.read_variable(w)?;
//! assert!(x.iter().all(|&v| bf16::from_f32(v).to_f32() == v)); // bf16 values
//! let stats = opt.pool_stats(); // the velocity and the variable, both 2 bytes per element
//! assert_eq!(stats.state_bytes, stats.variable_bytes);
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```
//!
//! ## In your own training loop
//!
//! **The submit protocol.** [`RmsProp::apply`] records, submits and resolves a step in one call. In a
//! loop of your own, [`RmsProp::record`] writes the step into your encoder (after your forward and
//! backward passes, before one submit) and returns a `#[must_use]` [`RecordedStep`]: resolve it with the
//! [`wgpu::SubmissionIndex`] of the submit that carried the encoder ([`RmsProp::submitted`], or
//! [`RmsProp::submit`] to finish, submit and resolve), or [`RmsProp::abandon`] it if you drop the encoder.
//! Several steps may be recorded before one submit; they resolve in recording order. Until a step is
//! resolved nothing the optimizer believes about the GPU changes: [`RmsProp::iterations`], the tables it
//! thinks are uploaded, its staging. An abandoned step leaves them exactly as before, and so leaves every
//! later step correct. While steps are unresolved, every call that reads or changes state (adding a
//! variable, reading, checkpoints, `apply`) returns [`Error::UnresolvedSteps`], which says what to do.
//!
//! **Layouts you can bind.** [`RmsProp::variable_slices`] and [`RmsProp::gradient_slices`] say where a
//! variable and its gradient live. Every slice starts on the device's
//! `min_storage_buffer_offset_alignment` (raise it with [`OptimizerOptions::slice_alignment`] to test for
//! GPUs that need 256 bytes), so your shader binds `(slice.buffer, slice.offset, slice.bound_bytes())`
//! directly. Adding a variable may grow a pool buffer and move every slice in it:
//! [`RmsProp::layout_version`] changes, slices taken before are stale, and a [`Gradient::Resident`] step
//! is refused with [`Error::StaleLayout`] until you take the slices again ([`RmsProp::freeze_layout`]
//! forbids further variables instead). [`RmsProp::add_variable_from_buffer`] adds a variable from values
//! already on the GPU.
//!
//! **`Resident` gradients** are read from the optimizer's own gradient buffer, which your backward pass
//! writes. A step never clears them: they persist until overwritten, so a backward pass may accumulate
//! into them; [`RmsProp::clear_gradients`] records their clearing into your encoder.
//!
//! **Reading back without blocking.** [`RmsProp::read_async`] reads any set of (variable, [`Tensor`])
//! with one copy and one map, as a future ([`ReadBack`]: polling it polls the device without waiting);
//! [`ReadBack::wait`] blocks on that read's own submission; [`RmsProp::read_many`] is the blocking form;
//! [`RmsProp::record_read`] copies into your buffer inside your encoder. Checkpoints read everything with
//! one wait. No call made per step blocks.
//!
//! ```
//! use wgpu_rmsprop::{GpuContext, Gradient, RmsProp, RmsPropConfig, Tensor};
//! let ctx = GpuContext::new()?;
//! let mut opt = RmsProp::new(&ctx, RmsPropConfig::default())?;
//! let w = opt.add_variable("w", &[1000], &vec![0.5; 1000])?;
//! opt.freeze_layout();
//! let grad = opt.gradient_slices(w)?.remove(0); // bind (grad.buffer, grad.offset, grad.bound_bytes())
//! let mut encoder = ctx.device().create_command_encoder(&Default::default());
//! // ... your backward pass writes the gradient into `grad` here; for the example, a clear ...
//! encoder.clear_buffer(&grad.buffer, grad.offset, Some(grad.bound_bytes()));
//! let step = opt.record(&mut encoder, &[(w, Gradient::Resident)])?;
//! let index = ctx.queue().submit([encoder.finish()]);
//! assert_eq!(opt.submitted(step, index)?, 1);
//! let values = opt.read_async(&[(w, Tensor::Variable)])?.wait()?; // or .await
//! assert_eq!(values[0][0], 0.5); // a zero gradient leaves `w` as it was
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```
//!
#![warn(missing_docs)]

pub mod case;
pub mod checkpoint;
pub mod config;
pub mod context;
#[cfg(feature = "distributed")]
pub mod distributed;
pub mod dtype;
pub mod error;
#[doc(hidden)]
pub mod half_bits;
#[doc(hidden)]
pub mod kernels;
mod optimizer;
mod pool;
mod pool_q8;
#[doc(hidden)]
pub mod pool_wgsl;
pub mod quant;
mod readback;
pub mod reference;
pub mod schedule;
#[doc(hidden)]
pub mod sparse;
mod step;
mod upload;
pub mod var_options;

pub use config::{
    AverageForm, ClipRules, DuplicateIndices, EpsilonPlacement, MomentumForm, NonFinite, Preset,
    RmsPropConfig, RmsPropConfigBuilder, SparseMode, StepScalars, WeightDecay,
};
pub use context::{ContextOptions, GpuContext};
pub use dtype::{Dtype, StorageTypes};
pub use error::{Error, Result, WgpuError};
/// The `half` crate, whose `f16` and `bf16` carry 16-bit host values ([`HalfSlice`]).
pub use half;
pub use optimizer::RmsProp;
pub use pool::{PoolStats, Slot};
pub use readback::ReadBack;
pub use schedule::{LearningRate, Schedule};
pub use sparse::Indices;
pub use step::types::{
    GpuGradient, GpuIndices, GpuSlice, Gradient, HalfSlice, OptimizerOptions, RecordedStep, Rows,
    Tensor, VarId,
};
pub use var_options::{VarHyper, VarOptions};
