//! Bf16 matrix products against frozen weights: `C = A · B` with `B` packed once into bf16 panels.
//!
//! Layout: `B [k, n]` is held as panels of 32 columns. For each k pair `q`, panel `p` stores 32 `u32`
//! words (two 64-byte lines), word `c` being `bf16(B[2q][32p + c]) | bf16(B[2q + 1][32p + c]) << 16`; k is padded
//! to even and n to a multiple of 32 with zeros. Each call converts `A` to a row-major bf16 copy whose rows are
//! the same pairs as `u32` words, so one broadcast word of `A` times one line of `B` is one `vdpbf16ps` step.
//!
//! Numerics: inputs are rounded to bf16 (nearest even, f32 denormals to signed zero, as `vcvtne2ps2bf16`
//! does). Products of two bf16 values are exact in f32; they are summed into one f32 accumulator per element of
//! `C`, pair by pair in ascending k (the instruction flushes denormal sums to zero). That order depends neither
//! on the number of threads nor on how many rows a call has, so a row of `C` has the same bits whether it is
//! computed alone or within a batch.

use rayon::prelude::*;
use std::fmt;
use std::ops::Range;

/// Columns of `B` per panel: two 16-lane f32 accumulators per row of a tile.
const NR: usize = 32;

/// Products with fewer multiply-adds (`m * n * k`, padded) and less packed `B` than these run on the calling
/// thread (waking a second thread costs more than it saves).
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// One 64-byte line of packed `B`: 16 pairs of bf16 values, aligned so vector loads never split a cache line.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// Whether this CPU runs the AVX-512 BF16 kernel (`avx512f` + `avx512bf16` + `avx512bw`, detected at run time).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds `x` to bf16 as `vcvtne2ps2bf16` does: nearest, ties to even; infinities stay, NaN stays NaN (made
/// quiet, sign kept), f32 denormals become zero of the same sign, and values past the largest bf16 become infinity.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let top = if x.is_nan() {
        (bits >> 16) | 0x0040
    } else if bits & 0x7f80_0000 == 0 {
        (bits >> 16) & 0x8000
    } else {
        // Cannot overflow: the largest finite `bits` is 0xff7f_ffff.
        (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
    };
    top as u16
}

/// The f32 value of the bf16 bits `h` (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Two bf16 values in one word, `lo` in the low half: the layout `vdpbf16ps` reads as one k pair.
fn pair_word(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | u32::from(to_bf16(hi)) << 16
}

/// A matrix `B [k, n]` packed for `matmul`: bf16 values in panels of NR columns, k in pairs (zero-padded).
#[derive(Clone)]
pub struct PackedB {
    /// Rows of `B` (the inner dimension of the product).
    k: usize,
    /// Columns of `B`.
    n: usize,
    /// `ceil(k / 2)`.
    pairs: usize,
    /// Panels: `ceil(n / NR)`, each `2 * pairs` lines.
    lines: Vec<Line>,
}

impl fmt::Debug for PackedB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// Packs `B = W^T` for a row-major `W [out, in]` (so `k = in`, `n = out`): the forward `Y = X W^T`.
    pub fn transposed(w: &[f32], out: usize, inp: usize) -> PackedB {
        assert_eq!(
            w.len(),
            out * inp,
            "bf16 pack: weight length is not out * in"
        );
        Self::pack(inp, out, |panel, cols| {
            pack_columns(panel, &w[cols.start * inp..cols.end * inp], inp)
        })
    }

    /// Packs `B = W` for a row-major `W [out, in]` (so `k = out`, `n = in`): the backward `dX = dY W`.
    pub fn plain(w: &[f32], out: usize, inp: usize) -> PackedB {
        assert_eq!(
            w.len(),
            out * inp,
            "bf16 pack: weight length is not out * in"
        );
        Self::pack(out, inp, |panel, cols| pack_rows(panel, w, inp, cols))
    }

    /// Rows of `B` (the inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B` (the columns of the product).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    /// Packs `B [k, n]`, one rayon task per panel: `fill(panel, cols)` writes the `2 * ceil(k / 2)` lines of the
    /// panel of columns `cols` (the lines start zeroed).
    fn pack(k: usize, n: usize, fill: impl Fn(&mut [Line], Range<usize>) + Sync) -> PackedB {
        let pairs = k.div_ceil(2);
        let mut lines = vec![Line([0; 16]); n.div_ceil(NR) * 2 * pairs];
        if pairs > 0 {
            lines
                .par_chunks_mut(2 * pairs)
                .enumerate()
                .for_each(|(p, panel)| fill(panel, p * NR..(p * NR + NR).min(n)));
        }
        PackedB { k, n, pairs, lines }
    }

    /// Index of the first line of panel `p` at k pair `q`.
    fn line_index(&self, p: usize, q: usize) -> usize {
        (p * self.pairs + q) * 2
    }

    /// The pair word of column `j` at k pair `q`.
    fn word(&self, q: usize, j: usize) -> u32 {
        let line = &self.lines[self.line_index(j / NR, q) + (j % NR) / 16];
        line.0[j % 16]
    }

    /// `B [k, n]` as row-major f32: the packed bf16 values, exactly.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for q in 0..self.pairs {
            for j in 0..self.n {
                let word = self.word(q, j);
                out[2 * q * self.n + j] = from_bf16(word as u16);
                if 2 * q + 1 < self.k {
                    out[(2 * q + 1) * self.n + j] = from_bf16((word >> 16) as u16);
                }
            }
        }
        out
    }
}

/// Fills one panel from `rows`, the panel's columns of `B` as consecutive rows of length `k` (rows of a
/// row-major `W [out, k]`): each row becomes one column of pair words.
fn pack_columns(panel: &mut [Line], rows: &[f32], k: usize) {
    for (c, row) in rows.chunks_exact(k).enumerate() {
        for (pair, values) in panel.chunks_exact_mut(2).zip(row.chunks(2)) {
            pair[c / 16].0[c % 16] = pair_word(values[0], values.get(1).copied().unwrap_or(0.0));
        }
    }
}

/// Fills one panel with columns `cols` of a row-major `B = w [k, n]`: each pair of rows becomes one pair of lines.
fn pack_rows(panel: &mut [Line], w: &[f32], n: usize, cols: Range<usize>) {
    let k = w.len() / n;
    for (q, pair) in panel.chunks_exact_mut(2).enumerate() {
        let lo = &w[2 * q * n..][cols.clone()];
        let words = pair.iter_mut().flat_map(|line| line.0.iter_mut());
        if 2 * q + 1 < k {
            let hi = &w[(2 * q + 1) * n..][cols.clone()];
            for ((word, &l), &h) in words.zip(lo).zip(hi) {
                *word = pair_word(l, h);
            }
        } else {
            for (word, &l) in words.zip(lo) {
                *word = pair_word(l, 0.0);
            }
        }
    }
}

/// Panics unless `a` is `[m, b.k()]` and `c` is `[m, b.n()]`.
fn check_shapes(a: &[f32], m: usize, b: &PackedB, c: &[f32]) {
    assert_eq!(a.len(), m * b.k, "bf16 matmul: A is not [m, k]");
    assert_eq!(c.len(), m * b.n, "bf16 matmul: C is not [m, n]");
}

/// `C [m, n] = A [m, k] · B` with `A` row-major f32 (rounded to bf16, nearest even) and `C` row-major f32,
/// overwritten. Panics only if slice lengths do not match `m`, `b.k()`, `b.n()` (callers check shapes).
/// Splits work across rayon's current thread pool; every element of C is computed by one thread in a fixed
/// order, so the bits do not depend on the number of threads.
pub fn matmul(a: &[f32], m: usize, b: &PackedB, c: &mut [f32]) {
    check_shapes(a, m, b, c);
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY: the CPU has avx512f, avx512bf16 and avx512bw (checked just above); shapes are checked.
        unsafe { simd::matmul(a, m, b, c) };
        return;
    }
    matmul_reference(a, m, b, c);
}

/// The same product computed without SIMD: f64 sums of the bf16-rounded inputs, rounded to f32 at the end.
/// Used by tests as the reference and as the fallback where `simd_available()` is false.
pub fn matmul_reference(a: &[f32], m: usize, b: &PackedB, c: &mut [f32]) {
    check_shapes(a, m, b, c);
    if m == 0 || b.n == 0 {
        return;
    }
    let row = |(i, out): (usize, &mut [f32])| reference_row(&a[i * b.k..(i + 1) * b.k], b, out);
    if m * b.n * b.k >= PARALLEL_MIN_MACS {
        c.par_chunks_mut(b.n).enumerate().for_each(row);
    } else {
        c.chunks_mut(b.n).enumerate().for_each(row);
    }
}

/// One row of the reference product: f64 sums over k in ascending order, 32 columns at a time.
fn reference_row(a: &[f32], b: &PackedB, out: &mut [f32]) {
    let pairs: Vec<[f64; 2]> = a
        .chunks(2)
        .map(|p| [p[0], p.get(1).copied().unwrap_or(0.0)].map(|x| f64::from(from_bf16(to_bf16(x)))))
        .collect();
    for (p, dst) in out.chunks_mut(NR).enumerate() {
        let mut acc = [0f64; NR];
        for (q, [a0, a1]) in pairs.iter().enumerate() {
            let first = b.line_index(p, q);
            let words = b.lines[first].0.iter().chain(&b.lines[first + 1].0);
            for (s, &w) in acc.iter_mut().zip(words) {
                *s += a0 * f64::from(from_bf16(w as u16));
                *s += a1 * f64::from(from_bf16((w >> 16) as u16));
            }
        }
        for (o, s) in dst.iter_mut().zip(acc) {
            *o = s as f32;
        }
    }
}

/// The AVX-512 BF16 kernel and its drivers.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Line, NR, PARALLEL_MIN_MACS, PackedB};
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    /// Rows of `A` per full microtile (`MR` x 2 accumulators; the rest of the 32 vector registers hold `B`).
    pub(super) const MR: usize = 12;

    /// Largest K block, in k pairs: one panel's block of `B` (at most `KC` x 128 bytes = 256 KiB) stays in L2 while
    /// every row block of the task streams past it. Every k up to 4096 is one block: on Zen 4, blocks of 96-512
    /// pairs (`B` in L1) measured 2-10% slower for the model's shapes, the re-reads of `C` costing more than the
    /// L1 residency of `B` gains (a whole panel of k <= 1536 is at most 96 KiB and stays in L2 anyway).
    pub(super) const KC: usize = 2048;

    /// Tasks per thread when the work is split (work stealing evens out the rest).
    const TASKS_PER_THREAD: usize = 4;

    /// See [`PARALLEL_MIN_MACS`]: with less packed `B` than this (and few multiply-adds), a product stays on one
    /// thread.
    const PARALLEL_MIN_BYTES: usize = 1 << 20;

    /// Splits the K dimension (`pairs` k pairs) into near-equal blocks of at most [`KC`] pairs.
    pub(super) fn k_blocks(pairs: usize) -> impl Iterator<Item = Range<usize>> {
        let size = pairs.div_ceil(pairs.div_ceil(KC).max(1)).max(1);
        (0..pairs)
            .step_by(size)
            .map(move |q| q..(q + size).min(pairs))
    }

    /// How a product is cut into tasks: a grid of `row_parts` x `panel_parts` rectangles of near-equal size.
    ///
    /// The cut only decides which thread computes an element, never how: the bits are the same for any plan.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct Plan {
        /// Rows of `C`.
        m: usize,
        /// Panels of `C` (`ceil(n / NR)`).
        panels: usize,
        /// Panels per unit of the panel split (the few-row kernels take 4 or 2 panels at a time).
        unit: usize,
        /// Parts the row blocks are split into.
        row_parts: usize,
        /// Parts the panel units are split into.
        panel_parts: usize,
    }

    impl Plan {
        /// Cuts `m` rows by `panels` panels over `pairs` k pairs for `threads` threads: by panels first (each task
        /// then reads its part of `B` once), by rows too when there are fewer panels than tasks wanted. Small
        /// products (under [`PARALLEL_MIN_MACS`] multiply-adds and [`PARALLEL_MIN_BYTES`] of `B`) stay whole.
        pub(super) fn new(m: usize, panels: usize, pairs: usize, threads: usize) -> Plan {
            let unit = match m {
                1 | 2 => 4,
                3..=5 => 2,
                _ => 1,
            };
            let mut plan = Plan {
                m,
                panels,
                unit,
                row_parts: 1,
                panel_parts: 1,
            };
            let macs = m * panels * NR * pairs * 2;
            let b_bytes = panels * pairs * NR * 4;
            if threads <= 1 || (macs < PARALLEL_MIN_MACS && b_bytes < PARALLEL_MIN_BYTES) {
                return plan;
            }
            let wanted = threads * TASKS_PER_THREAD;
            let units = panels.div_ceil(unit);
            let row_blocks = m.div_ceil(MR);
            plan.panel_parts = units.min(wanted);
            if units < wanted {
                plan.row_parts = wanted.div_ceil(units).min(row_blocks);
            }
            plan
        }

        /// Number of tasks.
        pub(super) fn count(&self) -> usize {
            self.row_parts * self.panel_parts
        }

        /// Rows and panels of task `t` (< `count()`).
        pub(super) fn task(&self, t: usize) -> (Range<usize>, Range<usize>) {
            let (i, j) = (t / self.panel_parts, t % self.panel_parts);
            let blocks = part(self.m.div_ceil(MR), self.row_parts, i);
            let units = part(self.panels.div_ceil(self.unit), self.panel_parts, j);
            let rows = (blocks.start * MR).min(self.m)..(blocks.end * MR).min(self.m);
            let panels = (units.start * self.unit).min(self.panels)
                ..(units.end * self.unit).min(self.panels);
            (rows, panels)
        }
    }

    /// Part `i` of `parts` near-equal parts of `0..len`.
    fn part(len: usize, parts: usize, i: usize) -> Range<usize> {
        len * i / parts..len * (i + 1) / parts
    }

    /// Below this many elements of `A` the bf16 conversion runs on the calling thread.
    const PARALLEL_MIN_CONVERT: usize = 1 << 16;

    /// `*mut f32` that may cross threads: tasks write disjoint rectangles of `C`.
    #[derive(Clone, Copy)]
    struct SharedOut(*mut f32);

    // SAFETY: the pointer is only used by `run_task`, and tasks write disjoint rectangles of `C`, which outlives
    // the parallel loop that uses it.
    unsafe impl Send for SharedOut {}
    // SAFETY: as for `Send`: no two threads touch the same element.
    unsafe impl Sync for SharedOut {}

    /// One product: the bf16 copy of `A`, the packed `B`, and where `C` is.
    struct Job<'a> {
        /// `A` as bf16 pairs: `m` rows of [`a_stride`] words.
        a: &'a [u32],
        /// The packed `B`.
        b: &'a PackedB,
        /// `C [m, n]`, row-major.
        c: SharedOut,
        /// Rows of `A` and `C`.
        m: usize,
    }

    /// One call of the microkernel: `R` rows of `A` times `P` consecutive panels over a K block.
    #[derive(Clone, Copy)]
    struct Tile {
        /// First row's pair word at the block's first k pair.
        a: *const u32,
        /// Words between rows of `A`.
        lda: usize,
        /// First panel's line at the block's first k pair (64-byte aligned).
        b: *const u32,
        /// Words between panels of `B`.
        panel_words: usize,
        /// K pairs in the block.
        pairs: usize,
        /// `C` at the tile's first row and column.
        c: *mut f32,
        /// Floats between rows of `C`.
        ldc: usize,
        /// Valid columns (1..=32) of the tile's last panel; the others are full.
        last_cols: usize,
        /// Adds to `C` (later K blocks) instead of overwriting it (the first).
        accumulate: bool,
    }

    /// `C = A · B` for shapes already checked.
    ///
    /// # Safety
    /// The CPU must support avx512f, avx512bf16 and avx512bw.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn matmul(a: &[f32], m: usize, b: &PackedB, c: &mut [f32]) {
        if m == 0 || b.n == 0 {
            return;
        }
        if b.pairs == 0 {
            c.fill(0.0);
            return;
        }
        // SAFETY: the CPU has the features (this function's contract).
        let a = unsafe { convert(a, m, b.k) };
        let plan = Plan::new(m, b.n.div_ceil(NR), b.pairs, rayon::current_num_threads());
        let job = Job {
            a: &a,
            b,
            c: SharedOut(c.as_mut_ptr()),
            m,
        };
        let run = |t: usize| {
            let (rows, cols) = plan.task(t);
            // SAFETY: the CPU has the features (this function's contract); tasks cover disjoint rectangles of
            // `C`, which is `[m, n]` (checked by the caller) and borrowed mutably for this whole call.
            unsafe { run_task(&job, rows, cols) };
        };
        match plan.count() {
            1 => run(0),
            tasks => (0..tasks).into_par_iter().for_each(run),
        }
    }

    /// Rounds `A [m, k]` to bf16 pairs: rows of [`a_stride`] words, the first `ceil(k / 2)` of them the pairs
    /// (an odd k padded with zero), the rest zero.
    ///
    /// # Safety
    /// The CPU must support avx512f, avx512bf16 and avx512bw.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn convert(a: &[f32], m: usize, k: usize) -> Vec<u32> {
        let pairs = k.div_ceil(2);
        let lda = a_stride(pairs);
        let mut out = Vec::with_capacity(m * lda);
        let row = |(src, dst): (&[f32], &mut [MaybeUninit<u32>])| {
            let (words, pad) = dst.split_at_mut(pairs);
            // SAFETY: the CPU has the features (this function's contract).
            unsafe { convert_row(src, words) };
            pad.fill(MaybeUninit::new(0));
        };
        let rows = &mut out.spare_capacity_mut()[..m * lda];
        if m * k >= PARALLEL_MIN_CONVERT && rayon::current_num_threads() > 1 {
            let min_rows = PARALLEL_MIN_CONVERT.div_ceil(k);
            a.par_chunks(k)
                .zip(rows.par_chunks_mut(lda))
                .with_min_len(min_rows)
                .for_each(row);
        } else {
            a.chunks(k).zip(rows.chunks_mut(lda)).for_each(row);
        }
        // SAFETY: each of the `m` rows of `lda` words was written just above (its pairs, then its padding).
        unsafe { out.set_len(m * lda) };
        out
    }

    /// Rounds one row `src` to bf16 pairs, writing all of `dst` (`ceil(src.len() / 2)` words), 32 values per
    /// step.
    ///
    /// # Safety
    /// The CPU must support avx512f, avx512bf16 and avx512bw.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn convert_row(src: &[f32], dst: &mut [MaybeUninit<u32>]) {
        assert_eq!(
            dst.len(),
            src.len().div_ceil(2),
            "bf16 convert: row lengths"
        );
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr().cast::<u32>());
        let full = src.len() / 32;
        for i in 0..full {
            // SAFETY: 32 * i + 32 <= src.len() and 16 * i + 16 <= dst.len().
            unsafe {
                let lo = _mm512_loadu_ps(s.add(32 * i));
                let hi = _mm512_loadu_ps(s.add(32 * i + 16));
                let v = bits(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(d.add(16 * i).cast(), v);
            }
        }
        let rest = src.len() - 32 * full;
        if rest > 0 {
            let (m_lo, m_hi) = (lanes(rest), lanes(rest.saturating_sub(16)));
            // SAFETY: the masks enable only the `rest` floats and `ceil(rest / 2)` words left in the slices;
            // disabled lanes are not accessed, and `wrapping_add` keeps the address computation defined.
            unsafe {
                let lo = _mm512_maskz_loadu_ps(m_lo, s.add(32 * full));
                let hi = _mm512_maskz_loadu_ps(m_hi, s.add(32 * full).wrapping_add(16));
                let v = bits(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(d.add(16 * full).cast(), lanes(rest.div_ceil(2)), v);
            }
        }
    }

    /// Words between rows of the bf16 copy of `A`: `pairs` rounded up to whole 64-byte lines, and to an odd
    /// number of lines, so the rows of a tile fall in different L1 sets however large k is.
    fn a_stride(pairs: usize) -> usize {
        let lines = pairs.div_ceil(16);
        (lines + 1 - lines % 2) * 16
    }

    /// Mask of the first `n` (at most 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// The bits of a bf16 vector as integers.
    #[target_feature(enable = "avx512f")]
    fn bits(v: __m512bh) -> __m512i {
        // SAFETY: both are plain 64-byte vectors; every bit pattern is valid for each.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
    }

    /// Integers reinterpreted as 32 bf16 values.
    #[target_feature(enable = "avx512f")]
    fn bf16s(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 64-byte vectors; every bit pattern is valid for each.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Computes rows `rows` x panels `cols` of `C`: K block by K block, every full row block of [`MR`] rows
    /// against each panel, then the remaining rows.
    ///
    /// # Safety
    /// The CPU must support avx512f, avx512bf16 and avx512bw; `rows` and `cols` lie within the job's `C`, and
    /// no other thread touches that rectangle meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn run_task(job: &Job<'_>, rows: Range<usize>, cols: Range<usize>) {
        debug_assert!(rows.end <= job.m);
        let full_end = rows.start + (rows.len() / MR) * MR;
        let rest = rows.end - full_end;
        for block in k_blocks(job.b.pairs) {
            for p in cols.clone() {
                for r in (rows.start..full_end).step_by(MR) {
                    // SAFETY: as this function's contract; the tile lies within the rectangle.
                    unsafe { tile::<MR, 1>(job.tile(r, p, &block, 1)) };
                }
            }
            if rest > 0 {
                // SAFETY: as this function's contract; `rest` < MR rows from `full_end` lie in the rectangle.
                unsafe { remainder(job, full_end, rest, cols.clone(), &block) };
            }
        }
    }

    impl Job<'_> {
        /// The tile of rows `r..` (as many as the kernel takes) by panels `p..p + np` over k pairs `block`.
        fn tile(&self, r: usize, p: usize, block: &Range<usize>, np: usize) -> Tile {
            let b = self.b;
            let pairs = b.pairs;
            let lda = a_stride(pairs);
            Tile {
                a: self.a[r * lda + block.start..].as_ptr(),
                lda,
                b: b.lines[b.line_index(p, block.start)..].as_ptr().cast(),
                panel_words: 2 * pairs * (std::mem::size_of::<Line>() / 4),
                pairs: block.len(),
                c: self.c.0.wrapping_add(r * b.n + p * NR),
                ldc: b.n,
                last_cols: (b.n - (p + np - 1) * NR).min(NR),
                accumulate: block.start > 0,
            }
        }
    }

    /// The `rest` (< [`MR`]) rows from `r` against panels `cols`, with a kernel that takes several panels at a
    /// time when there are few rows (enough independent accumulators to hide the instruction's latency).
    ///
    /// # Safety
    /// As [`run_task`], for rows `r..r + rest`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn remainder(
        job: &Job<'_>,
        r: usize,
        rest: usize,
        cols: Range<usize>,
        block: &Range<usize>,
    ) {
        // SAFETY (each arm): forwarded from this function's contract.
        unsafe {
            match rest {
                1 => panels::<1, 4>(job, r, cols, block),
                2 => panels::<2, 4>(job, r, cols, block),
                3 => panels::<3, 2>(job, r, cols, block),
                4 => panels::<4, 2>(job, r, cols, block),
                5 => panels::<5, 2>(job, r, cols, block),
                6 => panels::<6, 1>(job, r, cols, block),
                7 => panels::<7, 1>(job, r, cols, block),
                8 => panels::<8, 1>(job, r, cols, block),
                9 => panels::<9, 1>(job, r, cols, block),
                10 => panels::<10, 1>(job, r, cols, block),
                11 => panels::<11, 1>(job, r, cols, block),
                _ => unreachable!("remainder of {rest} rows"),
            }
        }
    }

    /// `R` rows from `r` against panels `cols`, `P` panels per tile, then pairs, then single panels.
    ///
    /// # Safety
    /// As [`run_task`], for rows `r..r + R`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn panels<const R: usize, const P: usize>(
        job: &Job<'_>,
        r: usize,
        cols: Range<usize>,
        block: &Range<usize>,
    ) {
        let mut p = cols.start;
        // SAFETY (each call): forwarded from this function's contract; each tile's panels lie in `cols`.
        unsafe {
            while cols.end - p >= P {
                tile::<R, P>(job.tile(r, p, block, P));
                p += P;
            }
            while P > 2 && cols.end - p >= 2 {
                tile::<R, 2>(job.tile(r, p, block, 2));
                p += 2;
            }
            while p < cols.end {
                tile::<R, 1>(job.tile(r, p, block, 1));
                p += 1;
            }
        }
    }

    /// The microkernel: `R` rows x `P` panels of `C` (+)= `A` block x `B` block, `2 * R * P` f32 accumulators.
    /// Per k pair: two aligned loads of `B` per panel, one broadcast pair of `A` per row, one `vdpbf16ps` per
    /// accumulator; stores are masked to the valid columns of the last panel.
    ///
    /// # Safety
    /// The CPU must support avx512f, avx512bf16 and avx512bw; `t` must describe memory that is readable (`A`:
    /// `R` rows of `t.pairs` words at stride `t.lda`; `B`: `P` panels of `t.pairs` pairs at stride
    /// `t.panel_words`) and writable (`C`: `R` rows of the valid columns) and not written by anyone else.
    ///
    /// Out of line, so each instantiation gets the registers to itself: inlined into the drivers, the 12-row
    /// tile spilled accumulators to the stack and ran ~40% slower.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn tile<const R: usize, const P: usize>(t: Tile) {
        let mut masks = [[0xffff as __mmask16; 2]; P];
        masks[P - 1] = [lanes(t.last_cols), lanes(t.last_cols.saturating_sub(16))];
        let out = |r: usize, p: usize, h: usize| t.c.wrapping_add(r * t.ldc + p * NR + h * 16);
        let mut acc = [[[_mm512_setzero_ps(); 2]; P]; R];
        if t.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (p, halves) in row.iter_mut().enumerate() {
                    for (h, v) in halves.iter_mut().enumerate() {
                        // SAFETY: the mask enables only valid columns of row `r`, which the contract makes
                        // readable; disabled lanes are not accessed.
                        *v = unsafe { _mm512_maskz_loadu_ps(masks[p][h], out(r, p, h)) };
                    }
                }
            }
        }
        let zero = bf16s(_mm512_setzero_si512());
        for q in 0..t.pairs {
            let mut b = [[zero; 2]; P];
            for (p, halves) in b.iter_mut().enumerate() {
                for (h, v) in halves.iter_mut().enumerate() {
                    // SAFETY: pair `q` < `t.pairs` of panel `p` < P is readable (contract), and every line is
                    // 64-byte aligned (`Line`'s alignment; offsets are multiples of 16 words).
                    *v = bf16s(unsafe {
                        _mm512_load_si512(t.b.add(p * t.panel_words + q * NR + h * 16).cast())
                    });
                }
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: word `q` of row `r` < R is readable (contract).
                let word = unsafe { t.a.add(r * t.lda + q).read() };
                let a = bf16s(_mm512_set1_epi32(word as i32));
                for (p, halves) in row.iter_mut().enumerate() {
                    for (h, v) in halves.iter_mut().enumerate() {
                        *v = _mm512_dpbf16_ps(*v, a, b[p][h]);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (p, halves) in row.iter().enumerate() {
                for (h, v) in halves.iter().enumerate() {
                    // SAFETY: the mask enables only valid columns of row `r`, which the contract makes
                    // writable; disabled lanes are not accessed.
                    unsafe { _mm512_mask_storeu_ps(out(r, p, h), masks[p][h], *v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) times a power of two in [2^-4, 2^4) (a spread of magnitudes).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..len)
            .map(|_| {
                let r = next();
                let unit = (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                unit * f32::powi(2.0, (r % 8) as i32 - 4)
            })
            .collect()
    }

    /// `x` rounded to bf16, as f64.
    fn bf(x: f32) -> f64 {
        f64::from(from_bf16(to_bf16(x)))
    }

    /// `(f64 sum, f64 sum of magnitudes)` of `a[i] . B[:, j]` on bf16-rounded inputs, ascending k, where
    /// `b(kk, j)` is `B`'s element.
    fn naive(
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        b: &dyn Fn(usize, usize) -> f32,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut mag) = (0f64, 0f64);
                for kk in 0..k {
                    let p = bf(a[i * k + kk]) * bf(b(kk, j));
                    sum += p;
                    mag += p.abs();
                }
                out.push((sum, mag));
            }
        }
        out
    }

    /// Whether the SIMD kernel can be checked here; prints a note when it cannot.
    fn simd_or_note(test: &str) -> bool {
        let ok = simd_available();
        if !ok {
            eprintln!(
                "{test}: no avx512f + avx512bf16 + avx512bw on this CPU; SIMD checks skipped"
            );
        }
        ok
    }

    /// Runs `f` on a rayon pool of `threads` threads.
    fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Checks `matmul` and `matmul_reference` for `A [m, k]` and both packings of a random weight.
    ///
    /// `matmul_reference` must equal the f64 sum over bf16-rounded inputs exactly (same order). `matmul` sums
    /// the exact bf16 products in f32: each of at most `k` additions rounds a partial sum bounded by
    /// `S = sum |a_i b_i|` with relative error at most `u = 2^-24`, and flushing a denormal sum loses at most
    /// 2^-126, so `|matmul - exact| <= k u S / (1 - k u) + k 2^-126`; the reference adds at most `u S`. Bound
    /// used: `(1.01 k + 2) u S + k 2^-126` (valid while `k u < 0.01`).
    fn check_shape(m: usize, k: usize, n: usize) {
        let a = values(m * k, (m * 1_000_003 + k * 1009 + n) as u64);
        let w = values(n * k, (k * 7919 + n) as u64);
        // Forward: `w` as W [n, k], B = W^T. Backward: `w` as W [k, n], B = W.
        check_packed(
            "transposed",
            &a,
            m,
            &PackedB::transposed(&w, n, k),
            &|kk, j| w[j * k + kk],
        );
        check_packed("plain", &a, m, &PackedB::plain(&w, k, n), &|kk, j| {
            w[kk * n + j]
        });
    }

    /// [`check_shape`] for one packing `b` of the matrix whose elements `get(row, col)` gives.
    fn check_packed(
        name: &str,
        a: &[f32],
        m: usize,
        b: &PackedB,
        get: &dyn Fn(usize, usize) -> f32,
    ) {
        let (k, n) = (b.k(), b.n());
        let exact = naive(a, m, k, n, get);
        let mut reference = vec![f32::NAN; m * n];
        matmul_reference(a, m, b, &mut reference);
        for (idx, (&r, &(sum, _))) in reference.iter().zip(&exact).enumerate() {
            assert_eq!(
                r.to_bits(),
                (sum as f32).to_bits(),
                "{name} m={m} k={k} n={n}: reference at {idx}"
            );
        }
        let mut c = vec![f32::NAN; m * n];
        matmul(a, m, b, &mut c);
        let u = f64::powi(2.0, -24);
        for (idx, (&got, &(sum, mag))) in c.iter().zip(&exact).enumerate() {
            let bound = (1.01 * k as f64 + 2.0) * u * mag + k as f64 * f64::powi(2.0, -126);
            let want = reference[idx];
            let err = (f64::from(got) - f64::from(want)).abs();
            assert!(
                err <= bound,
                "{name} m={m} k={k} n={n} at {idx}: got {got}, reference {want}, exact {sum}, bound {bound}"
            );
        }
    }

    #[test]
    fn to_bf16_rounds_to_nearest_even() {
        let one = 1.0f32.to_bits();
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(-2.5), 0xc020);
        // Exactly half way: ties go to the even neighbour.
        assert_eq!(to_bf16(f32::from_bits(one | 0x8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(one | 0x1_8000)), 0x3f82);
        // Just off half way: nearest.
        assert_eq!(to_bf16(f32::from_bits(one | 0x8001)), 0x3f81);
        assert_eq!(to_bf16(f32::from_bits(one | 0x7fff)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0xbf80_8001)), 0xbf81);
        // A carry into the exponent.
        assert_eq!(to_bf16(f32::from_bits(0x3fff_ff00)), 0x4000);
        assert_eq!(from_bf16(0x4049), 3.140625);
        assert_eq!(to_bf16(std::f32::consts::PI), 0x4049);
    }

    #[test]
    fn to_bf16_special_values() {
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::NEG_INFINITY), 0xff80);
        assert_eq!(to_bf16(0.0), 0x0000);
        assert_eq!(to_bf16(-0.0), 0x8000);
        for nan in [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff81_2345),
        ] {
            let h = to_bf16(nan);
            assert!(from_bf16(h).is_nan(), "{:#x} -> {h:#x}", nan.to_bits());
            assert_eq!(
                h & 0x8000,
                ((nan.to_bits() >> 16) as u16) & 0x8000,
                "sign of {:#x}",
                nan.to_bits()
            );
        }
        // The largest bf16, the largest f32 that rounds to it, and the first that rounds to infinity (a tie
        // whose even neighbour is the infinity).
        assert_eq!(to_bf16(f32::from_bits(0x7f7f_0000)), 0x7f7f);
        assert_eq!(to_bf16(f32::from_bits(0x7f7f_7fff)), 0x7f7f);
        assert_eq!(to_bf16(f32::from_bits(0x7f7f_8000)), 0x7f80);
        assert_eq!(to_bf16(f32::MAX), 0x7f80);
        assert_eq!(to_bf16(-f32::MAX), 0xff80);
        // Smallest normal stays; denormals become zero of their sign (as the instruction does).
        assert_eq!(to_bf16(f32::MIN_POSITIVE), 0x0080);
        assert_eq!(to_bf16(f32::from_bits(0x007f_ffff)), 0x0000);
        assert_eq!(to_bf16(f32::from_bits(0x8000_0001)), 0x8000);
    }

    #[test]
    fn from_bf16_round_trips() {
        for h in 0..=u16::MAX {
            let x = from_bf16(h);
            if x.is_nan() {
                assert!(from_bf16(to_bf16(x)).is_nan());
            } else if h & 0x7f80 == 0 {
                assert_eq!(to_bf16(x), h & 0x8000, "denormal {h:#x}");
            } else {
                assert_eq!(to_bf16(x), h, "{h:#x}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_conversion_matches_to_bf16() {
        if !simd_or_note("simd_conversion_matches_to_bf16") {
            return;
        }
        let mut bits: Vec<u32> = (0..=u32::MAX).step_by(65_521).collect();
        bits.extend([
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffbf_ffff,
        ]);
        bits.extend([
            0x0000_0001,
            0x807f_ffff,
            0x0080_0000,
            0x7f7f_7fff,
            0x7f7f_8000,
            0x7f7f_ffff,
        ]);
        bits.extend([0x3f80_8000, 0x3f81_8000, 0x3f80_8001, 0xbf80_7fff]);
        let all: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        for len in [1, 2, 15, 16, 17, 31, 32, 33, 47, 64, 65, 100, all.len()] {
            for chunk in all.chunks(len) {
                // Two rows of `chunk`: the padding after the pairs must be zero too.
                let a: Vec<f32> = chunk.iter().chain(chunk).copied().collect();
                // SAFETY: the CPU has the features (checked above).
                let got = unsafe { simd::convert(&a, 2, chunk.len()) };
                let stride = got.len() / 2;
                for (r, row) in got.chunks(stride).enumerate() {
                    for (q, &word) in row.iter().enumerate() {
                        let want = match chunk.get(2 * q) {
                            Some(&lo) => {
                                pair_word(lo, chunk.get(2 * q + 1).copied().unwrap_or(0.0))
                            }
                            None => 0,
                        };
                        assert_eq!(
                            word,
                            want,
                            "len {len} row {r} pair {q}: {:?}",
                            chunk.get(2 * q..)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reference_matches_naive_f64_and_simd_within_bound() {
        let simd = simd_or_note("reference_matches_naive_f64_and_simd_within_bound");
        let shapes = [
            (1, 1, 1),
            (1, 576, 576),
            (2, 64, 31),
            (3, 7, 33),
            (4, 65, 64),
            (5, 33, 100),
            (10, 576, 40),
            (11, 31, 1),
            (12, 2, 32),
            (13, 127, 65),
            (24, 3, 97),
            (25, 200, 1000),
            (37, 1, 5),
            (512, 96, 100),
        ];
        for (m, k, n) in shapes {
            check_shape(m, k, n);
        }
        if !simd {
            eprintln!("(the shapes above checked the fallback only)");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn several_k_blocks_accumulate_in_order() {
        use simd::{KC, k_blocks};
        simd_or_note("several_k_blocks_accumulate_in_order");
        // More than two K blocks, the last one short, and an odd k.
        check_shape(13, 4 * KC + 37, 33);
        assert!(k_blocks((4 * KC + 37).div_ceil(2)).count() >= 3);
    }

    #[test]
    fn transposed_matches_plain_of_the_transpose() {
        let (out, inp) = (45, 77);
        let w = values(out * inp, 5);
        let wt: Vec<f32> = (0..inp * out)
            .map(|i| w[(i % out) * inp + i / out])
            .collect();
        let t = PackedB::transposed(&w, out, inp);
        let p = PackedB::plain(&wt, inp, out);
        assert_eq!((t.k(), t.n()), (inp, out));
        assert_eq!((p.k(), p.n()), (inp, out));
        assert!(t.lines == p.lines, "packings differ");
        let a = values(9 * inp, 6);
        let (mut ct, mut cp) = (vec![0f32; 9 * out], vec![0f32; 9 * out]);
        matmul(&a, 9, &t, &mut ct);
        matmul(&a, 9, &p, &mut cp);
        assert_eq!(
            ct.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            cp.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        // Element access: B[kk][j] = W[j][kk].
        for (kk, j) in [(0, 0), (76, 44), (3, 40), (75, 1)] {
            let word = t.word(kk / 2, j);
            let h = if kk % 2 == 0 {
                word as u16
            } else {
                (word >> 16) as u16
            };
            assert_eq!(h, to_bf16(w[j * inp + kk]));
        }
    }

    #[test]
    fn bits_do_not_depend_on_thread_count() {
        let simd = simd_or_note("bits_do_not_depend_on_thread_count");
        // Shapes large enough to be split (checked), including few rows (panels taken 4 or 2 at a time), a
        // row split (fewer panels than tasks) and partial last panels.
        for (m, k, n) in [
            (64usize, 256usize, 300usize),
            (512, 96, 100),
            (3, 2001, 1000),
            (1, 1200, 1000),
            (30, 700, 250),
        ] {
            #[cfg(target_arch = "x86_64")]
            assert!(
                simd::Plan::new(m, n.div_ceil(NR), k.div_ceil(2), 3).count() > 1,
                "m={m} k={k} n={n} is not split"
            );
            let a = values(m * k, 11);
            let b = PackedB::transposed(&values(n * k, 12), n, k);
            let run = |threads| {
                with_threads(threads, || {
                    let mut c = vec![0f32; m * n];
                    matmul(&a, m, &b, &mut c);
                    c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                })
            };
            let one = run(1);
            assert!(one == run(2), "m={m} k={k} n={n}: 1 and 2 threads differ");
            assert!(one == run(3), "m={m} k={k} n={n}: 1 and 3 threads differ");
        }
        if !simd {
            eprintln!("(checked the fallback only)");
        }
    }

    #[test]
    fn a_row_has_the_same_bits_alone_or_in_a_batch() {
        simd_or_note("a_row_has_the_same_bits_alone_or_in_a_batch");
        let (m, k, n) = (29, 300, 200);
        let a = values(m * k, 21);
        let b = PackedB::plain(&values(k * n, 22), k, n);
        let mut all = vec![0f32; m * n];
        matmul(&a, m, &b, &mut all);
        for rows in [1, 2, 3, 5, 10, 13] {
            for start in (0..m).step_by(rows) {
                let end = (start + rows).min(m);
                let mut part = vec![0f32; (end - start) * n];
                matmul(&a[start * k..end * k], end - start, &b, &mut part);
                let want = &all[start * n..end * n];
                assert!(
                    part.iter()
                        .zip(want)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "rows {start}..{end} differ from the batch"
                );
            }
        }
    }

    #[test]
    fn degenerate_shapes() {
        // k = 0: C is zero, overwritten.
        let b = PackedB::transposed(&[], 5, 0);
        assert_eq!((b.k(), b.n(), b.bytes()), (0, 5, 0));
        let mut c = vec![f32::NAN; 3 * 5];
        matmul(&[], 3, &b, &mut c);
        assert!(c.iter().all(|&x| x == 0.0));
        matmul_reference(&[], 3, &b, &mut c);
        assert!(c.iter().all(|&x| x == 0.0));
        // m = 0 and n = 0: nothing to do.
        let b = PackedB::plain(&values(40, 1), 8, 5);
        matmul(&[], 0, &b, &mut []);
        let b = PackedB::plain(&[], 8, 0);
        assert_eq!((b.k(), b.n()), (8, 0));
        matmul(&values(16, 2), 2, &b, &mut []);
        // Sizes: panels of 32 columns, k in pairs, 2 bytes a value.
        let b = PackedB::transposed(&values(33 * 5, 3), 33, 5);
        assert_eq!(b.bytes(), 2 * 3 * 32 * 2 * 2);
        assert!(format!("{b:?}").contains("bytes: 768"));
    }

    #[test]
    fn non_finite_inputs_propagate() {
        let (m, k, n) = (3, 40, 70);
        let mut a = values(m * k, 31);
        a[k + 7] = f32::NAN;
        a[2 * k + 3] = f32::INFINITY;
        let w: Vec<f32> = values(n * k, 32).iter().map(|x| x.abs() + 0.5).collect();
        let b = PackedB::transposed(&w, n, k);
        for f in [matmul, matmul_reference] {
            let mut c = vec![0f32; m * n];
            f(&a, m, &b, &mut c);
            assert!(c[..n].iter().all(|x| x.is_finite()));
            assert!(c[n..2 * n].iter().all(|x| x.is_nan()));
            assert!(c[2 * n..].iter().all(|&x| x == f32::INFINITY));
        }
    }

    #[test]
    #[should_panic(expected = "A is not [m, k]")]
    fn wrong_a_length_panics() {
        let b = PackedB::plain(&values(12, 1), 3, 4);
        matmul(&values(7, 2), 2, &b, &mut [0.0; 8]);
    }

    #[test]
    #[should_panic(expected = "C is not [m, n]")]
    fn wrong_c_length_panics() {
        let b = PackedB::plain(&values(12, 1), 3, 4);
        matmul(&values(6, 2), 2, &b, &mut [0.0; 7]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn plan_covers_every_element_once() {
        use simd::{MR, Plan};
        for (m, panels, pairs) in [
            (1, 1536, 288),
            (3, 18, 768),
            (10, 18, 288),
            (512, 6, 288),
            (512, 18, 96),
            (13, 2, 9000),
        ] {
            for threads in [1, 2, 3, 8] {
                let plan = Plan::new(m, panels, pairs, threads);
                let mut seen = vec![0u8; m * panels];
                for t in 0..plan.count() {
                    let (rows, cols) = plan.task(t);
                    assert!(rows.start % MR == 0 || rows.is_empty());
                    for r in rows {
                        for p in cols.clone() {
                            seen[r * panels + p] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "{plan:?}");
            }
        }
        assert_eq!(Plan::new(512, 18, 288, 1).count(), 1);
        assert!(Plan::new(512, 18, 288, 2).count() >= 2);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn k_blocks_cover_the_pairs_in_order() {
        use simd::{KC, k_blocks};
        for pairs in [1, 2, KC - 1, KC, KC + 1, 3 * KC + 5] {
            let blocks: Vec<_> = k_blocks(pairs).collect();
            assert_eq!(blocks.first().unwrap().start, 0);
            assert_eq!(blocks.last().unwrap().end, pairs);
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
            assert!(blocks.iter().all(|b| !b.is_empty() && b.len() <= KC));
        }
        assert_eq!(k_blocks(0).count(), 0);
    }
}
