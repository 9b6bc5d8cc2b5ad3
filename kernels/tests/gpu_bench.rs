//! The kernel benchmark as an ignored test, so a GPU machine can print the figures from a prebuilt test binary
//! (`kernels/gpu-check.sh`) without the worker. Asserts only that every figure is a finite, positive number:
//! tests never assert on timings.

use tandem_kernels::cuda::Gpu;
use tandem_kernels::cuda::bench::{self, BenchOptions};

#[test]
#[ignore = "needs an NVIDIA GPU; prints figures"]
fn kernel_benchmark_prints_figures() {
    let Some(gpu) = Gpu::get() else {
        let why = Gpu::absence_reason().unwrap_or_default();
        assert!(
            std::env::var("TANDEM_REQUIRE_GPU").map_or(true, |v| v != "1"),
            "no GPU: {why}"
        );
        println!("skipped: no GPU ({why})");
        return;
    };
    let report = bench::run(&gpu, &BenchOptions::default()).expect("benchmark runs");
    println!("{}", report.table());
    for row in &report.rows {
        assert!(
            row.median_ms.is_finite() && row.median_ms > 0.0,
            "{}: {}",
            row.kernel,
            row.median_ms
        );
    }
}
