//! `tandem-worker bench kernels`: runs the CUDA kernel benchmark (`tandem_kernels::cuda::bench`) and prints a
//! table, then the same figures as JSON (stdout, and a file with `--json`). Needs an NVIDIA GPU; without one it
//! says why and exits with an error.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use tandem_kernels::cuda::Gpu;
use tandem_kernels::cuda::bench::{self, BenchOptions, BenchReport};

/// Arguments of `tandem-worker bench kernels`.
#[derive(Debug, Clone, clap::Args)]
pub struct KernelBenchArgs {
    /// Timed repeats per measurement (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Untimed warm-up runs before timing.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Tokens (M) for the GEMM and LoRA measurements.
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// LoRA rank for the adapter measurement.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the benchmark and prints the table and the JSON report.
pub fn run_kernel_bench(args: &KernelBenchArgs) -> anyhow::Result<BenchReport> {
    let Some(gpu) = Gpu::get() else {
        bail!(
            "no GPU to benchmark: {}",
            Gpu::absence_reason().unwrap_or_default()
        );
    };
    let options = BenchOptions {
        repeats: args.repeats.max(1),
        warmup: args.warmup,
        tokens: args.tokens.max(1),
        rank: args.rank.max(1),
        ..BenchOptions::default()
    };
    let report = bench::run(&gpu, &options).context("kernel benchmark failed")?;
    println!("{}", report.table());
    let value = to_json(&report, &options);
    let text = serde_json::to_string_pretty(&value)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// The report as JSON (one object per measurement; absent figures are null).
pub fn to_json(report: &BenchReport, options: &BenchOptions) -> serde_json::Value {
    let rows: Vec<_> = report
        .rows
        .iter()
        .map(|r| {
            json!({
                "kernel": r.kernel, "shape": r.shape, "median_ms": r.median_ms, "bytes": r.bytes,
                "flops": r.flops, "gb_per_s": r.gb_per_s, "tflop_per_s": r.tflop_per_s,
                "of_ceiling": r.of_ceiling, "ceiling": r.ceiling,
            })
        })
        .collect();
    json!({
        "device": report.device, "arch": format!("sm_{}", report.arch),
        "copy_gb_per_s": report.copy_gb_per_s,
        "repeats": options.repeats, "warmup": options.warmup, "tokens": options.tokens, "rank": options.rank,
        "timing": "CUDA events per launch, median after warm-up, inputs rotated over copies exceeding 4x L2",
        "rows": rows,
    })
}
