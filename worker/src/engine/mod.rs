//! The engine that runs one job: models (LLaMA, T5) with LoRA/QLoRA adapters, the training loop, generation.

pub mod alloc;
pub mod backend;
pub mod bf16;
pub mod error;
pub mod files;
pub mod fused;
pub mod lora;
pub mod model;
pub mod ops;
pub mod packed;
pub mod peft;
pub mod rng;
pub mod rowdot;
pub mod tensor_io;

pub use error::{EngineError, Result};
pub mod generate;
pub mod inspect;
pub mod jobs;
pub mod kernel;
pub mod llama;
pub mod load;
pub mod qlora;
pub mod t5;
pub mod threads;
pub mod train;
