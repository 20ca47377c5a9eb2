//! The crate's error type.
//!
//! Every fallible entry point returns [`Error`]. Errors that come from caller input are raised on the host,
//! before any GPU work is encoded, so a call that returns one of them has left every variable, every slot
//! and the step count exactly as they were.

use thiserror::Error as ThisError;

/// Shorthand for `Result<T, wgpu_rmsprop::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, ThisError)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter is out of range. Names the field and echoes the value received (Keras style).
    #[error("`{field}` {requirement}. Received: {field}={value}")]
    InvalidConfig {
        /// The offending field, by its Keras name (`rho`, `epsilon`, ...).
        field: &'static str,
        /// The value received, as text.
        value: String,
        /// What the value must satisfy, e.g. "must be in [0, 1)".
        requirement: &'static str,
    },
    /// A variable's options ([`crate::VarOptions`]) hold a value out of range, or one that conflicts
    /// with the configuration. Names the variable, the option and the value received; nothing changed.
    #[error("variable {variable:?}: option `{field}` {requirement}. Received: {field}={value}")]
    InvalidVarOptions {
        /// The variable's name.
        variable: String,
        /// The offending option (`lr_multiplier`, `rho`, ...).
        field: &'static str,
        /// The value received, as text.
        value: String,
        /// What the value must satisfy.
        requirement: &'static str,
    },
    /// A gradient's element type is not the variable's gradient type ([`crate::StorageTypes`]).
    #[error("gradient of {name:?}: {got} values where the variable takes {expected} ({hint})")]
    GradientType {
        /// The variable's name.
        name: String,
        /// The type the variable takes there.
        expected: crate::dtype::Dtype,
        /// The type given.
        got: crate::dtype::Dtype,
        /// What to do instead.
        hint: &'static str,
    },
    /// No adapter matched the request (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME` or the given options).
    #[error(
        "no GPU adapter found (looked for {wanted}); adapters seen: [{}]. Check WGPU_BACKEND and \
         WGPU_ADAPTER_NAME; on Linux without a GPU, install Mesa's CPU Vulkan driver: `apt-get install -y \
         mesa-vulkan-drivers libvulkan1 vulkan-tools`, then run with WGPU_BACKEND=vulkan \
         WGPU_ADAPTER_NAME=llvmpipe",
        available.join(", ")
    )]
    NoAdapter {
        /// What was asked for.
        wanted: String,
        /// The adapters that were seen, as `name (backend)`.
        available: Vec<String>,
    },
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter {adapter}: {message}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// The device lacks a limit the kernels need.
    #[error("the device's `{limit}` is {have}, the kernels need at least {need}")]
    DeviceLimit {
        /// Name of the `wgpu::Limits` field.
        limit: &'static str,
        /// The device's value.
        have: u64,
        /// The value needed.
        need: u64,
    },
    /// A variable with this name already exists.
    #[error("a variable named {name:?} already exists")]
    DuplicateVariable {
        /// The repeated name.
        name: String,
    },
    /// A variable's shape is unusable (its element count overflows, or exceeds what the crate can index).
    #[error("variable {name:?}: shape {shape:?} {reason}")]
    InvalidShape {
        /// The variable's name.
        name: String,
        /// The shape received.
        shape: Vec<usize>,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The initial values do not match the shape.
    #[error(
        "variable {name:?}: shape {shape:?} has {expected} elements, {got} initial values given"
    )]
    InitLength {
        /// The variable's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Values received.
        got: usize,
    },
    /// A variable handle or name that this optimizer does not know.
    #[error("unknown variable {0}")]
    UnknownVariable(String),
    /// A gradient whose length does not match its variable.
    #[error("gradient for variable {name:?} has {got} elements, the variable has {expected}")]
    GradientLength {
        /// The variable's name.
        name: String,
        /// The variable's element count.
        expected: usize,
        /// The gradient's element count.
        got: usize,
    },
    /// The same variable appears twice in one step.
    #[error("variable {name:?} is given two gradients in one step")]
    DuplicateGradient {
        /// The variable's name.
        name: String,
    },
    /// A sparse gradient for a scalar variable (sparse rows need at least one dimension).
    #[error("variable {name:?} is a scalar: it cannot take a sparse (row) gradient")]
    SparseScalar {
        /// The variable's name.
        name: String,
    },
    /// A sparse gradient whose values are not `len(indices) * row_len` long (or too many to index).
    #[error("sparse gradient for variable {name:?}: {indices} indices x row length {row_len} need {} values, {got} given", indices * row_len)]
    SparseValuesLength {
        /// The variable's name.
        name: String,
        /// Number of indices.
        indices: usize,
        /// Elements per row.
        row_len: usize,
        /// Values received.
        got: usize,
    },
    /// A sparse row index outside `[0, rows)`.
    #[error("sparse gradient for variable {name:?}: index {index} at position {position} is outside [0, {rows})")]
    IndexOutOfRange {
        /// The variable's name.
        name: String,
        /// The bad index.
        index: i64,
        /// Its position in the index list.
        position: usize,
        /// Rows of the variable.
        rows: usize,
    },
    /// A learning-rate schedule or closure produced a negative or non-finite rate for a step.
    #[error("the learning rate for step {step} is {value}: it must be a finite number >= 0")]
    InvalidLearningRate {
        /// The 1-based step.
        step: u64,
        /// The rate produced.
        value: f64,
    },
    /// A caller's GPU gradient buffer cannot be used as given.
    #[error("gradient buffer for variable {name:?}: {reason}")]
    GradientBuffer {
        /// The variable's name.
        name: String,
        /// What is wrong (usage flags, alignment, size).
        reason: String,
    },
    /// The requested slot is not kept with this configuration (momentum needs `momentum > 0`,
    /// average_gradient needs `centered`).
    #[error("slot {slot} is not kept by this optimizer ({why})")]
    SlotNotPresent {
        /// The slot's name.
        slot: &'static str,
        /// Which setting would create it.
        why: &'static str,
    },
    /// A GPU allocation failed (out of memory or over a device limit).
    #[error("could not allocate {what} ({bytes} bytes): {message}")]
    Allocation {
        /// What was being allocated.
        what: String,
        /// Its size.
        bytes: u64,
        /// The device's message.
        message: String,
    },
    /// A shader failed to compile or a pipeline failed to build.
    #[error("kernel {kernel}: {message}")]
    Kernel {
        /// The kernel's name.
        kernel: &'static str,
        /// The compiler's message.
        message: String,
    },
    /// The device was lost; the optimizer's GPU state is gone.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// A golden case is malformed or inconsistent.
    #[error("{message}")]
    InvalidCase {
        /// The case's name (`?` when unreadable).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A golden case needs a feature this crate does not have yet.
    #[error("{what}")]
    Unsupported {
        /// The case's name.
        name: String,
        /// The missing features.
        what: String,
    },
    /// Steps recorded with [`crate::RmsProp::record`] are not resolved yet, and this call cannot run in
    /// order with them. Resolve each: [`crate::RmsProp::submitted`] with the submission index of the
    /// submit that carried its encoder (or [`crate::RmsProp::submit`]), or [`crate::RmsProp::abandon`] if
    /// the encoder was dropped.
    #[error(
        "cannot {call}: {count} recorded step(s) are unresolved; pass each step's SubmissionIndex to \
         RmsProp::submitted (or use RmsProp::submit), or RmsProp::abandon it if its encoder was dropped"
    )]
    UnresolvedSteps {
        /// Unresolved steps.
        count: usize,
        /// What was refused.
        call: &'static str,
    },
    /// A [`crate::RecordedStep`] cannot be resolved as asked.
    #[error("recorded step {step} cannot be resolved: {reason}")]
    StepResolution {
        /// The step's number.
        step: u64,
        /// Why.
        reason: &'static str,
    },
    /// A [`crate::Gradient::Resident`] step after the pools moved (a variable was added and a pool
    /// buffer grew) and before the caller took the new slices: the gradient would have been written into
    /// a buffer the optimizer no longer reads.
    #[error(
        "variable {name:?}: a Resident gradient, but the pools moved to layout {version} since the slices \
         were last taken; take them again (gradient_slices) and rebind, or freeze the layout before \
         taking them"
    )]
    StaleLayout {
        /// The variable's name.
        name: String,
        /// The current layout version.
        version: u64,
    },
    /// A variable was added after [`crate::RmsProp::freeze_layout`].
    #[error("cannot add variable {name:?}: the layout is frozen")]
    LayoutFrozen {
        /// The variable's name.
        name: String,
    },
    /// A step needs more of one of its buffers than one binding of the device may hold: split it into
    /// smaller steps (fewer sparse rows), or use a device with a larger
    /// `max_storage_buffer_binding_size`. Nothing was recorded; later steps are unaffected.
    #[error("the step needs {bytes} bytes of {buffer}, over the device's binding limit of {limit} bytes")]
    StepTooLarge {
        /// The step buffer.
        buffer: String,
        /// Bytes needed.
        bytes: u64,
        /// The device's limit.
        limit: u64,
    },
    /// A checkpoint could not be written, or read back: unreadable, truncated, corrupted, or not matching
    /// this optimizer (preset, configuration, variables, shapes, dtypes). Nothing was restored.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The ranks of a distributed optimizer (`--features distributed`) were given configurations,
    /// variables or step inputs that differ: found at start (an all-reduced hash per field) or at a
    /// step, on every rank alike. Names the first field that differs.
    #[error("distributed: `{field}` differs across ranks ({detail})")]
    RankMismatch {
        /// The first field that differs (`rho`, `variables[2].shape`, `step.gradients`, ...).
        field: String,
        /// What was compared.
        detail: String,
    },
    /// A distributed checkpoint was written by another world size or layout; this version does not
    /// re-shard (resume on the world size that wrote it).
    #[error(
        "distributed checkpoint {path}: written by {written} ranks, this job has {now}: {hint}"
    )]
    WorldSize {
        /// The manifest.
        path: String,
        /// World size of the job that wrote it.
        written: usize,
        /// World size of this job.
        now: usize,
        /// What to do.
        hint: &'static str,
    },
    /// Waiting on or reading from the GPU failed.
    #[error("GPU operation failed: {0}")]
    Gpu(String),
    /// wgpu rejected work the host could not check (e.g. a buffer of another device): nothing of it
    /// ran. The wgpu error is kept as the source.
    #[error("{context}: {source}")]
    Wgpu {
        /// What was being done.
        context: String,
        /// wgpu's error.
        #[source]
        source: WgpuError,
    },
}

/// A wgpu error kept as the source of [`Error::Wgpu`]: its kind and its full message with every
/// nested cause (wgpu's own error type is neither `Sync` nor `Clone`, which this crate's error is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuError {
    /// `validation`, `out of memory` or `internal`.
    pub kind: &'static str,
    /// The message and its causes, outermost first.
    pub messages: Vec<String>,
}

impl From<&wgpu::Error> for WgpuError {
    fn from(e: &wgpu::Error) -> Self {
        let kind = match e {
            wgpu::Error::OutOfMemory { .. } => "out of memory",
            wgpu::Error::Validation { .. } => "validation",
            wgpu::Error::Internal { .. } => "internal",
        };
        let mut messages = vec![e.to_string()];
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            messages.push(c.to_string());
            cause = c.source();
        }
        WgpuError { kind, messages }
    }
}

impl std::fmt::Display for WgpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wgpu {} error: {}", self.kind, self.messages.join(": "))
    }
}

impl std::error::Error for WgpuError {}
