//! The exit codes every `tandem` command uses, and how an error maps to one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation ran and failed (an audit mismatch, a job or experiment that failed, a local error) |
//! | 2 | usage: bad flags, or input refused (an invalid manifest, an argument the coordinator rejects) |
//! | 3 | not found (an experiment, job, artifact or token id the coordinator does not know) |
//! | 4 | unauthorised (no token, a bad or revoked one, or a role that may not do this) |
//! | 5 | unreachable (no coordinator at the address, or it is unavailable) |

use std::process::ExitCode;

pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const UNAUTHORISED: u8 = 4;
pub const UNREACHABLE: u8 = 5;

/// A coordinator's refusal of one call, with its gRPC status code.
#[derive(Debug, thiserror::Error)]
#[error("coordinator: {code:?}: {message}")]
pub struct RpcError {
    pub code: tonic::Code,
    pub message: String,
}

/// No coordinator answered at `url`.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the coordinator at {url}: {reason}")]
pub struct Unreachable {
    pub url: String,
    pub reason: String,
}

/// The exit code for `err`: from the first typed cause in its chain, else [`FAILED`].
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(rpc) = cause.downcast_ref::<RpcError>() {
            return match rpc.code {
                tonic::Code::NotFound => NOT_FOUND,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => UNAUTHORISED,
                tonic::Code::Unavailable => UNREACHABLE,
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists
                | tonic::Code::OutOfRange => USAGE,
                _ => FAILED,
            };
        }
        if cause.is::<Unreachable>() {
            return UNREACHABLE;
        }
    }
    FAILED
}

/// [`code_for`] as an [`ExitCode`].
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(code_for(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: tonic::Code) -> anyhow::Error {
        anyhow::Error::new(RpcError {
            code,
            message: "m".into(),
        })
        .context("while doing something")
    }

    #[test]
    fn each_kind_of_failure_has_its_code() {
        assert_eq!(code_for(&rpc(tonic::Code::NotFound)), NOT_FOUND);
        assert_eq!(code_for(&rpc(tonic::Code::Unauthenticated)), UNAUTHORISED);
        assert_eq!(code_for(&rpc(tonic::Code::PermissionDenied)), UNAUTHORISED);
        assert_eq!(code_for(&rpc(tonic::Code::Unavailable)), UNREACHABLE);
        assert_eq!(code_for(&rpc(tonic::Code::InvalidArgument)), USAGE);
        assert_eq!(code_for(&rpc(tonic::Code::Internal)), FAILED);
        let gone = anyhow::Error::new(Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(code_for(&gone), UNREACHABLE);
        assert_eq!(code_for(&anyhow::anyhow!("disk full")), FAILED);
    }
}
