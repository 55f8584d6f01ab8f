//! The GPU runtime: a CUDA context, its default stream and the embedded kernel modules.
//!
//! libcuda is opened at run time (cudarc's dynamic loading), so everything here turns a missing
//! driver, a missing device or a build without nvcc into an [`Error`] instead of a panic.

mod buffer;
pub mod params;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::ffi::c_void;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;

pub use buffer::{DeviceMatrix, RawMatrix};

use crate::build_info;
use crate::error::{CudaContext as _, Error, Result};

/// A handle on one GPU: cheap to clone, shareable across threads.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

struct GpuInner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("ordinal", &self.inner.ctx.ordinal()).finish()
    }
}

impl Gpu {
    /// Opens device `ordinal` (its primary context, shared with other CUDA users of the process,
    /// PyTorch included) and loads every embedded kernel module.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !build_info::COMPILED {
            return Err(Error::KernelsNotCompiled(build_info::NOT_COMPILED_REASON.into()));
        }
        // cudarc panics on first use when libcuda is absent; ask first.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDriver("libcuda.so could not be loaded (is the NVIDIA driver installed?)".into()));
        }
        let count = match CudaContext::device_count() {
            Ok(count) => count,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => 0,
            Err(e) => return Err(Error::NoDevice(format!("cuInit / cuDeviceGetCount failed: {e}"))),
        };
        if count <= ordinal as i32 {
            return Err(Error::NoDevice(format!("device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).during(format_args!("opening device {ordinal}"))?;
        let stream = ctx.default_stream();
        let mut modules = HashMap::new();
        for (name, image) in build_info::MODULES {
            let module = ctx
                .load_module(Ptx::from_binary(image.to_vec()))
                .during(format_args!("loading kernel module `{name}` (archs {})", build_info::ARCHS))?;
            modules.insert(*name, module);
        }
        Ok(Gpu { inner: Arc::new(GpuInner { ctx, stream, modules, functions: Mutex::new(HashMap::new()) }) })
    }

    /// Device 0, or why there is none usable.
    pub fn first() -> Result<Self> {
        Self::new(0)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The default stream every safe op of this crate runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Wraps a stream owned by someone else (PyTorch's current stream, say) so that ops can run on it.
    ///
    /// # Safety
    /// `raw` must be a live stream of this device's primary context, kept alive while the returned
    /// handle (and anything launched through it) is in use.
    pub unsafe fn borrow_stream(&self, raw: sys::CUstream) -> Arc<CudaStream> {
        self.inner.ctx.wrap_borrowed_stream(raw)
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        let name = self.inner.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        match self.inner.ctx.compute_capability() {
            Ok((major, minor)) => format!("{name} (sm_{major}{minor})"),
            Err(_) => name,
        }
    }

    /// Waits for everything queued on the default stream.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().during("stream synchronize")
    }

    /// A kernel of module `module` (`kernels/<module>.cu`), loaded once and cached.
    pub(crate) fn function(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let mut cache = self.inner.functions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let m = self.inner.modules.get(module).ok_or_else(|| Error::KernelsNotCompiled(format!("module `{module}` is not embedded")))?;
        let f = m.load_function(name).during(format_args!("loading kernel `{name}`"))?;
        cache.insert(name.to_owned(), f.clone());
        Ok(f)
    }

    /// Launches `module::name` on `stream` with its one argument, the op's parameter struct
    /// (generated from `kernels/params/<op>.h`, see [`params`]).
    ///
    /// # Safety
    /// `P` must be the struct the kernel takes, and every pointer in it must be valid for the
    /// accesses the kernel makes with the sizes given.
    pub(crate) unsafe fn launch<P: params::KernelParams>(
        &self,
        stream: &CudaStream,
        module: &str,
        name: &str,
        cfg: LaunchConfig,
        params: &P,
    ) -> Result<()> {
        let f = self.function(module, name)?;
        self.inner.ctx.bind_to_thread().during("binding the CUDA context")?;
        // cuLaunchKernel copies the struct out of `params` before it returns.
        let mut args = [params as *const P as *mut c_void];
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            cfg.grid_dim,
            cfg.block_dim,
            cfg.shared_mem_bytes,
            stream.cu_stream(),
            &mut args,
        )
        .during(format_args!("kernel `{name}`"))
    }
}

/// A i32 kernel argument, or a clear error when a size does not fit.
pub(crate) fn dim_i32(arg: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(arg, format!("{v} exceeds the kernels' i32 index range")))
}
