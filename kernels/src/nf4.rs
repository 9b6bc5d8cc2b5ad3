//! NF4 (4-bit NormalFloat, QLoRA) quantisation with double quantisation of the block scales: the CPU reference
//! that the engine uses and that the CUDA kernels reproduce bit for bit.
//!
//! The format is bitsandbytes' (`quantize_4bit(..., quant_type="nf4", blocksize=64)`), checked bit for bit
//! against bitsandbytes 0.50.2 by `kernels/tests/nf4_bitsandbytes.rs`:
//! - The weights are read as one flat row-major array (element `i = row * cols + col`) and cut into blocks of
//!   [`BLOCK`] = 64 consecutive elements. Each block keeps its absolute maximum `absmax` (fp32). A last, partial
//!   block (when `rows * cols` is not a multiple of 64) has its own absmax over the elements it has; nothing is
//!   padded in the absmax.
//! - Each element is scaled into [-1, 1] (`x * (1 / absmax)`, clamped; bitsandbytes' CPU path divides,
//!   `x / absmax`, in the partial last block, and so does this reference) and replaced by the index (0..16) of the
//!   nearest of the 16 [`LEVELS`]: the index is the number of decision thresholds ([`THRESHOLDS`], the fp32
//!   midpoints between neighbouring levels) that lie strictly below the scaled value, so a value exactly on a
//!   midpoint takes the lower level. An all-zero block has absmax 0 and every element takes level 7 (0.0).
//! - Two codes are packed per byte, **the first element in the high nibble**: byte `j` holds element `2j` in bits
//!   7..4 and element `2j + 1` in bits 3..0. With an odd element count the last low nibble is padding and holds 7
//!   (the code of 0.0).
//! - Dequantisation is `LEVELS[code] * absmax` in fp32 (one rounding), then rounded to nearest-even for bf16/f16.
//!
//! Double quantisation (QLoRA's "DQ", bitsandbytes' `compress_statistics=True`) stores the absmax values in 8 bits:
//! their mean (`offset`, fp32) is subtracted, the centred values are cut into blocks of [`ABSMAX_BLOCK`] = 256,
//! each block keeps its own fp32 absmax (`scales`), and each centred value, scaled into [-1, 1], becomes the index of
//! the nearest entry of bitsandbytes' signed dynamic 8-bit map ([`dynamic_map`]). The absmax used to dequantise is
//! then `dynamic_map[code] * scale + offset` (an fp32 multiply, then an fp32 add: no fused multiply-add).
//! The 8-bit code is the nearest map entry (fp32 midpoints, a tie takes the lower); bitsandbytes' own searches
//! (its CPU lookup table, its CUDA binary search) miss the nearest entry for a few rare values and then pick the
//! neighbour, so about 1 in 70 absmax codes may differ from bitsandbytes' by one step, ours being the nearer.
//! The offset is the f64 mean rounded once to fp32 (torch's fp32 mean agreed on the fixture).

use std::sync::OnceLock;

use half::{bf16, f16};

use crate::error::KernelError;

/// Elements per NF4 block (one absmax each).
pub const BLOCK: usize = 64;

/// Absmax values per second-level block in double quantisation (one fp32 scale each).
pub const ABSMAX_BLOCK: usize = 256;

/// The 16 NormalFloat4 levels (QLoRA, Dettmers et al. 2023, appendix E; bitsandbytes `get_4bit_type("nf4")`),
/// sorted, code `i` meaning `LEVELS[i]`. They are quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
pub const LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The 15 decision thresholds between neighbouring [`LEVELS`]: `(LEVELS[i] + LEVELS[i + 1]) / 2` in fp32.
pub const THRESHOLDS: [f32; 15] = midpoints(&LEVELS);

/// The code of level 0.0 (also the padding nibble).
pub const ZERO_CODE: u8 = 7;

/// Smallest absmax used as a divisor (bitsandbytes clamps the absmax to 1e-38 before dividing).
const MIN_DIVISOR: f32 = 1e-38;

const fn midpoints(levels: &[f32; 16]) -> [f32; 15] {
    let mut out = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        out[i] = (levels[i] + levels[i + 1]) / 2.0;
        i += 1;
    }
    out
}

/// The NF4 code of a value already scaled into [-1, 1]: the number of thresholds strictly below it.
pub fn nf4_code(scaled: f32) -> u8 {
    THRESHOLDS.iter().map(|&t| u8::from(scaled > t)).sum()
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True, max_exponent_bits=7,
/// total_bits=8)`): 256 sorted fp32 values in [-0.99297, 1.0], dense near zero, used to store the absmax values
/// in double quantisation.
///
/// For each exponent `e` in 0..7 it holds the `2^e` means of neighbouring points of
/// `linspace(0.1, 1, 2^e + 1)` (fp32, as torch computes it), times `10^(e - 6)`, with both signs; plus 0 and 1.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(build_dynamic_map)
}

/// torch's fp32 `linspace(start, end, steps)` as torch 2.9.1 computes it on x86-64 (checked against it): the step
/// in fp32, the first half counted up from `start` and the second half down from `end`, each point rounded once
/// (a fused multiply-add, `start + step * i`).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

fn build_dynamic_map() -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for exponent in 0..7i32 {
        let boundaries = linspace_f32(0.1, 1.0, (1usize << exponent) + 1);
        let scale = 10f64.powi(exponent - 6) as f32;
        for pair in boundaries.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut map = [0.0f32; 256];
    map.copy_from_slice(&data);
    map
}

/// The decision thresholds of [`dynamic_map`]: fp32 midpoints of neighbouring entries.
pub fn dynamic_map_thresholds() -> &'static [f32; 255] {
    static THRESH: OnceLock<[f32; 255]> = OnceLock::new();
    THRESH.get_or_init(|| {
        let map = dynamic_map();
        let mut out = [0.0f32; 255];
        for (i, t) in out.iter_mut().enumerate() {
            *t = (map[i] + map[i + 1]) / 2.0;
        }
        out
    })
}

/// The 8-bit dynamic-map code of a value already scaled into [-1, 1]: the number of thresholds strictly below it.
pub fn dynamic_code(scaled: f32) -> u8 {
    // The thresholds are sorted: a binary search for the first one >= scaled.
    let count = dynamic_map_thresholds().partition_point(|&t| t < scaled);
    count as u8
}

/// Scales every value of one block into [-1, 1] and maps it to a code; returns the block's absmax.
///
/// `is_tail` selects bitsandbytes' CPU arithmetic for a partial last block (division instead of a reciprocal).
fn quantize_block(
    values: &[f32],
    is_tail: bool,
    code_of: impl Fn(f32) -> u8,
    codes: &mut Vec<u8>,
) -> f32 {
    let absmax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let divisor = absmax.max(MIN_DIVISOR);
    let reciprocal = 1.0 / divisor;
    for &v in values {
        let scaled = if is_tail { v / divisor } else { v * reciprocal };
        codes.push(code_of(scaled.clamp(-1.0, 1.0)));
    }
    absmax
}

/// Double-quantised block scales: 8-bit codes of the centred absmax values, one fp32 scale per 256 of them, and
/// the mean that was subtracted.
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleQuantAbsmax {
    codes: Vec<u8>,
    scales: Vec<f32>,
    offset: f32,
}

impl DoubleQuantAbsmax {
    /// Double-quantises the given block absmax values (bitsandbytes `compress_statistics=True`).
    pub fn quantize(absmax: &[f32]) -> Result<Self, KernelError> {
        if absmax.is_empty() {
            return Err(KernelError::invalid("absmax", "no values to quantise"));
        }
        KernelError::check_finite("absmax", absmax)?;
        let offset = mean_f32(absmax);
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let mut codes = Vec::with_capacity(absmax.len());
        let full = absmax.len() / ABSMAX_BLOCK * ABSMAX_BLOCK;
        let scales = centred
            .chunks(ABSMAX_BLOCK)
            .enumerate()
            .map(|(b, chunk)| {
                let is_tail = b * ABSMAX_BLOCK >= full;
                quantize_block(chunk, is_tail, dynamic_code, &mut codes)
            })
            .collect();
        Ok(Self {
            codes,
            scales,
            offset,
        })
    }

    /// Builds one from stored parts, checking that they fit together.
    pub fn from_parts(codes: Vec<u8>, scales: Vec<f32>, offset: f32) -> Result<Self, KernelError> {
        if codes.is_empty() {
            return Err(KernelError::invalid("absmax codes", "empty"));
        }
        let want = codes.len().div_ceil(ABSMAX_BLOCK);
        if scales.len() != want {
            return Err(KernelError::invalid(
                "absmax scales",
                format!(
                    "{} scales for {} codes, expected {want} (one per {ABSMAX_BLOCK})",
                    scales.len(),
                    codes.len()
                ),
            ));
        }
        KernelError::check_finite("absmax scales", &scales)?;
        KernelError::check_finite("absmax offset", &[offset])?;
        Ok(Self {
            codes,
            scales,
            offset,
        })
    }

    /// One 8-bit code per NF4 block.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// One fp32 scale per [`ABSMAX_BLOCK`] codes.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The mean of the original absmax values, added back after dequantising.
    pub fn offset(&self) -> f32 {
        self.offset
    }

    /// The absmax of NF4 block `block`: `dynamic_map[code] * scale + offset` (multiply, then add, in fp32).
    pub fn value(&self, block: usize) -> f32 {
        let map = dynamic_map();
        map[usize::from(self.codes[block])] * self.scales[block / ABSMAX_BLOCK] + self.offset
    }

    /// All dequantised absmax values.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.codes.len()).map(|b| self.value(b)).collect()
    }

    /// Bytes this takes in memory: the codes, the scales and the offset.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len() + 4
    }
}

/// The mean of fp32 values, summed in f64 and rounded once to fp32.
pub(crate) fn mean_f32(values: &[f32]) -> f32 {
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    (sum / values.len() as f64) as f32
}

/// The per-block scales of an NF4 tensor: plain fp32, or double-quantised.
#[derive(Clone, Debug, PartialEq)]
pub enum Nf4Absmax {
    /// One fp32 absmax per block.
    Plain(Vec<f32>),
    /// One 8-bit code per block, one fp32 scale per 256 blocks, and an fp32 offset.
    Double(DoubleQuantAbsmax),
}

impl Nf4Absmax {
    /// Number of NF4 blocks described.
    pub fn blocks(&self) -> usize {
        match self {
            Self::Plain(v) => v.len(),
            Self::Double(d) => d.codes.len(),
        }
    }

    /// The fp32 absmax of every block as dequantisation uses it.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Self::Plain(v) => v.clone(),
            Self::Double(d) => d.dequantize(),
        }
    }

    /// Bytes this takes in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Plain(v) => 4 * v.len(),
            Self::Double(d) => d.bytes(),
        }
    }
}

/// A `rows x cols` fp32 matrix stored as NF4: packed 4-bit codes and per-block scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Tensor {
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    absmax: Nf4Absmax,
}

impl Nf4Tensor {
    /// Quantises a row-major `rows x cols` matrix (see the module docs for the exact format); `double_quant`
    /// also quantises the block absmax values to 8 bits. Any size is accepted; the values must be finite.
    pub fn quantize(
        weights: &[f32],
        rows: usize,
        cols: usize,
        double_quant: bool,
    ) -> Result<Self, KernelError> {
        let len = checked_len(rows, cols)?;
        if weights.len() != len {
            return Err(KernelError::invalid(
                "weights",
                format!(
                    "{} values for a {rows}x{cols} matrix, expected {len}",
                    weights.len()
                ),
            ));
        }
        KernelError::check_finite("weights", weights)?;
        let mut unpacked = Vec::with_capacity(len + 1);
        let full = len / BLOCK * BLOCK;
        let absmax: Vec<f32> = weights
            .chunks(BLOCK)
            .enumerate()
            .map(|(b, chunk)| quantize_block(chunk, b * BLOCK >= full, nf4_code, &mut unpacked))
            .collect();
        if unpacked.len() % 2 == 1 {
            unpacked.push(ZERO_CODE);
        }
        let codes = unpacked
            .chunks_exact(2)
            .map(|pair| (pair[0] << 4) | pair[1])
            .collect();
        let absmax = if double_quant {
            Nf4Absmax::Double(DoubleQuantAbsmax::quantize(&absmax)?)
        } else {
            Nf4Absmax::Plain(absmax)
        };
        Ok(Self {
            rows,
            cols,
            codes,
            absmax,
        })
    }

    /// Builds a tensor from stored parts (e.g. read from a file or produced on the GPU), checking that the
    /// lengths fit the shape.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        absmax: Nf4Absmax,
    ) -> Result<Self, KernelError> {
        let len = checked_len(rows, cols)?;
        if codes.len() != len.div_ceil(2) {
            return Err(KernelError::invalid(
                "codes",
                format!(
                    "{} bytes for {len} elements, expected {}",
                    codes.len(),
                    len.div_ceil(2)
                ),
            ));
        }
        if absmax.blocks() != len.div_ceil(BLOCK) {
            return Err(KernelError::invalid(
                "absmax",
                format!(
                    "{} blocks for {len} elements, expected {}",
                    absmax.blocks(),
                    len.div_ceil(BLOCK)
                ),
            ));
        }
        if let Nf4Absmax::Plain(values) = &absmax {
            KernelError::check_finite("absmax", values)?;
            if let Some(i) = values.iter().position(|v| *v < 0.0) {
                return Err(KernelError::invalid(
                    "absmax",
                    format!("absmax[{i}] is negative"),
                ));
            }
        }
        Ok(Self {
            rows,
            cols,
            codes,
            absmax,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of elements, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false: a tensor has at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of NF4 blocks, `ceil(len / 64)`.
    pub fn blocks(&self) -> usize {
        self.len().div_ceil(BLOCK)
    }

    /// The packed codes, two per byte, first element in the high nibble.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The per-block scales.
    pub fn absmax(&self) -> &Nf4Absmax {
        &self.absmax
    }

    /// Whether the absmax values are double-quantised.
    pub fn is_double_quant(&self) -> bool {
        matches!(self.absmax, Nf4Absmax::Double(_))
    }

    /// The 4-bit code of element `index` (flat, row-major).
    pub fn code(&self, index: usize) -> u8 {
        let byte = self.codes[index / 2];
        if index.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0x0f
        }
    }

    /// Bytes the tensor takes in memory: packed codes plus scales.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.absmax.bytes()
    }

    /// Dequantises to fp32, row-major: `LEVELS[code] * absmax[block]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.absmax.dequantize();
        (0..self.len())
            .map(|i| LEVELS[usize::from(self.code(i))] * absmax[i / BLOCK])
            .collect()
    }

    /// Dequantises to bf16 (the fp32 value rounded to nearest-even).
    pub fn dequantize_bf16(&self) -> Vec<bf16> {
        self.dequantize().into_iter().map(bf16::from_f32).collect()
    }

    /// Dequantises to f16 (the fp32 value rounded to nearest-even).
    pub fn dequantize_f16(&self) -> Vec<f16> {
        self.dequantize().into_iter().map(f16::from_f32).collect()
    }

    /// Serialises the tensor (little-endian): magic `TNF4`, format version 1 (u32), rows and cols (u64), a kind
    /// byte (0 plain absmax, 1 double-quantised), the packed codes, then for plain absmax the fp32 values, for
    /// double quantisation the offset (f32), the 8-bit codes and the fp32 scales. Lengths follow from the shape.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.bytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&(self.cols as u64).to_le_bytes());
        match &self.absmax {
            Nf4Absmax::Plain(values) => {
                out.push(0);
                out.extend_from_slice(&self.codes);
                values
                    .iter()
                    .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            }
            Nf4Absmax::Double(d) => {
                out.push(1);
                out.extend_from_slice(&self.codes);
                out.extend_from_slice(&d.offset.to_le_bytes());
                out.extend_from_slice(&d.codes);
                d.scales
                    .iter()
                    .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            }
        }
        out
    }

    /// Reads what [`Nf4Tensor::to_bytes`] wrote; names the field that is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KernelError> {
        let mut reader = Reader { bytes, pos: 0 };
        if reader.take(4, "magic")? != MAGIC {
            return Err(format_error("magic", "does not start with TNF4".into()));
        }
        let version = u32::from_le_bytes(reader.array("version")?);
        if version != FORMAT_VERSION {
            return Err(format_error(
                "version",
                format!("version {version}, this build reads {FORMAT_VERSION}"),
            ));
        }
        let rows = to_usize(u64::from_le_bytes(reader.array("rows")?), "rows")?;
        let cols = to_usize(u64::from_le_bytes(reader.array("cols")?), "cols")?;
        let len = checked_len(rows, cols)?;
        let blocks = len.div_ceil(BLOCK);
        let kind = reader.take(1, "kind")?[0];
        let codes = reader.take(len.div_ceil(2), "codes")?.to_vec();
        let absmax = match kind {
            0 => Nf4Absmax::Plain(reader.f32s(blocks, "absmax")?),
            1 => {
                let offset = f32::from_le_bytes(reader.array("absmax offset")?);
                let q = reader.take(blocks, "absmax codes")?.to_vec();
                let scales = reader.f32s(blocks.div_ceil(ABSMAX_BLOCK), "absmax scales")?;
                Nf4Absmax::Double(DoubleQuantAbsmax::from_parts(q, scales, offset)?)
            }
            other => {
                return Err(format_error(
                    "kind",
                    format!("kind byte {other}, expected 0 or 1"),
                ));
            }
        };
        if reader.pos != bytes.len() {
            return Err(format_error(
                "length",
                format!("{} bytes left over", bytes.len() - reader.pos),
            ));
        }
        Self::from_parts(rows, cols, codes, absmax)
    }
}

const MAGIC: &[u8; 4] = b"TNF4";
const FORMAT_VERSION: u32 = 1;

fn checked_len(rows: usize, cols: usize) -> Result<usize, KernelError> {
    if rows == 0 || cols == 0 {
        return Err(KernelError::invalid(
            "shape",
            format!("{rows}x{cols}: both dimensions must be at least 1"),
        ));
    }
    rows.checked_mul(cols).ok_or_else(|| {
        KernelError::invalid(
            "shape",
            format!("{rows}x{cols} overflows the address space"),
        )
    })
}

fn to_usize(value: u64, what: &'static str) -> Result<usize, KernelError> {
    usize::try_from(value)
        .map_err(|_| format_error(what, format!("{value} does not fit this machine")))
}

fn format_error(what: &'static str, detail: String) -> KernelError {
    KernelError::Format {
        what: "NF4 tensor",
        detail: format!("{what}: {detail}"),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], KernelError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format_error(
                    what,
                    format!(
                        "needs {n} bytes at offset {}, only {} in total",
                        self.pos,
                        self.bytes.len()
                    ),
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], KernelError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn f32s(&mut self, n: usize, what: &'static str) -> Result<Vec<f32>, KernelError> {
        let raw = self.take(
            n.checked_mul(4)
                .ok_or_else(|| format_error(what, "too many".into()))?,
            what,
        )?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::normal_f32;

    /// Standard normal density.
    fn phi(x: f64) -> f64 {
        (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }

    /// Standard normal CDF by composite Simpson integration of the density from 0 (error far below 1e-12).
    fn normal_cdf(x: f64) -> f64 {
        let steps = 2000;
        let h = x / steps as f64;
        let mut sum = phi(0.0) + phi(x);
        for i in 1..steps {
            sum += phi(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        0.5 + sum * h / 3.0
    }

    /// Inverse standard normal CDF by bisection.
    fn normal_ppf(p: f64) -> f64 {
        let (mut lo, mut hi) = (-10.0, 10.0);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if normal_cdf(mid) < p {
                lo = mid
            } else {
                hi = mid
            }
        }
        0.5 * (lo + hi)
    }

    fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
            .collect()
    }

    #[test]
    fn levels_are_the_paper_quantiles() {
        // QLoRA's construction (bitsandbytes create_normal_map, offset 0.9677083, an exact zero): 8 positive
        // quantiles from linspace(offset, 0.5, 9), 7 negative ones from linspace(offset, 0.5, 8), normalised by
        // the largest.
        let offset = 0.967_708_3;
        let mut levels: Vec<f64> = Vec::new();
        levels.extend(linspace(offset, 0.5, 9)[..8].iter().map(|&p| normal_ppf(p)));
        levels.extend(
            linspace(offset, 0.5, 8)[..7]
                .iter()
                .map(|&p| -normal_ppf(p)),
        );
        levels.push(0.0);
        let max = levels.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        levels.iter_mut().for_each(|v| *v /= max);
        levels.sort_by(f64::total_cmp);
        for (i, (&ours, &paper)) in LEVELS.iter().zip(&levels).enumerate() {
            assert!(
                (f64::from(ours) - paper).abs() < 1e-6,
                "level {i}: {ours} vs {paper}"
            );
        }
        assert_eq!(LEVELS[usize::from(ZERO_CODE)], 0.0);
    }

    #[test]
    fn thresholds_are_midpoints_and_codes_are_nearest_levels() {
        for (i, t) in THRESHOLDS.iter().enumerate() {
            let mid = (f64::from(LEVELS[i]) + f64::from(LEVELS[i + 1])) / 2.0;
            assert!((f64::from(*t) - mid).abs() < 1e-7);
            // On the threshold: the lower level; just above: the upper one.
            assert_eq!(nf4_code(*t), i as u8);
            assert_eq!(nf4_code(t.next_up()), i as u8 + 1);
        }
        // Every code is the nearest level (float64 distances) on a fine grid.
        for k in 0..=20_000 {
            let x = -1.0 + 2.0 * k as f64 / 20_000.0;
            let code = nf4_code(x as f32);
            let d = |c: usize| (x - f64::from(LEVELS[c])).abs();
            let best = (0..16).map(d).fold(f64::INFINITY, f64::min);
            assert!(d(usize::from(code)) <= best + 1e-7, "x={x} code={code}");
        }
        assert_eq!(nf4_code(-1.0), 0);
        assert_eq!(nf4_code(1.0), 15);
        assert_eq!(nf4_code(0.0), ZERO_CODE);
    }

    #[test]
    fn dynamic_map_has_the_documented_structure() {
        let map = dynamic_map();
        assert!(map.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        assert_eq!(map[255], 1.0);
        assert_eq!(map[127], 0.0);
        // 2^e values per exponent e and sign: the smallest positive is 10^-6 * 0.55.
        assert!((f64::from(map[128]) - 0.55e-6).abs() < 1e-12);
        assert!((f64::from(map[0]) + 0.992_968_75).abs() < 1e-6);
        let per_decade = |lo: f32, hi: f32| map.iter().filter(|&&v| v > lo && v < hi).count();
        for e in 0..7 {
            let lo = 10f32.powi(e - 7);
            let hi = 10f32.powi(e - 6) * 0.999_999;
            assert_eq!(per_decade(lo, hi), 1 << e, "exponent {e}");
        }
        for (i, &v) in map.iter().enumerate() {
            assert_eq!(dynamic_code(v), i as u8, "entry {i} maps to itself");
        }
    }

    #[test]
    fn block_layout_and_nibble_order() {
        // Two blocks of 64; block 0 ramps, block 1 is the negative of a scaled ramp.
        let mut w: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 31.5).collect();
        w.extend((0..64).map(|i| -(i as f32 - 31.5) / 10.0));
        let t = Nf4Tensor::quantize(&w, 2, 64, false).unwrap();
        let Nf4Absmax::Plain(absmax) = t.absmax() else {
            panic!("plain")
        };
        assert_eq!(absmax, &vec![1.0, 3.15]);
        assert_eq!(t.codes().len(), 64);
        assert_eq!(t.code(0), 0);
        assert_eq!(t.code(63), 15);
        assert_eq!(t.code(64), 15);
        assert_eq!(t.codes()[0] >> 4, t.code(0), "element 0 in the high nibble");
        assert_eq!(t.codes()[0] & 0xf, t.code(1));
        for i in 0..128 {
            let a = f64::from(absmax[i / 64]);
            let x = f64::from(w[i]) / a;
            let nearest = (0..16)
                .min_by(|&p, &q| {
                    (x - f64::from(LEVELS[p]))
                        .abs()
                        .total_cmp(&(x - f64::from(LEVELS[q])).abs())
                })
                .unwrap();
            assert_eq!(usize::from(t.code(i)), nearest, "element {i}");
        }
    }

    #[test]
    fn partial_blocks_odd_sizes_and_zero_blocks() {
        let w: Vec<f32> = normal_f32(7, 3 * 37);
        let t = Nf4Tensor::quantize(&w, 3, 37, true).unwrap();
        assert_eq!(t.blocks(), 2);
        assert_eq!(t.codes().len(), 56);
        assert_eq!(t.codes()[55] & 0xf, ZERO_CODE, "padding nibble");
        let Nf4Absmax::Double(d) = t.absmax() else {
            panic!("double")
        };
        assert_eq!(d.codes().len(), 2);
        assert_eq!(d.scales().len(), 1);
        let tail_max = w[64..].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let Nf4Absmax::Plain(plain) = Nf4Tensor::quantize(&w, 3, 37, false)
            .unwrap()
            .absmax
            .clone()
        else {
            panic!("plain")
        };
        assert_eq!(
            plain[1], tail_max,
            "the tail block's absmax covers only its own elements"
        );

        let zeros = Nf4Tensor::quantize(&[0.0; 100], 10, 10, false).unwrap();
        assert!(zeros.dequantize().iter().all(|&v| v == 0.0));
        assert!((0..100).all(|i| zeros.code(i) == ZERO_CODE));
    }

    #[test]
    fn dequantize_is_level_times_absmax() {
        let w = normal_f32(11, 640);
        for dq in [false, true] {
            let t = Nf4Tensor::quantize(&w, 10, 64, dq).unwrap();
            let absmax = t.absmax().dequantize();
            let out = t.dequantize();
            for (i, &v) in out.iter().enumerate() {
                assert_eq!(v, LEVELS[usize::from(t.code(i))] * absmax[i / BLOCK]);
            }
            let bf = t.dequantize_bf16();
            let hf = t.dequantize_f16();
            for i in 0..out.len() {
                assert!(
                    (f64::from(bf[i].to_f32()) - f64::from(out[i])).abs()
                        <= f64::from(out[i]).abs() / 256.0
                );
                assert!(
                    (f64::from(hf[i].to_f32()) - f64::from(out[i])).abs()
                        <= f64::from(out[i]).abs() / 2048.0 + 1e-7
                );
            }
        }
    }

    #[test]
    fn double_quant_error_is_small_against_float64() {
        // 300 blocks: two second-level blocks (256 + 44).
        let absmax: Vec<f32> = normal_f32(3, 300).iter().map(|v| 0.5 + v.abs()).collect();
        let dq = DoubleQuantAbsmax::quantize(&absmax).unwrap();
        assert_eq!(dq.scales().len(), 2);
        let mean = absmax.iter().map(|&v| f64::from(v)).sum::<f64>() / 300.0;
        assert!((f64::from(dq.offset()) - mean).abs() < 1e-6);
        for (b, chunk) in absmax.chunks(ABSMAX_BLOCK).enumerate() {
            let scale = chunk
                .iter()
                .map(|&v| (f64::from(v) - mean).abs())
                .fold(0.0, f64::max);
            assert!((f64::from(dq.scales()[b]) - scale).abs() < 1e-6);
        }
        // The dynamic map's spacing is at most ~1.4% of full scale near 1: the error is at most half of it.
        for (i, (&a, r)) in absmax.iter().zip(dq.dequantize()).enumerate() {
            let scale = f64::from(dq.scales()[i / ABSMAX_BLOCK]);
            assert!(
                (f64::from(a) - f64::from(r)).abs() <= 0.0071 * scale + 1e-6,
                "block {i}: {a} vs {r}"
            );
        }
    }

    /// The expected NF4 mean squared error per element on N(0, 1) weights in blocks of 64, from the levels by
    /// numerical integration: the block absmax M is the largest of 64 |N(0, 1)| (density
    /// `64 * 2 phi(m) * G(m)^63`, `G(m) = P(|X| <= m)`), the element at the absmax is exact, and the other 63 are
    /// N(0, 1) conditioned on |x| <= M, each rounded to `M * LEVELS[nearest]`.
    fn expected_nf4_mse() -> f64 {
        let levels: Vec<f64> = LEVELS.iter().map(|&v| f64::from(v)).collect();
        let thresholds: Vec<f64> = THRESHOLDS.iter().map(|&v| f64::from(v)).collect();
        // Inner integral: E[(x - M q(x/M))^2 ; |x| <= M], exactly piecewise by Simpson on each level's interval.
        let inner = |m: f64| -> f64 {
            let mut edges = vec![-1.0];
            edges.extend(&thresholds);
            edges.push(1.0);
            let mut total = 0.0;
            for c in 0..16 {
                let (a, b) = (edges[c] * m, edges[c + 1] * m);
                let n = 64;
                let h = (b - a) / n as f64;
                let f = |x: f64| (x - m * levels[c]).powi(2) * phi(x);
                let mut s = f(a) + f(b);
                for k in 1..n {
                    s += f(a + k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
                }
                total += s * h / 3.0;
            }
            total
        };
        let (lo, hi, n) = (0.5, 6.0, 1100);
        let h = (hi - lo) / n as f64;
        let g = |m: f64| 2.0 * normal_cdf(m) - 1.0;
        let density = |m: f64| 64.0 * 2.0 * phi(m) * g(m).powi(63);
        let integrand = |m: f64| density(m) * inner(m) / g(m);
        let mut s = integrand(lo) + integrand(hi);
        for k in 1..n {
            s += integrand(lo + k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
        }
        (63.0 / 64.0) * s * h / 3.0
    }

    #[test]
    fn round_trip_error_on_normal_weights_matches_the_nf4_expectation() {
        let expected = expected_nf4_mse();
        assert!(
            expected > 0.005 && expected < 0.01,
            "expected MSE {expected}"
        );
        let w = normal_f32(2024, 64 * 4096);
        for dq in [false, true] {
            let t = Nf4Tensor::quantize(&w, 4096, 64, dq).unwrap();
            let out = t.dequantize();
            let mse = w
                .iter()
                .zip(&out)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
                / w.len() as f64;
            // 262,144 samples: the relative standard error of the mean is well under 1%; double quantisation
            // moves each absmax by at most ~0.7% of the centred range.
            let tolerance = if dq { 0.04 } else { 0.02 };
            assert!(
                (mse / expected - 1.0).abs() < tolerance,
                "dq={dq}: measured {mse}, expected {expected}"
            );
        }
    }

    #[test]
    fn quantize_is_deterministic_and_serialisation_round_trips() {
        let w = normal_f32(5, 33 * 77);
        for dq in [false, true] {
            let a = Nf4Tensor::quantize(&w, 33, 77, dq).unwrap();
            let b = Nf4Tensor::quantize(&w, 33, 77, dq).unwrap();
            assert_eq!(a, b);
            let bytes = a.to_bytes();
            assert_eq!(Nf4Tensor::from_bytes(&bytes).unwrap(), a);
            assert!(Nf4Tensor::from_bytes(&bytes[..bytes.len() - 1]).is_err());
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(Nf4Tensor::from_bytes(&extra).is_err());
            let mut bad = bytes.clone();
            bad[0] = b'X';
            assert!(
                Nf4Tensor::from_bytes(&bad)
                    .unwrap_err()
                    .to_string()
                    .contains("magic")
            );
        }
        let t = Nf4Tensor::quantize(&w, 33, 77, true).unwrap();
        assert_eq!(t.bytes(), 33 * 77 / 2 + 1 + 40 + 4 + 4);
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let err = Nf4Tensor::quantize(&[1.0; 10], 3, 3, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("weights") && err.contains("expected 9"),
            "{err}"
        );
        assert!(Nf4Tensor::quantize(&[], 0, 3, false).is_err());
        let err = Nf4Tensor::quantize(&[1.0, f32::NAN], 1, 2, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weights[1]"), "{err}");
        let err =
            Nf4Tensor::from_parts(1, 64, vec![0; 31], Nf4Absmax::Plain(vec![1.0])).unwrap_err();
        assert!(err.to_string().contains("codes"));
        let err = DoubleQuantAbsmax::from_parts(vec![0; 300], vec![1.0], 0.0).unwrap_err();
        assert!(err.to_string().contains("expected 2"));
    }
}
