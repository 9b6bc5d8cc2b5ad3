//! The engine's error type: every failure names the file, field or input at fault and what is accepted.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model, training, or generating.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {bytes} bytes to {path}: {source}")]
    Write {
        path: PathBuf,
        bytes: u64,
        source: std::io::Error,
    },
    #[error("{path}: unsupported or invalid config: key `{key}`: {message}")]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: bad weights: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: bad tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: adapter does not fit this model: {message}")]
    Adapter { path: PathBuf, message: String },
    #[error("bad input: {0}")]
    Input(String),
    /// An operation of the kernel engine failed on its device (a CUDA launch, out of memory, bad sizes).
    #[error("kernel `{op}` failed on {device} (shapes: {shapes}): {message}")]
    Kernel {
        op: &'static str,
        device: String,
        shapes: String,
        message: String,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The caller asked the loop to stop; the state after `step` updates is in the checkpoint `checkpoint`.
    #[error("training stopped on request after step {step}")]
    Stopped {
        step: usize,
        checkpoint: Option<PathBuf>,
    },
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A config key the engine does not accept.
    pub fn config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A weight file that is missing a tensor, truncated, or of the wrong shape.
    pub fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Weights {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A tokenizer that cannot be built or does not match the model.
    pub fn tokenizer(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Tokenizer {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A failed kernel-engine operation `op` on `device`, with the shapes it was given.
    pub fn kernel(
        op: &'static str,
        device: impl Into<String>,
        shapes: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        Self::Kernel {
            op,
            device: device.into(),
            shapes: shapes.into(),
            message: message.to_string(),
        }
    }

    /// An adapter that does not match the model it is loaded into.
    pub fn adapter(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Adapter {
            path: path.into(),
            message: message.into(),
        }
    }
}
