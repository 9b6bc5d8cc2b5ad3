//! Token administration for admins: create and revoke bearer tokens. Each change is stored with an audit
//! entry and committed durably before the live token table changes, so an acknowledged token survives a
//! restart and a revoked one stays revoked.

use crate::auth::{Auth, new_token, validate_name};
use crate::scheduler::{Scheduler, SchedulerError, SchedulerResult};
use crate::store::{TokenRecord, TokenRole};

/// A token just created: the secret, shown once, and the id it is listed and revoked by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedToken {
    pub secret: String,
    pub token_id: String,
}

/// The role and name a new token is for, from exactly one of a team name, a worker name or the admin flag.
pub fn token_subject(
    team: &str,
    worker: &str,
    admin: bool,
) -> SchedulerResult<(TokenRole, String)> {
    let (role, name) = match (team.is_empty(), worker.is_empty(), admin) {
        (false, true, false) => (TokenRole::Team, team.to_string()),
        (true, false, false) => (TokenRole::Worker, worker.to_string()),
        (true, true, true) => (TokenRole::Admin, "admin".to_string()),
        _ => {
            return Err(SchedulerError::InvalidArgument(
                "give exactly one of team, worker or admin".into(),
            ));
        }
    };
    validate_name(role.label(), &name).map_err(SchedulerError::InvalidArgument)?;
    Ok((role, name))
}

/// Creates a token for `role` and `name` on behalf of `actor`.
pub async fn create_token(
    auth: &Auth,
    scheduler: &Scheduler,
    actor: &str,
    role: TokenRole,
    name: &str,
) -> SchedulerResult<CreatedToken> {
    let (secret, record) = new_token(role, name);
    let detail = format!("{} {} ({})", role.label(), name, record.id);
    scheduler
        .record_token(actor, "token-create", &record, detail)
        .await?;
    let token_id = record.id.clone();
    auth.upsert(record);
    tracing::info!(token = %token_id, role = role.label(), name, "token created");
    Ok(CreatedToken { secret, token_id })
}

/// Revokes token `token_id` on behalf of `actor`.
pub async fn revoke_token(
    auth: &Auth,
    scheduler: &Scheduler,
    actor: &str,
    token_id: &str,
) -> SchedulerResult<()> {
    let Some(mut record): Option<TokenRecord> =
        auth.tokens().into_iter().find(|t| t.id == token_id)
    else {
        return Err(SchedulerError::NotFound(format!("no token {token_id}")));
    };
    record.revoked = true;
    scheduler
        .record_token(actor, "token-revoke", &record, token_id.to_string())
        .await?;
    auth.upsert(record);
    tracing::info!(token = %token_id, "token revoked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scheduler::SchedulerConfig;
    use crate::store::{SledStore, Store};

    #[test]
    fn a_token_is_for_exactly_one_valid_subject() {
        assert_eq!(
            token_subject("radiology", "", false).unwrap(),
            (TokenRole::Team, "radiology".into())
        );
        assert_eq!(
            token_subject("", "gpu-1", false).unwrap(),
            (TokenRole::Worker, "gpu-1".into())
        );
        assert_eq!(
            token_subject("", "", true).unwrap(),
            (TokenRole::Admin, "admin".into())
        );
        for (team, worker, admin) in [("", "", false), ("a", "b", false), ("a", "", true)] {
            let err = token_subject(team, worker, admin).unwrap_err();
            assert_eq!(err.to_string(), "give exactly one of team, worker or admin");
        }
        assert!(matches!(
            token_subject("../x", "", false),
            Err(SchedulerError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn created_and_revoked_tokens_are_stored_audited_and_live() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let scheduler = Scheduler::open(store.clone(), SchedulerConfig::default()).unwrap();
        let auth = Auth::new(vec![], false);
        let created = create_token(&auth, &scheduler, "admin:root", TokenRole::Team, "lab")
            .await
            .unwrap();
        let bearer = format!("Bearer {}", created.secret);
        assert_eq!(auth.authenticate(Some(&bearer)).unwrap().name, "lab");
        revoke_token(&auth, &scheduler, "admin:root", &created.token_id)
            .await
            .unwrap();
        assert!(auth.authenticate(Some(&bearer)).is_err());
        let stored = store.tokens().unwrap();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].revoked);
        let actions: Vec<String> = store
            .audit_entries()
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["token-create", "token-revoke"]);
        assert!(matches!(
            revoke_token(&auth, &scheduler, "admin:root", "tok-none").await,
            Err(SchedulerError::NotFound(_))
        ));
    }
}
