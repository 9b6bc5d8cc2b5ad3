//! `tandem token create|list|revoke`: bearer tokens for teams, workers and admins. With `--store` the store
//! is changed directly (the coordinator must not be running); otherwise an admin token asks the coordinator.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use tandem_coordinator::auth::{new_token, validate_name};
use tandem_coordinator::store::{AuditEntry, SledStore, Store, TokenRole, now_ms};
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc, utc};
use super::output::{OutputFormat, Table};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (shown once).
    Create {
        /// A token for this team.
        #[arg(long, conflicts_with_all = ["worker", "admin"])]
        team: Option<String>,
        /// A token for workers of this name.
        #[arg(long, conflicts_with_all = ["team", "admin"])]
        worker: Option<String>,
        /// An admin token (manages tokens, sees every team).
        #[arg(long)]
        admin: bool,
        /// Write into this store folder directly instead of asking a running coordinator.
        #[arg(long)]
        store: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens (ids and roles, never secrets).
    List {
        #[arg(long)]
        store: Option<PathBuf>,
        /// table, json (id, role, name, created_ms, revoked per token) or csv.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id.
    Revoke {
        token_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create {
            team,
            worker,
            admin,
            store,
            client,
        } => {
            let (role, name) = match (team, worker, admin) {
                (Some(t), None, false) => (TokenRole::Team, t),
                (None, Some(w), false) => (TokenRole::Worker, w),
                (None, None, true) => (TokenRole::Admin, "admin".to_string()),
                _ => anyhow::bail!("give exactly one of --team NAME, --worker NAME or --admin"),
            };
            validate_name(&format!("--{}", role.label()), &name).map_err(anyhow::Error::msg)?;
            let secret = match store {
                Some(dir) => {
                    let store = SledStore::open(&dir).with_context(|| {
                        format!(
                            "opening store {} (is a coordinator running on it?)",
                            dir.display()
                        )
                    })?;
                    let (secret, record) = new_token(role, &name);
                    store.put_token(&record)?;
                    store.append_audit(&AuditEntry {
                        time_ms: now_ms(),
                        actor: "cli:token".into(),
                        action: "token-create".into(),
                        experiment_id: None,
                        job_id: None,
                        detail: format!("{} {} ({})", role.label(), name, record.id),
                    })?;
                    store.flush_now()?;
                    eprintln!("created {} token {} for {name}", role.label(), record.id);
                    secret
                }
                None => block_on(async move {
                    let mut c = client.connect().await?;
                    let request = pb::CreateTokenRequest {
                        team: if role == TokenRole::Team {
                            name.clone()
                        } else {
                            String::new()
                        },
                        worker: if role == TokenRole::Worker {
                            name.clone()
                        } else {
                            String::new()
                        },
                        admin: role == TokenRole::Admin,
                    };
                    let reply = c.create_token(request).await.map_err(rpc)?.into_inner();
                    eprintln!(
                        "created {} token {} for {name}",
                        role.label(),
                        reply.token_id
                    );
                    anyhow::Ok(reply.token)
                })??,
            };
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List {
            store,
            format,
            client,
        } => {
            let rows: Vec<(String, String, String, u64, bool)> = match store {
                Some(dir) => SledStore::open(&dir)?
                    .tokens()?
                    .into_iter()
                    .map(|t| {
                        (
                            t.id,
                            t.role.label().to_string(),
                            t.name,
                            t.created_ms,
                            t.revoked,
                        )
                    })
                    .collect(),
                None => block_on(async move {
                    let mut c = client.connect().await?;
                    let reply = c
                        .list_tokens(pb::ListTokensRequest {})
                        .await
                        .map_err(rpc)?
                        .into_inner();
                    anyhow::Ok(
                        reply
                            .tokens
                            .into_iter()
                            .map(|t| (t.token_id, t.role, t.name, t.created_ms, t.revoked))
                            .collect(),
                    )
                })??,
            };
            let mut table = Table::new(&["id", "role", "name", "created (UTC)", "revoked"]);
            for (id, role, name, created, revoked) in rows {
                let json = serde_json::json!({"id": id, "role": role, "name": name, "created_ms": created,
                                              "revoked": revoked});
                table.row(
                    vec![id, role, name, utc(created), revoked.to_string()],
                    Some(json),
                );
            }
            print!("{}", table.render(format));
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { token_id, client } => {
            block_on(async move {
                let mut c = client.connect().await?;
                c.revoke_token(pb::RevokeTokenRequest {
                    token_id: token_id.clone(),
                })
                .await
                .map_err(rpc)?;
                eprintln!("revoked {token_id}");
                anyhow::Ok(())
            })??;
            Ok(ExitCode::SUCCESS)
        }
    }
}
