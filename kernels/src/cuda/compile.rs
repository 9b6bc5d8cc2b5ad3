//! The CUDA C sources (one `.cu` file per kernel family, embedded with `include_str!`) and their run-time
//! compilation by NVRTC straight to a CUBIN for one architecture (`--gpu-architecture=sm_XX`).
//!
//! NVRTC is loaded with dlopen on first use (cudarc `dynamic-loading`): `libnvrtc.so*` must be on the library
//! search path (`LD_LIBRARY_PATH`; `scripts/fetch-nvrtc.sh` installs one that needs no GPU). Nothing here needs a GPU.

use std::ffi::{CString, c_char};

use cudarc::nvrtc::{result, sys};

use crate::error::KernelError;

/// One kernel family's CUDA C source.
#[derive(Debug)]
pub struct KernelSource {
    /// The file name under `kernels/cuda/` (also the NVRTC program name).
    pub name: &'static str,
    /// The source, without the shared helpers of `common.cuh` (prepended at compile time).
    pub code: &'static str,
}

/// Helpers shared by every source file (types, bf16/f16 conversion, warp and block reductions).
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// NF4 quantise/double-quantise, dequantise to fp32/bf16/f16, GEMV for batch 1..8.
pub const NF4: KernelSource = KernelSource {
    name: "nf4.cu",
    code: include_str!("../../cuda/nf4.cu"),
};

/// The fused LoRA matrix product with dropout/scale/accumulate epilogues.
pub const LORA: KernelSource = KernelSource {
    name: "lora.cu",
    code: include_str!("../../cuda/lora.cu"),
};

/// The LLaMA training op set: embedding, RMSNorm, RoPE, attention, SwiGLU, cross-entropy, AdamW, clipping.
pub const OPS: KernelSource = KernelSource {
    name: "ops.cu",
    code: include_str!("../../cuda/ops.cu"),
};

/// The op set with bf16 activations (fp32 math inside): embedding, RMSNorm, RoPE, SwiGLU, cross-entropy.
pub const OPS_BF16: KernelSource = KernelSource {
    name: "ops_bf16.cu",
    code: include_str!("../../cuda/ops_bf16.cu"),
};

/// Flash-style tiled causal GQA attention, forward and backward (deterministic: no atomics).
pub const ATTENTION: KernelSource = KernelSource {
    name: "attention.cu",
    code: include_str!("../../cuda/attention.cu"),
};

/// Tensor-core (mma.sync bf16) flash attention: causal GQA, bf16 q/k/v/out, fp32 lse (deterministic).
pub const ATTENTION_TC: KernelSource = KernelSource {
    name: "attention_tc.cu",
    code: include_str!("../../cuda/attention_tc.cu"),
};

/// What the kernel engine's CUDA device needs beside the op set: add, row gathers and scatters, appending along
/// the sequence, and decoding attention against a key/value cache with left padding (not run on a GPU yet).
pub const ENGINE: KernelSource = KernelSource {
    name: "engine.cu",
    code: include_str!("../../cuda/engine.cu"),
};

/// Every source file, for the compile-everything check.
pub const ALL: [&KernelSource; 7] = [
    &NF4,
    &LORA,
    &OPS,
    &OPS_BF16,
    &ATTENTION,
    &ATTENTION_TC,
    &ENGINE,
];

/// Whether the NVRTC library can be loaded, with its version; `Err` says why not.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    // SAFETY: only probes dlopen for the library names cudarc would use.
    if !unsafe { sys::is_culib_present() } {
        return Err("the NVRTC library (libnvrtc.so, .so.13, ...) is not on the library search path \
                    (LD_LIBRARY_PATH); scripts/fetch-nvrtc.sh installs one into .cache/nvrtc/nvidia/cu13/lib"
            .into());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are valid for writes.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {status:?}"));
    }
    Ok((major, minor))
}

/// The options every kernel is compiled with for compute capability `arch` (e.g. 90 for sm_90).
pub fn options(arch: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".into(),
    ]
}

/// Compiles one source for `sm_{arch}` and returns the CUBIN; a compile error carries NVRTC's log.
pub fn compile_cubin(source: &KernelSource, arch: u32) -> Result<Vec<u8>, KernelError> {
    compile_with_log(source, arch, &[]).map(|(cubin, _)| cubin)
}

/// Compiles one source for `sm_{arch}` with extra NVRTC options (e.g. `--ptxas-options=-v`); returns the CUBIN
/// and NVRTC's log (where ptxas reports registers, shared memory and spills).
pub fn compile_with_log(
    source: &KernelSource,
    arch: u32,
    extra: &[&str],
) -> Result<(Vec<u8>, String), KernelError> {
    nvrtc_version().map_err(KernelError::CudaUnavailable)?;
    let text = format!("{COMMON}\n#line 1 \"{}\"\n{}", source.name, source.code);
    let err = |op: &str, detail: String| KernelError::Cuda {
        op: format!("{op} {} for sm_{arch}", source.name),
        detail,
    };
    let code = CString::new(text).map_err(|e| err("read", e.to_string()))?;
    let name = CString::new(source.name).map_err(|e| err("read", e.to_string()))?;
    let program = result::create_program(&code, Some(&name))
        .map_err(|e| err("nvrtc create", format!("{e:?}")))?;
    let mut opts = options(arch);
    opts.extend(extra.iter().map(|o| o.to_string()));
    // SAFETY: `program` was just created and is destroyed exactly once below; `code` and `name` outlive it.
    let outcome = unsafe { compile_and_fetch(program, &opts) };
    // SAFETY: as above.
    let _ = unsafe { result::destroy_program(program) };
    outcome.map_err(|detail| err("compile", detail))
}

/// # Safety
/// `program` must be a live NVRTC program.
unsafe fn compile_and_fetch(
    program: sys::nvrtcProgram,
    options: &[String],
) -> Result<(Vec<u8>, String), String> {
    // SAFETY: the caller guarantees `program` is live.
    if let Err(e) = unsafe { result::compile_program(program, options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(program) }
            .map(c_chars_to_string)
            .unwrap_or_default();
        return Err(format!("{e:?}\n{log}"));
    }
    let mut size = 0usize;
    // SAFETY: as above; `size` is valid for writes.
    let status = unsafe { sys::nvrtcGetCUBINSize(program, &mut size) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(format!("no CUBIN produced ({status:?}, {size} bytes)"));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has exactly `size` bytes, as NVRTC asked for.
    let status = unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr() as *mut c_char) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN failed: {status:?}"));
    }
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program) }
        .map(c_chars_to_string)
        .unwrap_or_default();
    Ok((cubin, log))
}

fn c_chars_to_string(chars: Vec<c_char>) -> String {
    let bytes: Vec<u8> = chars
        .into_iter()
        .take_while(|&c| c != 0)
        .map(|c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether the environment demands NVRTC (then its absence fails the compile check instead of skipping it):
/// `TANDEM_REQUIRE_NVRTC=1` (set by `scripts/test.sh`, which installs it) or a CI environment (`CI` set and
/// neither empty, `0` nor `false`).
pub fn nvrtc_required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
            .unwrap_or(false)
    };
    set("TANDEM_REQUIRE_NVRTC") || set("CI")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.cu` file compiles for sm_80 and sm_90 (the CI proof that no kernel has a compile error).
    #[test]
    fn every_kernel_compiles_for_sm80_and_sm90() {
        match nvrtc_version() {
            Ok((major, minor)) => println!("NVRTC {major}.{minor}"),
            Err(why) if !nvrtc_required() => {
                println!("skipped: {why} (set TANDEM_REQUIRE_NVRTC=1 to make this a failure)");
                return;
            }
            Err(why) => panic!("NVRTC is required here (TANDEM_REQUIRE_NVRTC or CI is set): {why}"),
        }
        for source in ALL {
            for arch in [80, 90] {
                let cubin = compile_cubin(source, arch).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    &cubin[..4],
                    b"\x7fELF",
                    "{} for sm_{arch} is a CUBIN (ELF)",
                    source.name
                );
            }
        }
    }

    /// ptxas's report for the attention, LoRA, NF4, bf16 op-set and engine kernels: printed, and no kernel may spill registers to local
    /// memory.
    #[test]
    fn attention_and_lora_kernels_do_not_spill() {
        if nvrtc_version().is_err() {
            assert!(!nvrtc_required(), "NVRTC is required here");
            println!("skipped: NVRTC not found");
            return;
        }
        for source in [&ATTENTION, &ATTENTION_TC, &LORA, &NF4, &OPS_BF16, &ENGINE] {
            for arch in [80, 90] {
                let (_, log) = compile_with_log(source, arch, &["--ptxas-options=-v"])
                    .unwrap_or_else(|e| panic!("{e}"));
                println!("{} sm_{arch}:\n{log}", source.name);
                assert!(
                    log.contains("Used"),
                    "ptxas reported no register counts:\n{log}"
                );
                for line in log.lines().filter(|l| l.contains("spill")) {
                    assert!(
                        line.contains("0 bytes spill stores, 0 bytes spill loads"),
                        "{} sm_{arch} spills: {line}",
                        source.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_compile_error_is_reported_with_the_log() {
        if nvrtc_version().is_err() {
            println!("skipped: NVRTC not found");
            return;
        }
        let bad = KernelSource {
            name: "bad.cu",
            code: "extern \"C\" __global__ void k() { undefined_thing(); }",
        };
        let err = compile_cubin(&bad, 80).unwrap_err().to_string();
        assert!(
            err.contains("bad.cu") && err.contains("undefined_thing"),
            "{err}"
        );
    }
}
