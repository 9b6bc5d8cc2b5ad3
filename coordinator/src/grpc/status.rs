//! The one place where the coordinator's errors become gRPC statuses: each variant maps to one code, with
//! the error's own message.

use tonic::Status;

use crate::auth::AuthError;
use crate::scheduler::SchedulerError;
use crate::store::StoreError;

impl From<SchedulerError> for Status {
    fn from(err: SchedulerError) -> Status {
        match err {
            SchedulerError::NotFound(message) => Status::not_found(message),
            SchedulerError::PermissionDenied(message) => Status::permission_denied(message),
            SchedulerError::InvalidArgument(message) => Status::invalid_argument(message),
            SchedulerError::DataLoss(message) => Status::data_loss(message),
            SchedulerError::FailedPrecondition(message) => Status::failed_precondition(message),
            SchedulerError::LeaseLost { .. } => Status::failed_precondition(err.to_string()),
            SchedulerError::Cancelled(_) => Status::aborted(err.to_string()),
            SchedulerError::UnknownWorker(_) => Status::not_found(err.to_string()),
            SchedulerError::Store(store) => match store {
                StoreError::BadHash(_) => Status::invalid_argument(store.to_string()),
                StoreError::TooLarge { .. } => Status::resource_exhausted(store.to_string()),
                StoreError::NotFound(_) => Status::not_found(store.to_string()),
                StoreError::HashMismatch { .. } => Status::data_loss(store.to_string()),
                other => {
                    tracing::error!(error = %other, "store failure");
                    Status::internal(other.to_string())
                }
            },
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        match err {
            AuthError::Unauthenticated(message) => Status::unauthenticated(message),
            AuthError::PermissionDenied(message) => Status::permission_denied(message),
            AuthError::UnknownWorker(_) => Status::not_found(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_keeps_its_code_and_message() {
        let cases = [
            (
                SchedulerError::NotFound("no experiment e1".into()),
                Code::NotFound,
            ),
            (
                SchedulerError::PermissionDenied("another team".into()),
                Code::PermissionDenied,
            ),
            (
                SchedulerError::InvalidArgument("bad".into()),
                Code::InvalidArgument,
            ),
            (
                SchedulerError::DataLoss("undecodable".into()),
                Code::DataLoss,
            ),
            (
                SchedulerError::FailedPrecondition("input model not uploaded".into()),
                Code::FailedPrecondition,
            ),
            (
                SchedulerError::LeaseLost {
                    job: "j".into(),
                    detail: "expired".into(),
                },
                Code::FailedPrecondition,
            ),
            (SchedulerError::Cancelled("j".into()), Code::Aborted),
            (SchedulerError::UnknownWorker("w1".into()), Code::NotFound),
            (
                SchedulerError::Store(StoreError::TooLarge { limit: 1 }),
                Code::ResourceExhausted,
            ),
            (
                SchedulerError::Store(StoreError::Commit("disk full".into())),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
        let status = Status::from(AuthError::UnknownWorker("w1".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "unknown worker w1: register again");
        let status = Status::from(AuthError::Unauthenticated("unknown token".into()));
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "unknown token")
        );
    }
}
