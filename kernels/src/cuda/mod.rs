//! CUDA versions of the kernels: sources compiled at run time by NVRTC for the device's own architecture,
//! libraries (driver, NVRTC, cuBLAS) opened with dlopen, so this builds and its CPU tests run without CUDA.

pub mod attention;
pub mod attention_tc;
pub mod bench;
mod bench_ops;
pub mod compile;
pub mod cubin_cache;
pub mod device;
pub mod engine_ops;
pub mod gemm;
pub mod gemm_choice;
pub mod inventory;
pub mod lora;
pub mod lora_bf16;
pub mod lora_fused;
pub mod nf4;
pub mod ops;
pub mod ops_bf16;

pub use device::Gpu;
pub use inventory::{CudaDevice, list_devices};
