//! NF4 and LoRA kernels: CPU references, and CUDA versions compiled at run time with NVRTC.
//!
//! - [`nf4`]: NF4 quantisation with double quantisation (bitsandbytes' format), the reference the engine uses.
//! - [`cuda`]: the CUDA kernels, their run-time compilation and launch.
//! - [`dropout`]: dropout keep masks from a counter-based generator, the same bits on the CPU and the GPU.
//! - [`lora`]: the fused LoRA linear layer, forward and backward.
//! - [`ops`]: the LLaMA training op set (embedding, RMSNorm, RoPE, attention, SwiGLU, cross-entropy, AdamW,
//!   clipping), forward and backward.
//! - [`testdata`]: deterministic random inputs for tests and benchmarks.

pub mod cuda;
pub mod dropout;
pub mod error;
pub mod lora;
pub mod nf4;
pub mod ops;
pub mod testdata;

pub use error::KernelError;
