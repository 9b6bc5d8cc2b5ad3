//! The CUDA devices a worker finds at start-up (reported to the coordinator as facts, and offered unless
//! `--gpus` says otherwise) and how they bound the GPUs it offers with `--gpus` / `--gpu-memory-mib`.

use tandem_proto as pb;

/// What detection found: the devices, or why none could be listed (no driver, a failing driver call).
pub type Detection = Result<Vec<pb::Device>, String>;

/// Lists the machine's CUDA devices through the kernels crate (driver API, no context opened).
pub fn detect() -> Detection {
    tandem_kernels::cuda::list_devices()
        .map(|devices| {
            devices
                .into_iter()
                .map(|d| pb::Device {
                    ordinal: d.ordinal,
                    name: d.name,
                    memory_mib: d.memory_mib,
                    compute_capability: d.compute_capability,
                })
                .collect()
        })
        .map_err(|e| e.to_string())
}

/// The GPUs a worker offers once its flags are checked against what detection found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuOffer {
    pub gpus: u32,
    /// Per GPU, MiB.
    pub gpu_memory_mib: u64,
    /// Said once at start-up when the offer could not be checked against the machine.
    pub warning: Option<String>,
}

/// Checks `--gpus` / `--gpu-memory-mib` against `detected`. Without `--gpus` every device found is offered (none
/// without a device listing). With a device listing: refuses more GPUs than found and, when GPUs are offered
/// without a memory figure, offers the smallest device's memory. Without one (no driver: CPU machines, tests
/// simulating GPU workers) the flags are taken as given, with a warning when GPUs are offered.
pub fn gpu_offer(
    gpus: Option<u32>,
    gpu_memory_mib: Option<u64>,
    detected: &Detection,
) -> Result<GpuOffer, String> {
    let found = detected.as_ref().map_or(0, |devices| devices.len() as u32);
    let gpus = gpus.unwrap_or(found);
    match detected {
        Ok(devices) => {
            if gpus as usize > devices.len() {
                return Err(format!(
                    "--gpus {gpus} asks to offer more GPUs than the {} CUDA device(s) found on this machine",
                    devices.len()
                ));
            }
            let smallest = devices.iter().map(|d| d.memory_mib).min().unwrap_or(0);
            let memory = match gpu_memory_mib {
                Some(m) => m,
                None if gpus > 0 => smallest,
                None => 0,
            };
            Ok(GpuOffer {
                gpus,
                gpu_memory_mib: memory,
                warning: None,
            })
        }
        Err(reason) => Ok(GpuOffer {
            gpus,
            gpu_memory_mib: gpu_memory_mib.unwrap_or(0),
            warning: (gpus > 0).then(|| {
                format!(
                    "offering --gpus {gpus} without checking them: no CUDA device could be listed ({reason})"
                )
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(ordinal: u32, memory_mib: u64) -> pb::Device {
        pb::Device {
            ordinal,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_mib,
            compute_capability: 90,
        }
    }

    #[test]
    fn more_gpus_than_found_is_refused_naming_both_numbers() {
        let err =
            gpu_offer(Some(3), None, &Ok(vec![device(0, 81559), device(1, 81559)])).unwrap_err();
        assert!(
            err.contains("--gpus 3") && err.contains("2 CUDA device(s)"),
            "{err}"
        );
        let err = gpu_offer(Some(1), None, &Ok(vec![])).unwrap_err();
        assert!(
            err.contains("--gpus 1") && err.contains("0 CUDA device(s)"),
            "{err}"
        );
    }

    #[test]
    fn gpu_memory_defaults_to_the_smallest_device_found() {
        let found = Ok(vec![device(0, 81559), device(1, 40960)]);
        let offer = gpu_offer(Some(2), None, &found).unwrap();
        assert_eq!((offer.gpus, offer.gpu_memory_mib), (2, 40960));
        assert_eq!(offer.warning, None);
        assert_eq!(
            gpu_offer(Some(1), Some(30000), &found)
                .unwrap()
                .gpu_memory_mib,
            30000
        );
        // No GPUs offered: nothing to default.
        assert_eq!(gpu_offer(Some(0), None, &found).unwrap().gpu_memory_mib, 0);
    }

    #[test]
    fn without_gpus_every_device_found_is_offered() {
        let found = Ok(vec![device(0, 81559), device(1, 40960)]);
        let offer = gpu_offer(None, None, &found).unwrap();
        assert_eq!((offer.gpus, offer.gpu_memory_mib), (2, 40960));
        assert_eq!(offer.warning, None);
        let nothing: Detection = Ok(vec![]);
        assert_eq!(gpu_offer(None, None, &nothing).unwrap().gpus, 0);
        // No driver: nothing found, nothing offered, nothing to warn about.
        let none: Detection = Err("no CUDA driver library".into());
        let cpu = gpu_offer(None, None, &none).unwrap();
        assert_eq!((cpu.gpus, cpu.gpu_memory_mib, cpu.warning), (0, 0, None));
    }

    #[test]
    fn without_a_device_listing_the_flags_are_taken_as_given() {
        let none: Detection = Err("no CUDA driver library".into());
        let offer = gpu_offer(Some(2), Some(24000), &none).unwrap();
        assert_eq!((offer.gpus, offer.gpu_memory_mib), (2, 24000));
        let warning = offer.warning.unwrap();
        assert!(warning.contains("--gpus 2") && warning.contains("no CUDA driver library"));
        let cpu = gpu_offer(Some(0), None, &none).unwrap();
        assert_eq!((cpu.gpus, cpu.gpu_memory_mib, cpu.warning), (0, 0, None));
    }

    #[test]
    fn detection_returns_cleanly() {
        match detect() {
            Ok(devices) => println!("found {}", pb::devices_summary(&devices)),
            Err(reason) => {
                assert!(!reason.is_empty());
                println!("no CUDA device: {reason}");
            }
        }
    }
}
