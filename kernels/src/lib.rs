//! NF4 and LoRA kernels: CPU references, and CUDA versions compiled at run time with NVRTC.
//!
//! - [`nf4`]: NF4 quantisation with double quantisation (bitsandbytes' format), the reference the engine uses.
//! - [`lora`]: the fused LoRA linear layer, forward and backward.
//! - [`testdata`]: deterministic random inputs for tests and benchmarks.

pub mod error;
pub mod lora;
pub mod nf4;
pub mod testdata;

pub use error::KernelError;
