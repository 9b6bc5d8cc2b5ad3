//! TensorBoard event files: one run folder per job with an `events.out.tfevents.*` file of scalar summaries (one
//! per metric point: the series name as tag, its step and wall-clock time). The file is a TFRecord stream of
//! `tensorflow.Event` protos (length, masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes), the
//! messages encoded here with prost from their field numbers in `tensorflow/core/util/event.proto`.

use std::path::{Path, PathBuf};

use prost::Message;

use super::{Experiment, ExportError, io, safe_key};

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// CRC-32C (Castagnoli), bitwise over a 256-entry table.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut crc = i as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        table
    });
    let mut crc = !0u32;
    for &byte in data {
        crc = table[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn record(out: &mut Vec<u8>, data: &[u8]) {
    let length = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked(crc32c(&length)).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked(crc32c(data)).to_le_bytes());
}

/// Writes one run folder per job under `root`; returns the event files written.
pub fn write_events(root: &Path, experiment: &Experiment) -> Result<Vec<PathBuf>, ExportError> {
    let mut written = Vec::new();
    for run in &experiment.runs {
        let folder = root.join(safe_key(&format!(
            "{}-{}",
            run.name.replace('/', "_"),
            &run.job_id[..run.job_id.len().min(8)]
        )));
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let start = run.start_ms.max(experiment.created_ms);
        let mut bytes = Vec::new();
        let header = Event {
            wall_time: start as f64 / 1000.0,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        };
        record(&mut bytes, &header.encode_to_vec());
        for (tag, points) in &run.metrics {
            for p in points {
                let event = Event {
                    wall_time: p.time_ms.max(start) as f64 / 1000.0,
                    step: p.step,
                    file_version: None,
                    summary: Some(Summary {
                        value: vec![SummaryValue {
                            tag: tag.clone(),
                            simple_value: Some(p.value as f32),
                        }],
                    }),
                };
                record(&mut bytes, &event.encode_to_vec());
            }
        }
        let path = folder.join(format!("events.out.tfevents.{}.tandem", start / 1000));
        std::fs::write(&path, bytes).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_record_carries_its_length_and_both_checksums() {
        let mut out = Vec::new();
        record(&mut out, b"abc");
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        assert_eq!(out[15..], masked(crc32c(b"abc")).to_le_bytes());
    }
}
