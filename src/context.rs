//! The GPU context: adapter, device and queue, created here or borrowed from the caller.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Storage buffers one kernel binds per stage at most (the dense and lazy kernels: pooled state, gradient
/// or sparse rows, and per-variable clipping state).
pub(crate) const STORAGE_BUFFERS_NEEDED: u32 = 8;

/// How to pick the adapter when the crate creates the device itself.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Backends to consider; `None` reads `WGPU_BACKEND` (e.g. `vulkan`, `gl`, `metal`, `dx12`), else all.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name; `None` reads `WGPU_ADAPTER_NAME`, else the best
    /// adapter is taken (discrete, then integrated, virtual, software).
    pub adapter_name: Option<String>,
    /// Features requested on top of what the crate needs, where the adapter has them (e.g.
    /// `TIMESTAMP_QUERY | TIMESTAMP_QUERY_INSIDE_ENCODERS` to time steps on the GPU). Check
    /// `ctx.device().features()` for what was granted.
    pub optional_features: wgpu::Features,
}

/// A wgpu device and queue, shared by every optimizer built on it.
///
/// Cloning is cheap (the handles are reference counted). Create one per process and reuse it:
/// ```
/// let ctx = wgpu_rmsprop::GpuContext::new()?;
/// println!("{}", ctx.adapter_description());
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: Option<wgpu::AdapterInfo>,
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Creates a device on the adapter chosen by `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`, or the best one.
    pub fn new() -> Result<Self> {
        Self::with_options(&ContextOptions::default())
    }

    /// Creates a device on the adapter chosen by `options` (environment variables fill what is `None`).
    pub fn with_options(options: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(options))
    }

    /// Async form of [`GpuContext::with_options`].
    pub async fn with_options_async(options: &ContextOptions) -> Result<Self> {
        let backends = options
            .backends
            .or_else(wgpu::Backends::from_env)
            .unwrap_or(wgpu::Backends::all());
        let name = options
            .adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|n| !n.is_empty());
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        let describe = |a: &wgpu::Adapter| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        };
        let rank = |t: wgpu::DeviceType| match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        let usable = |a: &wgpu::Adapter| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
                && a.limits().max_storage_buffers_per_shader_stage >= STORAGE_BUFFERS_NEEDED
        };
        let chosen = adapters
            .iter()
            .filter(|a| usable(a))
            .filter(|a| match &name {
                Some(n) => a.get_info().name.to_lowercase().contains(&n.to_lowercase()),
                None => true,
            })
            .min_by_key(|a| rank(a.get_info().device_type));
        let Some(adapter) = chosen else {
            return Err(Error::NoAdapter {
                wanted: format!(
                    "backends {backends:?}{}, compute shaders, {STORAGE_BUFFERS_NEEDED} storage buffers per stage",
                    name.map(|n| format!(", name containing {n:?}")).unwrap_or_default()
                ),
                available: adapters.iter().map(describe).collect(),
            });
        };
        let info = adapter.get_info();
        log::info!(
            "wgpu-rmsprop: adapter {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        let limits = required_limits(&adapter.limits());
        // Immediate data (push constants) carry each dispatch's parameters in the command stream.
        let features =
            adapter.features() & (wgpu::Features::IMMEDIATES | options.optional_features);
        log::info!(
            "wgpu-rmsprop: requesting max_storage_buffer_binding_size={} max_buffer_size={} \
             max_storage_buffers_per_shader_stage={} max_compute_workgroups_per_dimension={}",
            limits.max_storage_buffer_binding_size,
            limits.max_buffer_size,
            limits.max_storage_buffers_per_shader_stage,
            limits.max_compute_workgroups_per_dimension
        );
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-rmsprop"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;
        // A library must not abort its caller: errors outside our error scopes are logged, not panicked on.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            log::error!("wgpu-rmsprop: uncaptured wgpu error: {e}");
        }));
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = flag.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        Ok(GpuContext {
            device,
            queue,
            info: Some(info),
            lost,
        })
    }

    /// Borrows a caller's device and queue. The device must allow at least 8 storage buffers per shader
    /// stage (wgpu's defaults allow 8).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        let have = device.limits().max_storage_buffers_per_shader_stage;
        if have < STORAGE_BUFFERS_NEEDED {
            return Err(Error::DeviceLimit {
                limit: "max_storage_buffers_per_shader_stage",
                have: have.into(),
                need: STORAGE_BUFFERS_NEEDED.into(),
            });
        }
        Ok(GpuContext {
            device,
            queue,
            info: None,
            lost: Arc::new(Mutex::new(None)),
        })
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's information, when the context created the device itself.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.info.as_ref()
    }

    /// `name/backend` of the adapter (or `borrowed device`).
    pub fn adapter_description(&self) -> String {
        match &self.info {
            Some(i) => format!("{}/{:?}", i.name, i.backend).to_lowercase(),
            None => "borrowed device".to_string(),
        }
    }

    /// Fails with [`Error::DeviceLost`] once the device has been lost.
    pub(crate) fn check_alive(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(msg) => Err(Error::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// Blocks until all submitted work is done.
    pub fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu(e.to_string()))
    }
}

/// Runs `make` (GPU allocations) inside out-of-memory and validation error scopes: what it made, or the
/// message of the first error it raised.
pub(crate) fn allocation_scope<T>(
    device: &wgpu::Device,
    make: impl FnOnce() -> T,
) -> std::result::Result<T, String> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let made = make();
    // The scopes' results are ready at once on native backends; where they are not (WebGPU), the
    // allocation is taken as successful rather than blocking.
    let errors = [poll_once(validation.pop()), poll_once(oom.pop())];
    match errors.into_iter().flatten().flatten().next() {
        None => Ok(made),
        Some(e) => Err(e.to_string()),
    }
}

/// Creates a buffer so that running out of memory (or an invalid size) is an [`Error::Allocation`]
/// naming the buffer instead of an uncaptured wgpu error.
pub(crate) fn create_buffer_checked(
    device: &wgpu::Device,
    desc: &wgpu::BufferDescriptor<'_>,
) -> Result<wgpu::Buffer> {
    allocation_scope(device, || device.create_buffer(desc)).map_err(|message| Error::Allocation {
        what: desc.label.unwrap_or("buffer").to_string(),
        bytes: desc.size,
        message,
    })
}

/// wgpu's downlevel defaults, raised to the adapter's values where the kernels profit from more.
fn required_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    let mut l = wgpu::Limits::downlevel_defaults();
    l.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size;
    l.max_buffer_size = adapter.max_buffer_size;
    l.max_storage_buffers_per_shader_stage = adapter.max_storage_buffers_per_shader_stage;
    l.max_compute_workgroups_per_dimension = adapter.max_compute_workgroups_per_dimension;
    l.max_compute_workgroup_size_x = adapter.max_compute_workgroup_size_x;
    l.max_compute_invocations_per_workgroup = adapter.max_compute_invocations_per_workgroup;
    l.min_uniform_buffer_offset_alignment = adapter.min_uniform_buffer_offset_alignment;
    l.min_storage_buffer_offset_alignment = adapter.min_storage_buffer_offset_alignment;
    l.max_immediate_size = adapter.max_immediate_size;
    l
}

/// Polls a future once without blocking: `Some` when it was ready.
pub(crate) fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
