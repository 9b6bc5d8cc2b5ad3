//! `tandem cancel ID` and `tandem retry ID`.

use std::process::ExitCode;

use clap::Args;
use tandem_proto as pb;

use super::client::{ClientArgs, block_on, rpc};

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    pub experiment: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn cancel(args: ExperimentArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = client
            .cancel(pb::CancelRequest {
                experiment_id: args.experiment.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        println!("cancelled {} jobs of {}", reply.cancelled, args.experiment);
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}

pub fn retry(args: ExperimentArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let mut client = args.client.connect().await?;
        let reply = client
            .retry(pb::RetryRequest {
                experiment_id: args.experiment.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        println!("requeued {} jobs of {}", reply.requeued, args.experiment);
        anyhow::Ok(ExitCode::SUCCESS)
    })?
}
