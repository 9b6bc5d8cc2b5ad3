//! Listing the machine's CUDA devices (ordinal, name, memory, compute capability) through the driver API,
//! without opening a context on any of them: facts a worker reports, not devices it computes on.

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;

use crate::error::KernelError;

/// One CUDA device as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDevice {
    /// The driver's device ordinal (0-based, after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: u32,
    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Total device memory, MiB (rounded down).
    pub memory_mib: u64,
    /// Compute capability as major * 10 + minor, e.g. 90 for sm_90.
    pub compute_capability: u32,
}

impl std::fmt::Display for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} MiB, sm_{})",
            self.name, self.memory_mib, self.compute_capability
        )
    }
}

fn driver_err(op: &str) -> impl FnOnce(DriverError) -> KernelError + '_ {
    move |e| KernelError::Cuda {
        op: op.to_string(),
        detail: format!("{e:?}"),
    }
}

/// The CUDA devices the driver sees, in ordinal order. `Ok(vec![])` when the driver is there but reports no
/// device; [`KernelError::CudaUnavailable`] when there is no driver library, [`KernelError::Cuda`] when a
/// driver call fails. Never panics: a panic inside the bindings (e.g. a driver library lacking a symbol) is
/// returned as an error too.
pub fn list_devices() -> Result<Vec<CudaDevice>, KernelError> {
    // SAFETY: only probes dlopen for the driver library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(KernelError::CudaUnavailable(
            "no CUDA driver library (libcuda.so.1) on the library search path".into(),
        ));
    }
    std::panic::catch_unwind(query_devices).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the CUDA bindings panicked".into());
        Err(KernelError::CudaUnavailable(format!(
            "the CUDA driver library could not be used: {detail}"
        )))
    })
}

fn query_devices() -> Result<Vec<CudaDevice>, KernelError> {
    match result::init() {
        Ok(()) => {}
        // cuInit's answer when the driver works but no device is visible.
        Err(DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => return Ok(Vec::new()),
        Err(e) => return Err(driver_err("cuInit")(e)),
    }
    let count = result::device::get_count().map_err(driver_err("cuDeviceGetCount"))?;
    (0..count.max(0))
        .map(|ordinal| {
            let dev = result::device::get(ordinal).map_err(driver_err("cuDeviceGet"))?;
            let name = result::device::get_name(dev).map_err(driver_err("cuDeviceGetName"))?;
            // SAFETY: `dev` was returned by cuDeviceGet for a valid ordinal.
            let (bytes, major, minor) = unsafe {
                (
                    result::device::total_mem(dev).map_err(driver_err("cuDeviceTotalMem"))?,
                    result::device::get_attribute(
                        dev,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    )
                    .map_err(driver_err("cuDeviceGetAttribute(major)"))?,
                    result::device::get_attribute(
                        dev,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    )
                    .map_err(driver_err("cuDeviceGetAttribute(minor)"))?,
                )
            };
            Ok(CudaDevice {
                ordinal: ordinal as u32,
                name,
                memory_mib: bytes as u64 / (1024 * 1024),
                compute_capability: (major.max(0) * 10 + minor.max(0)) as u32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_returns_cleanly_with_or_without_a_driver() {
        match list_devices() {
            Ok(devices) => {
                for (i, d) in devices.iter().enumerate() {
                    assert_eq!(d.ordinal as usize, i);
                    assert!(!d.name.is_empty());
                    assert!(d.memory_mib > 0);
                    assert!(d.compute_capability >= 10, "{d}");
                }
                println!("{} CUDA device(s)", devices.len());
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        KernelError::CudaUnavailable(_) | KernelError::Cuda { .. }
                    ),
                    "{e}"
                );
                assert!(!e.to_string().is_empty());
                println!("no CUDA device listing: {e}");
            }
        }
        // Stable across calls (a second probe must not fail differently, e.g. on an already-initialised driver).
        assert_eq!(
            list_devices().map_err(|e| e.to_string()),
            list_devices().map_err(|e| e.to_string())
        );
    }

    #[test]
    fn display_names_memory_and_architecture() {
        let d = CudaDevice {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_mib: 81559,
            compute_capability: 90,
        };
        assert_eq!(d.to_string(), "NVIDIA H100 80GB HBM3 (81559 MiB, sm_90)");
    }
}
