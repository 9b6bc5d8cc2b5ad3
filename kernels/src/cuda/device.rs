//! Finding a GPU and running kernels on it: the context and stream of one device (device 0 for [`Gpu::get`], any
//! ordinal for [`Gpu::open`]), its compute capability, and the modules compiled for it (once per source file: in
//! memory for the process, and as CUBIN files in the kernel cache folder across processes, see
//! [`super::cubin_cache`]), plus small helpers to move data and launch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::compile::{self, KernelSource};
use super::cubin_cache::{self, CubinCache, CubinOrigin};
use crate::error::KernelError;

/// Turns any CUDA library error into a [`KernelError::Cuda`] naming the operation.
pub(crate) fn cuda_err<E: std::fmt::Debug>(op: impl Into<String>) -> impl FnOnce(E) -> KernelError {
    let op = op.into();
    move |e| KernelError::Cuda {
        op,
        detail: format!("{e:?}"),
    }
}

/// One GPU ready to run Tandem's kernels.
pub struct Gpu {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: u32,
    name: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    cubins: CubinCache,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

impl Gpu {
    /// The process's GPU, opened on first call; `None` when there is none or CUDA cannot be used, which is
    /// reported once (tracing, info level) with the reason, not treated as an error.
    pub fn get() -> Option<Arc<Gpu>> {
        static GPU: OnceLock<Option<Arc<Gpu>>> = OnceLock::new();
        GPU.get_or_init(|| match Self::open_device(0) {
            Ok(gpu) => {
                tracing::info!(device = %gpu.name, arch = gpu.arch, "CUDA device found; kernels compile for it with NVRTC");
                Some(Arc::new(gpu))
            }
            Err(why) => {
                tracing::info!(reason = %why, "no CUDA device in use; the CPU references run instead");
                None
            }
        })
        .clone()
    }

    /// Why there is no GPU, or `None` when there is one (for tests that skip with a printed reason).
    pub fn absence_reason() -> Option<String> {
        match Self::get() {
            Some(_) => None,
            None => Some(
                Self::open_device(0)
                    .err()
                    .unwrap_or_else(|| "device could not be opened".into()),
            ),
        }
    }

    /// The GPU of driver ordinal `ordinal` (after `CUDA_VISIBLE_DEVICES`): device 0 is the process's shared
    /// [`Gpu::get`] (one module cache); another ordinal is opened anew on each call. The error says why none can
    /// be used ([`KernelError::CudaUnavailable`]).
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>, KernelError> {
        if ordinal == 0
            && let Some(gpu) = Self::get()
        {
            return Ok(gpu);
        }
        Self::open_device(ordinal)
            .map(Arc::new)
            .map_err(KernelError::CudaUnavailable)
    }

    fn open_device(ordinal: usize) -> Result<Gpu, String> {
        // SAFETY: only probes dlopen for the driver library names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver library (libcuda.so.1) on the library search path".into());
        }
        compile::nvrtc_version()?;
        let count = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e:?}"))?;
        if count < 1 {
            return Err("the CUDA driver reports no device".into());
        }
        if ordinal >= count as usize {
            return Err(format!(
                "the CUDA driver reports {count} device(s); there is no device {ordinal}"
            ));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| format!("opening device {ordinal}: {e:?}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("compute capability: {e:?}"))?;
        if major < 8 {
            return Err(format!(
                "device {ordinal} is sm_{major}{minor}; the kernels need sm_80 or newer (bf16 conversions)"
            ));
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let stream = ctx.default_stream();
        Ok(Gpu {
            ordinal,
            ctx,
            stream,
            arch: (major * 10 + minor) as u32,
            name,
            modules: Mutex::new(HashMap::new()),
            cubins: CubinCache::from_env(),
        })
    }

    /// The driver's ordinal of the device.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability as a number, e.g. 90 for sm_90.
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every kernel of this crate is launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A kernel function, compiling and loading its source file for this device on first use.
    pub fn function(
        &self,
        source: &'static KernelSource,
        name: &str,
    ) -> Result<CudaFunction, KernelError> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(source.name) {
                Some(m) => m.clone(),
                None => {
                    let module = self.load(source)?;
                    modules.insert(source.name, module.clone());
                    module
                }
            }
        };
        module
            .load_function(name)
            .map_err(cuda_err(format!("find kernel {name} in {}", source.name)))
    }

    /// Compiles `source` for this device, or reads it from the CUBIN cache, and loads it. A cached CUBIN the
    /// driver refuses is deleted, compiled again and stored once more.
    fn load(&self, source: &'static KernelSource) -> Result<Arc<CudaModule>, KernelError> {
        let nvrtc = compile::nvrtc_version().map_err(KernelError::CudaUnavailable)?;
        let key = cubin_cache::key(source, self.arch, &compile::options(self.arch), nvrtc);
        let compile = || compile::compile_cubin(source, self.arch);
        let (cubin, origin) = self
            .cubins
            .get_or_compile(source, self.arch, &key, compile)?;
        tracing::debug!(source = source.name, arch = self.arch, origin = ?origin, "kernel module ready");
        let load = |cubin: Vec<u8>| {
            self.ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(cuda_err(format!("load module {}", source.name)))
        };
        match (load(cubin), origin) {
            (Ok(m), _) => Ok(m),
            (Err(e), CubinOrigin::Cached(path)) => {
                tracing::warn!(file = %path.display(), error = %e, "the driver refused a cached CUBIN; compiling again");
                let _ = std::fs::remove_file(&path);
                let (cubin, _) = self
                    .cubins
                    .get_or_compile(source, self.arch, &key, compile)?;
                load(cubin)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, KernelError> {
        self.stream
            .clone_htod(data)
            .map_err(cuda_err("copy to device"))
    }

    /// A new zeroed device buffer of `len` elements (at least one, so it can always be passed to a kernel).
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(cuda_err("allocate"))
    }

    /// Copies a device buffer back to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        data: &CudaSlice<T>,
    ) -> Result<Vec<T>, KernelError> {
        self.stream
            .clone_dtoh(data)
            .map_err(cuda_err("copy to host"))
    }

    /// Waits for all work on the stream and surfaces any asynchronous error.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }
}

/// `buf` holds at least `len` elements, or an error naming it.
pub(crate) fn need<T>(
    what: &'static str,
    buf: &CudaSlice<T>,
    len: usize,
) -> Result<(), KernelError> {
    if buf.len() >= len {
        Ok(())
    } else {
        Err(KernelError::invalid(
            what,
            format!("device buffer of {} elements, needs {len}", buf.len()),
        ))
    }
}

/// `v` as an `int` kernel argument, or an error naming it.
pub(crate) fn i32_of(v: usize, what: &'static str) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::invalid(what, format!("{v} does not fit in i32")))
}

/// Launches kernel `$name` of source file `$source` on `$gpu` with `$cfg` and the arguments in order, returning
/// early with the error. The caller vouches that the arguments match the kernel's signature and that the sizes
/// were checked.
macro_rules! launch_kernel {
    ($gpu:expr, $source:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $gpu.function($source, $name)?;
        let mut b = $gpu.stream().launch_builder(&f);
        $( b.arg($arg); )*
        // SAFETY: the caller's argument list matches the kernel's signature and its sizes were checked.
        unsafe { b.launch($cfg) }
            .map_err($crate::cuda::device::cuda_err(concat!("launch ", $name)))?;
    }};
}
pub(crate) use launch_kernel;

/// Blocks of `threads` threads covering `items` work items (at least one block).
pub(crate) fn blocks_for(items: usize, per_block: usize) -> u32 {
    items.div_ceil(per_block).max(1) as u32
}
