//! Bearer tokens and who may do what. Tokens are random secrets shown once; the coordinator keeps only their
//! SHA-256. A team token sees and changes only its team's experiments; a worker token may only act as the
//! workers it registered; an admin token may do everything, including managing tokens.

use std::collections::HashMap;
use std::io::Read;
use std::sync::RwLock;

use crate::store::{TokenRecord, TokenRole, WorkerRecord, hex, now_ms, sha256_hex};

/// Why a caller may not make a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No valid token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token whose role or name does not allow the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// The worker id the caller acts as is not registered (e.g. a store that was wiped): register again.
    #[error("unknown worker {0}: register again")]
    UnknownWorker(String),
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub role: TokenRole,
    pub name: String,
}

impl Principal {
    /// The team whose experiments the caller may see (`None`: all, for admins).
    pub fn team_scope(&self) -> Option<&str> {
        match self.role {
            TokenRole::Admin => None,
            _ => Some(&self.name),
        }
    }

    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.label(), self.name)
    }
}

/// Checks `[A-Za-z0-9_.-]{1,64}` for team and worker names.
pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {name:?} is not a valid name (1-64 of A-Z a-z 0-9 _ - .)"
        ))
    }
}

/// A new token: the secret (to show once) and the record to store.
pub fn new_token(role: TokenRole, name: &str) -> (String, TokenRecord) {
    let mut bytes = [0u8; 32];
    rand::RngReader(rand::rngs::SysRng)
        .read_exact(&mut bytes)
        .expect("the system random source is readable");
    let secret = format!("tdm_{}", hex(&bytes));
    let secret_sha256 = sha256_hex(secret.as_bytes());
    let record = TokenRecord {
        id: format!("tok-{}", &secret_sha256[..12]),
        secret_sha256,
        role,
        name: name.to_string(),
        created_ms: now_ms(),
        revoked: false,
    };
    (secret, record)
}

/// The token table in memory, plus the `--insecure-local` switch.
pub struct Auth {
    insecure_local: bool,
    by_hash: RwLock<HashMap<String, TokenRecord>>,
}

impl Auth {
    pub fn new(tokens: Vec<TokenRecord>, insecure_local: bool) -> Auth {
        let by_hash = tokens
            .into_iter()
            .map(|t| (t.secret_sha256.clone(), t))
            .collect();
        Auth {
            insecure_local,
            by_hash: RwLock::new(by_hash),
        }
    }

    pub fn insecure_local(&self) -> bool {
        self.insecure_local
    }

    pub fn upsert(&self, record: TokenRecord) {
        let mut table = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        table.insert(record.secret_sha256.clone(), record);
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        let table = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = table.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The caller of a request from its `authorization` header (`Bearer <secret>`): unauthenticated without
    /// a valid token (unless `--insecure-local`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some(header) = authorization else {
            if self.insecure_local {
                return Ok(Principal {
                    role: TokenRole::Admin,
                    name: "local".into(),
                });
            }
            return Err(AuthError::Unauthenticated(
                "missing bearer token (pass --token or set TANDEM_TOKEN)".into(),
            ));
        };
        let secret = header.strip_prefix("Bearer ").unwrap_or(header).trim();
        // Only SHA-256 digests are stored and compared: the table lookup and its string comparison see the
        // digest of what the caller sent, never the secret, so how long they take tells an attacker nothing
        // about any stored secret (finding a secret from digest prefixes is a preimage search).
        let table = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
        match table.get(&sha256_hex(secret.as_bytes())) {
            Some(record) if !record.revoked => Ok(Principal {
                role: record.role,
                name: record.name.clone(),
            }),
            Some(_) => Err(AuthError::Unauthenticated("token revoked".into())),
            None if self.insecure_local => Ok(Principal {
                role: TokenRole::Admin,
                name: "local".into(),
            }),
            None => Err(AuthError::Unauthenticated("unknown token".into())),
        }
    }
}

/// Clients (teams and admins) only.
pub fn require_client(principal: &Principal) -> Result<(), AuthError> {
    match principal.role {
        TokenRole::Team | TokenRole::Admin => Ok(()),
        TokenRole::Worker => Err(AuthError::PermissionDenied(
            "a worker token cannot call the client service".into(),
        )),
    }
}

/// Workers (and admins) only.
pub fn require_worker(principal: &Principal) -> Result<(), AuthError> {
    match principal.role {
        TokenRole::Worker | TokenRole::Admin => Ok(()),
        TokenRole::Team => Err(AuthError::PermissionDenied(
            "a team token cannot call the worker service".into(),
        )),
    }
}

/// A worker token may act only as a worker registered under its own name (`registered`: the record of
/// `worker_id`, if any); an admin may act as any worker.
pub fn require_worker_identity(
    principal: &Principal,
    worker_id: &str,
    registered: Option<&WorkerRecord>,
) -> Result<(), AuthError> {
    if principal.role != TokenRole::Worker {
        return Ok(());
    }
    match registered {
        Some(worker) if worker.name == principal.name => Ok(()),
        Some(_) => Err(AuthError::PermissionDenied(format!(
            "worker {worker_id} belongs to another token"
        ))),
        None => Err(AuthError::UnknownWorker(worker_id.to_string())),
    }
}

pub fn require_admin(principal: &Principal) -> Result<(), AuthError> {
    match principal.role {
        TokenRole::Admin => Ok(()),
        _ => Err(AuthError::PermissionDenied(
            "only an admin token can manage tokens".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::worker_record;

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn unauthenticated(err: AuthError) -> bool {
        matches!(err, AuthError::Unauthenticated(_))
    }

    fn permission_denied(err: AuthError) -> bool {
        matches!(err, AuthError::PermissionDenied(_))
    }

    #[test]
    fn tokens_authenticate_by_hash_and_revocation_sticks() {
        let (secret, mut record) = new_token(TokenRole::Team, "radiology");
        assert!(!record.secret_sha256.contains(&secret[4..]));
        let auth = Auth::new(vec![record.clone()], false);
        let who = auth.authenticate(Some(&bearer(&secret))).unwrap();
        assert_eq!(
            who,
            Principal {
                role: TokenRole::Team,
                name: "radiology".into()
            }
        );
        assert_eq!(who.team_scope(), Some("radiology"));
        assert!(unauthenticated(
            auth.authenticate(Some(&bearer("tdm_wrong"))).unwrap_err()
        ));
        assert!(unauthenticated(auth.authenticate(None).unwrap_err()));
        record.revoked = true;
        auth.upsert(record);
        assert!(unauthenticated(
            auth.authenticate(Some(&bearer(&secret))).unwrap_err()
        ));
    }

    #[test]
    fn roles_gate_services() {
        let team = Principal {
            role: TokenRole::Team,
            name: "a".into(),
        };
        let worker = Principal {
            role: TokenRole::Worker,
            name: "w".into(),
        };
        assert!(require_client(&team).is_ok());
        assert!(permission_denied(require_client(&worker).unwrap_err()));
        assert!(permission_denied(require_worker(&team).unwrap_err()));
        assert!(permission_denied(require_admin(&team).unwrap_err()));
        assert!(validate_name("--team", "lab-1.x").is_ok());
        assert!(validate_name("--team", "../x").is_err());
    }

    #[test]
    fn a_worker_token_acts_only_as_workers_registered_under_its_name() {
        let registered = |name: &str| worker_record("w1", name);
        let worker = Principal {
            role: TokenRole::Worker,
            name: "gpu".into(),
        };
        assert!(require_worker_identity(&worker, "w1", Some(&registered("gpu"))).is_ok());
        assert_eq!(
            require_worker_identity(&worker, "w1", Some(&registered("other"))).unwrap_err(),
            AuthError::PermissionDenied("worker w1 belongs to another token".into())
        );
        assert_eq!(
            require_worker_identity(&worker, "w1", None)
                .unwrap_err()
                .to_string(),
            "unknown worker w1: register again"
        );
        let admin = Principal {
            role: TokenRole::Admin,
            name: "admin".into(),
        };
        assert!(require_worker_identity(&admin, "w1", None).is_ok());
    }

    #[test]
    fn insecure_local_admits_callers_without_tokens() {
        let auth = Auth::new(vec![], true);
        assert_eq!(auth.authenticate(None).unwrap().role, TokenRole::Admin);
    }
}
