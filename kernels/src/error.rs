//! The one error type of the kernels crate: bad shapes or data, malformed serialised tensors, CUDA failures.

use thiserror::Error;

/// Everything a kernel, a CPU reference or the CUDA runtime can refuse or fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A shape, length or parameter that the operation does not accept.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which argument or field is wrong (e.g. `weights`, `rank`).
        what: &'static str,
        /// What was given and what is accepted.
        detail: String,
    },
    /// An input value that is NaN or infinite where only finite values are accepted.
    #[error("{what}[{index}] is {value}, expected a finite number")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// The value found.
        value: f32,
    },
    /// A serialised tensor that cannot be read.
    #[error("malformed serialised {what}: {detail}")]
    Format {
        /// What was being read.
        what: &'static str,
        /// Where it went wrong and what was expected.
        detail: String,
    },
    /// No usable CUDA device or library (the message says which and why).
    #[error("CUDA not available: {0}")]
    CudaUnavailable(String),
    /// A CUDA driver, NVRTC or cuBLAS call failed.
    #[error("CUDA {op} failed: {detail}")]
    Cuda {
        /// The operation that failed (e.g. `launch nf4_dequantize_bf16`).
        op: String,
        /// The library's message.
        detail: String,
    },
}

impl KernelError {
    /// Shorthand for [`KernelError::Invalid`].
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            detail: detail.into(),
        }
    }

    /// Checks that every value is finite; names the first one that is not.
    pub fn check_finite(what: &'static str, values: &[f32]) -> Result<(), Self> {
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(index) => Err(Self::NonFinite {
                what,
                index,
                value: values[index],
            }),
        }
    }
}
