//! Launchers of `kernels/cuda/engine.cu`, what the kernel engine's CUDA device needs beside the op set: add, row
//! gathers and scatters, appending along the sequence (the key/value cache), and decoding attention against that
//! cache with left padding. Sizes are checked on the host, with errors naming the argument. The kernels compile
//! with NVRTC and were checked on the CPU emulator (`tools/emu/engine_check.cpp`); **none has run on a GPU yet**.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::ENGINE;
use super::device::{Gpu, i32_of, launch_kernel, need};
use super::ops::grid;
use crate::error::KernelError;
use crate::ops::attention::CachedDims;

/// Launches a kernel of `engine.cu` (arguments as in its signature; sizes checked by the caller).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {
        launch_kernel!($gpu, &ENGINE, $name, $cfg, $($arg),*)
    };
}

/// `out = a + b` over the first `n` values.
pub fn add(
    gpu: &Gpu,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    n: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("a", a, n)?;
    need("b", b, n)?;
    need("out", out, n)?;
    let n64 = n as i64;
    launch!(gpu, "add_f32", grid(n), a, b, &n64, out);
    Ok(())
}

/// The kernel's source index of each gathered row: `rows` as they are, each below `x_rows`.
pub fn gather_sources(rows: &[usize], x_rows: usize) -> Result<Vec<i64>, KernelError> {
    match rows.iter().position(|&r| r >= x_rows) {
        Some(i) => Err(KernelError::invalid(
            "rows",
            format!("rows[{i}] = {} is outside 0..{x_rows}", rows[i]),
        )),
        None => Ok(rows.iter().map(|&r| r as i64).collect()),
    }
}

/// The kernel's source index of each of `total_rows` output rows when row `i` of the input goes to `rows[i]`:
/// the last `i` that names it (a repeated row keeps the last one, as a sequential scatter would), or -1 (zeros).
pub fn scatter_sources(rows: &[usize], total_rows: usize) -> Result<Vec<i64>, KernelError> {
    let mut src = vec![-1i64; total_rows];
    for (i, &r) in rows.iter().enumerate() {
        let slot = src.get_mut(r).ok_or_else(|| {
            KernelError::invalid(
                "rows",
                format!("rows[{i}] = {r} is outside 0..{total_rows}"),
            )
        })?;
        *slot = i as i64;
    }
    Ok(src)
}

/// Output row `r` = row `src[r]` of `x` (`width` values each), or zeros where `src[r] < 0`.
fn gather_by_sources(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    width: usize,
    src: &[i64],
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    let n = src.len() * width;
    need("out", out, n)?;
    if n == 0 {
        return Ok(());
    }
    let src_dev = gpu.upload(src)?;
    let (rows64, width64) = (src.len() as i64, width as i64);
    launch!(
        gpu,
        "gather_rows_f32",
        grid(n),
        x,
        &src_dev,
        &rows64,
        &width64,
        out
    );
    Ok(())
}

/// `out` (`rows.len() x width`) = rows `rows` of `x` (`x.len() / width` rows of `width` values), in that order.
pub fn gather_rows(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    width: usize,
    rows: &[usize],
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    let src = gather_sources(rows, x.len() / width.max(1))?;
    gather_by_sources(gpu, x, width, &src, out)
}

/// `out` (`total_rows x width`) = zeros with row `rows[i]` set to row `i` of `x` (`rows.len() x width`).
pub fn scatter_rows(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    width: usize,
    rows: &[usize],
    total_rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("x", x, rows.len() * width)?;
    let src = scatter_sources(rows, total_rows)?;
    gather_by_sources(gpu, x, width, &src, out)
}

/// The sizes of [`append_seq`]: `rows` sequences of `old_len` positions, then `new_len` more, `width` values each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqDims {
    pub rows: usize,
    pub old_len: usize,
    pub new_len: usize,
    pub width: usize,
}

/// `out` (`rows x (old_len + new_len) x width`) = each row's `old` positions followed by its `fresh` ones.
/// `old` may be `None` only when `old_len` is 0.
pub fn append_seq(
    gpu: &Gpu,
    old: Option<&CudaSlice<f32>>,
    fresh: &CudaSlice<f32>,
    d: SeqDims,
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    let old = match old {
        Some(o) => {
            need("old", o, d.rows * d.old_len * d.width)?;
            o
        }
        // Never read by the kernel when old_len is 0.
        None if d.old_len == 0 => fresh,
        None => {
            return Err(KernelError::invalid(
                "old",
                format!("missing, but old_len is {}", d.old_len),
            ));
        }
    };
    need("fresh", fresh, d.rows * d.new_len * d.width)?;
    let n = d.rows * (d.old_len + d.new_len) * d.width;
    need("out", out, n)?;
    if n == 0 {
        return Ok(());
    }
    let [rows, old_len, new_len, width] = [d.rows, d.old_len, d.new_len, d.width].map(|v| v as i64);
    launch!(
        gpu,
        "append_seq_f32",
        grid(n),
        old,
        fresh,
        &rows,
        &old_len,
        &new_len,
        &width,
        out
    );
    Ok(())
}

/// The launch of [`attention_cached`] for `d` (one block per query, one thread per head element), after checking
/// the sizes and that `pad` has one entry per row.
pub fn cached_config(d: &CachedDims, pad: &[usize]) -> Result<LaunchConfig, KernelError> {
    if d.rows == 0
        || d.new == 0
        || d.kv_heads == 0
        || !d.q_heads.is_multiple_of(d.kv_heads)
        || !(1..=1024).contains(&d.head_dim)
        || d.q_heads == 0
    {
        return Err(KernelError::invalid(
            "cached attention dims",
            format!("{d:?}: sizes >= 1, kv_heads dividing q_heads, head_dim 1..=1024"),
        ));
    }
    if pad.len() != d.rows {
        return Err(KernelError::invalid(
            "pad",
            format!("{} entries for {} rows", pad.len(), d.rows),
        ));
    }
    let queries = d.rows * d.new * d.q_heads;
    let blocks = u32::try_from(queries)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| {
            KernelError::invalid(
                "cached attention dims",
                format!("{d:?}: {queries} queries, at most {} per launch", i32::MAX),
            )
        })?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (d.head_dim.div_ceil(32) as u32 * 32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Decoding attention: `q` is `rows x new x q_heads x head_dim`, `k` and `v` are `rows x (past + new) x kv_heads x
/// head_dim`; the query at column `past + i` of row `b` sees keys `pad[b] ..= past + i`, and one that sees none
/// (a padding column) gives zeros. The function of `crate::ops::attention::forward_cached`, into `out` (shaped
/// like `q`).
#[allow(clippy::too_many_arguments)]
pub fn attention_cached(
    gpu: &Gpu,
    d: CachedDims,
    pad: &[usize],
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    let cfg = cached_config(&d, pad)?;
    let s = d.past + d.new;
    need("q", q, d.rows * d.new * d.q_heads * d.head_dim)?;
    need("k", k, d.rows * s * d.kv_heads * d.head_dim)?;
    need("v", v, d.rows * s * d.kv_heads * d.head_dim)?;
    need("out", out, d.rows * d.new * d.q_heads * d.head_dim)?;
    let (fresh, past) = (i32_of(d.new, "new")?, i32_of(d.past, "past")?);
    i32_of(s, "past + new")?;
    let (hq, hkv, hd) = (
        i32_of(d.q_heads, "q_heads")?,
        i32_of(d.kv_heads, "kv_heads")?,
        i32_of(d.head_dim, "head_dim")?,
    );
    let pad_dev = gpu.upload(&pad.iter().map(|&p| p as i64).collect::<Vec<_>>())?;
    launch!(
        gpu,
        "attention_cached_f32",
        cfg,
        q,
        k,
        v,
        &pad_dev,
        &fresh,
        &past,
        &hq,
        &hkv,
        &hd,
        out
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_sources_are_the_rows_and_refuse_one_out_of_range() {
        assert_eq!(gather_sources(&[2, 0, 2], 3).unwrap(), vec![2, 0, 2]);
        let err = gather_sources(&[0, 3], 3).unwrap_err().to_string();
        assert!(err.contains("rows[1] = 3") && err.contains("0..3"), "{err}");
    }

    #[test]
    fn scatter_sources_invert_the_rows_and_leave_the_others_zero() {
        assert_eq!(scatter_sources(&[3, 0], 5).unwrap(), vec![1, -1, -1, 0, -1]);
        // A repeated row keeps the last input row, as the reference's sequential loop does.
        assert_eq!(scatter_sources(&[1, 1], 2).unwrap(), vec![-1, 1]);
        assert_eq!(scatter_sources(&[], 2).unwrap(), vec![-1, -1]);
        let err = scatter_sources(&[0, 4], 4).unwrap_err().to_string();
        assert!(err.contains("rows[1] = 4") && err.contains("0..4"), "{err}");
    }

    fn dims(rows: usize, new: usize, past: usize, hq: usize, hkv: usize, d: usize) -> CachedDims {
        CachedDims {
            rows,
            new,
            past,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
        }
    }

    #[test]
    fn the_cached_attention_launch_has_a_block_per_query_and_a_thread_per_element() {
        let cfg = cached_config(&dims(3, 5, 7, 9, 3, 64), &[0, 2, 4]).unwrap();
        assert_eq!(cfg.grid_dim, (3 * 5 * 9, 1, 1));
        assert_eq!(cfg.block_dim, (64, 1, 1));
        let cfg = cached_config(&dims(1, 1, 0, 2, 1, 33), &[0]).unwrap();
        assert_eq!(cfg.block_dim, (64, 1, 1));
        for (d, pad, what) in [
            (dims(2, 1, 0, 4, 2, 64), vec![0], "pad"),
            (dims(1, 1, 0, 4, 3, 64), vec![0], "kv_heads dividing"),
            (dims(1, 1, 0, 4, 2, 1025), vec![0], "head_dim 1..=1024"),
            (dims(1, 0, 3, 4, 2, 64), vec![0], "sizes >= 1"),
        ] {
            let err = cached_config(&d, &pad).unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}
