//! Which NF4 GEMM path to use for each shape: dequantise + cuBLAS ([`super::gemm::Blas::nf4_xwt`]) or the
//! mma.sync tile kernel ([`super::nf4::GpuNf4::matmul_bf16_mma`]). On the first use of a (device, M, N, K) both are
//! timed with CUDA events, the faster is kept, in memory and in a JSON file (see [`default_cache_file`]), and later
//! calls reuse it. [`Nf4GemmChooser`] is the plain choosing-and-caching logic (timings injected, tested on the
//! CPU); [`Nf4Gemm`] wires it to the GPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cudarc::driver::{CudaSlice, sys};
use serde::{Deserialize, Serialize};

use super::device::{Gpu, cuda_err};
use super::gemm::Blas;
use super::nf4::GpuNf4;
use crate::error::KernelError;

/// The two ways to compute `Y = X W^T` for an NF4 `W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nf4GemmPath {
    /// Dequantise W into a bf16 scratch, then cuBLAS bf16 GEMM.
    DequantCublas,
    /// The mma.sync tile kernel (W dequantised tile by tile in shared memory); needs K a multiple of 64.
    MmaTiles,
}

impl Nf4GemmPath {
    /// Both paths, in the order they are timed (and the order that breaks ties).
    pub const ALL: [Nf4GemmPath; 2] = [Nf4GemmPath::DequantCublas, Nf4GemmPath::MmaTiles];

    /// A short label for tables and logs.
    pub fn label(self) -> &'static str {
        match self {
            Nf4GemmPath::DequantCublas => "dequantise + cuBLAS",
            Nf4GemmPath::MmaTiles => "mma.sync tiles",
        }
    }
}

/// One problem: the device it runs on and `Y (m x n) = X (m x k) W^T`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GemmShape {
    /// Device name as the driver reports it.
    pub device: String,
    /// Rows of X (tokens).
    pub m: usize,
    /// Rows of W (output features).
    pub n: usize,
    /// Columns of W (input features).
    pub k: usize,
}

/// The decision for one shape, with the timings it was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmChoice {
    /// The faster path.
    pub path: Nf4GemmPath,
    /// Median milliseconds of each path that could run the shape (a path that cannot is absent).
    pub timings_ms: BTreeMap<String, f64>,
}

impl GemmChoice {
    /// The median milliseconds measured for `path`, when it could run the shape.
    pub fn ms(&self, path: Nf4GemmPath) -> Option<f64> {
        self.timings_ms.get(&key(path)).copied()
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    choices: Vec<CacheEntry>,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    #[serde(flatten)]
    shape: GemmShape,
    #[serde(flatten)]
    choice: GemmChoice,
}

const CACHE_VERSION: u32 = 1;

/// The cache file's usual place: `nf4-gemm-choices.json` in the kernel cache folder
/// ([`super::cubin_cache::default_dir`], beside the compiled CUBINs); `None` when no folder is known.
pub fn default_cache_file() -> Option<PathBuf> {
    super::cubin_cache::default_dir().map(|d| d.join("nf4-gemm-choices.json"))
}

/// Chooses and remembers the faster NF4 GEMM path per shape. Timings come from the caller, so the logic runs
/// (and is tested) without a GPU.
#[derive(Debug, Default)]
pub struct Nf4GemmChooser {
    choices: BTreeMap<GemmShape, GemmChoice>,
    file: Option<PathBuf>,
}

impl Nf4GemmChooser {
    /// A chooser that remembers only in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A chooser backed by `file`: earlier choices are read from it when it exists, new ones are written to it.
    /// A file that cannot be read or parsed is an error naming it.
    pub fn with_file(file: impl Into<PathBuf>) -> Result<Self, KernelError> {
        let file = file.into();
        let mut choices = BTreeMap::new();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let parsed: CacheFile =
                    serde_json::from_str(&text).map_err(|e| bad_file(&file, e.to_string()))?;
                if parsed.version != CACHE_VERSION {
                    return Err(bad_file(
                        &file,
                        format!(
                            "version {}, this build reads {CACHE_VERSION}",
                            parsed.version
                        ),
                    ));
                }
                for e in parsed.choices {
                    choices.insert(e.shape, e.choice);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad_file(&file, e.to_string())),
        }
        Ok(Self {
            choices,
            file: Some(file),
        })
    }

    /// The remembered choice for `shape`, if any.
    pub fn get(&self, shape: &GemmShape) -> Option<&GemmChoice> {
        self.choices.get(shape)
    }

    /// Every remembered choice.
    pub fn choices(&self) -> impl Iterator<Item = (&GemmShape, &GemmChoice)> {
        self.choices.iter()
    }

    /// The choice for `shape`: the remembered one, or else each path is timed with `time` (which returns the
    /// median milliseconds, or `None` when the path cannot run this shape), the fastest is kept (ties go to the
    /// earlier path in [`Nf4GemmPath::ALL`]), remembered and written to the file.
    pub fn choose(
        &mut self,
        shape: &GemmShape,
        mut time: impl FnMut(Nf4GemmPath) -> Result<Option<f64>, KernelError>,
    ) -> Result<GemmChoice, KernelError> {
        if let Some(c) = self.choices.get(shape) {
            return Ok(c.clone());
        }
        let mut best: Option<(Nf4GemmPath, f64)> = None;
        let mut timings_ms = BTreeMap::new();
        for path in Nf4GemmPath::ALL {
            let Some(ms) = time(path)? else { continue };
            if !ms.is_finite() || ms < 0.0 {
                return Err(KernelError::invalid(
                    "timing",
                    format!("{} took {ms} ms for {shape:?}", path.label()),
                ));
            }
            timings_ms.insert(key(path), ms);
            if best.is_none_or(|(_, b)| ms < b) {
                best = Some((path, ms));
            }
        }
        let Some((path, _)) = best else {
            return Err(KernelError::invalid(
                "shape",
                format!("no NF4 GEMM path can run {shape:?}"),
            ));
        };
        let choice = GemmChoice { path, timings_ms };
        tracing::info!(device = %shape.device, m = shape.m, n = shape.n, k = shape.k, path = path.label(), "NF4 GEMM path chosen");
        self.choices.insert(shape.clone(), choice.clone());
        self.save()?;
        Ok(choice)
    }

    /// Writes every choice to the file (a temporary file renamed over it); nothing without a file.
    fn save(&self) -> Result<(), KernelError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let doc = CacheFile {
            version: CACHE_VERSION,
            choices: self
                .choices
                .iter()
                .map(|(s, c)| CacheEntry {
                    shape: s.clone(),
                    choice: c.clone(),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| bad_file(file, e.to_string()))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| bad_file(file, e.to_string()))?;
        }
        let tmp = file.with_extension(format!("json.tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| bad_file(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, file).map_err(|e| bad_file(file, e.to_string()))
    }
}

fn key(path: Nf4GemmPath) -> String {
    match path {
        Nf4GemmPath::DequantCublas => "dequant_cublas".into(),
        Nf4GemmPath::MmaTiles => "mma_tiles".into(),
    }
}

fn bad_file(file: &Path, detail: String) -> KernelError {
    KernelError::Format {
        what: "NF4 GEMM choice cache",
        detail: format!("{}: {detail}", file.display()),
    }
}

/// NF4 `Y = X W^T` in bf16 on the GPU through the faster path for each shape, chosen on first use.
pub struct Nf4Gemm {
    blas: Blas,
    chooser: Mutex<Nf4GemmChooser>,
    /// Timed repeats per path when choosing (the median counts), after one warm-up run.
    pub repeats: usize,
}

impl Nf4Gemm {
    /// A cuBLAS handle plus `chooser` (e.g. [`Nf4GemmChooser::with_file`] on [`default_cache_file`]).
    pub fn new(gpu: &Gpu, chooser: Nf4GemmChooser) -> Result<Self, KernelError> {
        Ok(Self {
            blas: Blas::new(gpu)?,
            chooser: Mutex::new(chooser),
            repeats: 5,
        })
    }

    /// The cuBLAS handle.
    pub fn blas(&self) -> &Blas {
        &self.blas
    }

    /// The choice for `m` rows of X times `w`, timing both paths on this device first if the shape is new
    /// (`x`, `scratch` and `y` serve as the timing buffers; their contents are overwritten).
    pub fn choice(
        &self,
        gpu: &Gpu,
        m: usize,
        x: &CudaSlice<u16>,
        w: &GpuNf4,
        scratch: &mut CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
    ) -> Result<GemmChoice, KernelError> {
        let shape = GemmShape {
            device: gpu.name().to_string(),
            m,
            n: w.rows(),
            k: w.cols(),
        };
        let mut chooser = self.chooser.lock().unwrap_or_else(|p| p.into_inner());
        chooser.choose(&shape, |path| {
            if path == Nf4GemmPath::MmaTiles && !w.cols().is_multiple_of(64) {
                return Ok(None);
            }
            let mut run = || self.run(gpu, path, m, x, w, scratch, y);
            time_median_ms(gpu, self.repeats, &mut run).map(Some)
        })
    }

    /// `Y (m x w.rows()) = X (m x w.cols()) W^T`, bf16 in and out, through the chosen path; `scratch` (at least
    /// `w.rows() * w.cols()` bf16 values) is used by the dequantise + cuBLAS path. Returns the path taken.
    pub fn xwt(
        &self,
        gpu: &Gpu,
        m: usize,
        x: &CudaSlice<u16>,
        w: &GpuNf4,
        scratch: &mut CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
    ) -> Result<Nf4GemmPath, KernelError> {
        let path = self.choice(gpu, m, x, w, scratch, y)?.path;
        self.run(gpu, path, m, x, w, scratch, y)?;
        Ok(path)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        gpu: &Gpu,
        path: Nf4GemmPath,
        m: usize,
        x: &CudaSlice<u16>,
        w: &GpuNf4,
        scratch: &mut CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        match path {
            Nf4GemmPath::DequantCublas => self.blas.nf4_xwt(gpu, m, x, w, scratch, y),
            Nf4GemmPath::MmaTiles => w.matmul_bf16_mma(gpu, m, x, y),
        }
    }
}

/// One untimed run, then the median of `repeats` runs each timed with CUDA events (milliseconds).
fn time_median_ms(
    gpu: &Gpu,
    repeats: usize,
    f: &mut dyn FnMut() -> Result<(), KernelError>,
) -> Result<f64, KernelError> {
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    f()?;
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let start = gpu
            .context()
            .new_event(flags)
            .map_err(cuda_err("create event"))?;
        let end = gpu
            .context()
            .new_event(flags)
            .map_err(cuda_err("create event"))?;
        start
            .record(gpu.stream())
            .map_err(cuda_err("record event"))?;
        f()?;
        end.record(gpu.stream()).map_err(cuda_err("record event"))?;
        times.push(f64::from(
            start.elapsed_ms(&end).map_err(cuda_err("event time"))?,
        ));
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(m: usize, n: usize, k: usize) -> GemmShape {
        GemmShape {
            device: "Test GPU".into(),
            m,
            n,
            k,
        }
    }

    #[test]
    fn the_faster_path_is_kept_and_timed_only_once() {
        let mut c = Nf4GemmChooser::in_memory();
        let mut calls = 0;
        let s = shape(2048, 4096, 4096);
        let got = c
            .choose(&s, |p| {
                calls += 1;
                Ok(Some(match p {
                    Nf4GemmPath::DequantCublas => 0.9,
                    Nf4GemmPath::MmaTiles => 0.5,
                }))
            })
            .unwrap();
        assert_eq!(got.path, Nf4GemmPath::MmaTiles);
        assert_eq!(got.timings_ms["dequant_cublas"], 0.9);
        assert_eq!(calls, 2);
        let again = c
            .choose(&s, |_| panic!("a remembered shape is not timed again"))
            .unwrap();
        assert_eq!(again, got);
        // Another shape, another device: timed afresh.
        let other = GemmShape {
            device: "Other GPU".into(),
            ..s.clone()
        };
        let got = c
            .choose(&other, |p| {
                Ok(Some(if p == Nf4GemmPath::MmaTiles { 2.0 } else { 1.0 }))
            })
            .unwrap();
        assert_eq!(got.path, Nf4GemmPath::DequantCublas);
        assert_eq!(c.choices().count(), 2);
    }

    #[test]
    fn ties_go_to_cublas_and_paths_that_cannot_run_are_skipped() {
        let mut c = Nf4GemmChooser::in_memory();
        let tie = c.choose(&shape(1, 2, 64), |_| Ok(Some(1.0))).unwrap();
        assert_eq!(tie.path, Nf4GemmPath::DequantCublas);
        let only = c
            .choose(&shape(8, 8, 100), |p| {
                Ok((p == Nf4GemmPath::DequantCublas).then_some(3.0))
            })
            .unwrap();
        assert_eq!(only.path, Nf4GemmPath::DequantCublas);
        assert!(!only.timings_ms.contains_key("mma_tiles"));
        let none = c.choose(&shape(8, 8, 8), |_| Ok(None)).unwrap_err();
        assert!(none.to_string().contains("no NF4 GEMM path"), "{none}");
        let nan = c
            .choose(&shape(9, 9, 9), |_| Ok(Some(f64::NAN)))
            .unwrap_err();
        assert!(nan.to_string().contains("timing"), "{nan}");
        // A failed timing is not remembered.
        assert!(c.get(&shape(9, 9, 9)).is_none());
    }

    #[test]
    fn choices_survive_in_the_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/nf4-gemm-choices.json");
        let s = shape(2048, 14336, 4096);
        {
            let mut c = Nf4GemmChooser::with_file(&file).unwrap();
            c.choose(&s, |p| {
                Ok(Some(if p == Nf4GemmPath::MmaTiles { 1.5 } else { 1.2 }))
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("\"dequant_cublas\"") && text.contains("14336"),
            "{text}"
        );
        let c = Nf4GemmChooser::with_file(&file).unwrap();
        let got = c.get(&s).expect("read back from the file");
        assert_eq!(got.path, Nf4GemmPath::DequantCublas);
        assert_eq!(got.timings_ms["mma_tiles"], 1.5);
    }

    #[test]
    fn a_bad_cache_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("choices.json");
        std::fs::write(&file, "{ not json").unwrap();
        let err = Nf4GemmChooser::with_file(&file).unwrap_err().to_string();
        assert!(err.contains("choices.json"), "{err}");
        std::fs::write(&file, r#"{"version": 99, "choices": []}"#).unwrap();
        let err = Nf4GemmChooser::with_file(&file).unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }
}
