//! Uploading a submission's input blobs (model files, tokenizers, datasets, folder listings) that the
//! coordinator's store lacks: one `MissingBlobs` call, then each missing blob streamed from disk in chunks,
//! with a progress bar on a terminal and plain lines otherwise.

use std::io::IsTerminal;

use anyhow::Context;
use tandem_coordinator::store::read_chunk;
use tandem_experiments::planner::inputs::{BlobSource, InputBlob};
use tandem_proto as pb;

use super::client::{Client, rpc};

/// Bytes per upload chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// What an upload did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadSummary {
    pub blobs: usize,
    pub bytes: u64,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
}

/// Uploads the blobs of `blobs` the store lacks; prints one summary line.
pub async fn upload_missing(
    client: &mut Client,
    blobs: &[InputBlob],
) -> anyhow::Result<UploadSummary> {
    let mut summary = UploadSummary {
        blobs: blobs.len(),
        bytes: blobs.iter().map(|b| b.size).sum(),
        ..UploadSummary::default()
    };
    if blobs.is_empty() {
        return Ok(summary);
    }
    let missing = client
        .missing_blobs(pb::MissingBlobsRequest {
            sha256: blobs.iter().map(|b| b.sha256.clone()).collect(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .sha256;
    let to_send: Vec<&InputBlob> = blobs
        .iter()
        .filter(|b| missing.contains(&b.sha256))
        .collect();
    let total: u64 = to_send.iter().map(|b| b.size).sum();
    let bar = if std::io::stderr().is_terminal() && total > 0 {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading inputs {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    for blob in to_send {
        if bar.is_none() {
            eprintln!("uploading {} ({} bytes)", describe(blob), blob.size);
        }
        let chunks = chunks_of(blob)?;
        let progress = bar.clone();
        let stream = tokio_stream::iter(chunks.into_iter().inspect(move |chunk| {
            if let Some(bar) = &progress {
                bar.inc(chunk.data.len() as u64);
            }
        }));
        client
            .upload_blob(stream)
            .await
            .map_err(rpc)
            .with_context(|| format!("uploading {}", describe(blob)))?;
        summary.uploaded_blobs += 1;
        summary.uploaded_bytes += blob.size;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    eprintln!(
        "inputs: {} blob(s), {} bytes; uploaded {} ({} bytes), {} already in the store",
        summary.blobs,
        summary.bytes,
        summary.uploaded_blobs,
        summary.uploaded_bytes,
        summary.blobs - summary.uploaded_blobs
    );
    Ok(summary)
}

fn describe(blob: &InputBlob) -> String {
    match &blob.source {
        BlobSource::File(path) => path.display().to_string(),
        BlobSource::Listing(_) => format!("folder listing {}", &blob.sha256[..12]),
    }
}

/// The chunks of one blob. A file is read in chunks as the upload goes (the iterator owns the open file), so
/// a large checkpoint is never held in memory.
fn chunks_of(blob: &InputBlob) -> anyhow::Result<Box<dyn Iterator<Item = pb::BlobChunk> + Send>> {
    let header = pb::BlobChunk {
        sha256: blob.sha256.clone(),
        size: blob.size,
        data: Vec::new(),
    };
    match &blob.source {
        BlobSource::Listing(text) => Ok(Box::new(std::iter::once(pb::BlobChunk {
            data: text.as_bytes().to_vec(),
            ..header
        }))),
        BlobSource::File(path) => {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("opening input file {}", path.display()))?;
            let path = path.clone();
            let mut first = Some(header);
            let mut done = false;
            Ok(Box::new(std::iter::from_fn(move || {
                if done {
                    return None;
                }
                let data = read_chunk(&mut file, CHUNK_BYTES).unwrap_or_else(|err| {
                    // The coordinator then sees fewer bytes than declared and refuses the blob.
                    eprintln!("error: reading {}: {err}", path.display());
                    Vec::new()
                });
                done = data.len() < CHUNK_BYTES;
                match first.take() {
                    Some(header) => Some(pb::BlobChunk { data, ..header }),
                    None if data.is_empty() => None,
                    None => Some(pb::BlobChunk {
                        data,
                        ..pb::BlobChunk::default()
                    }),
                }
            })))
        }
    }
}
