//! Dropout keep masks from a counter-based generator, so the CPU and the GPU (`dropout_keep_mask` in
//! `kernels/cuda/ops.cu`) draw the same mask bits from the same `(seed, stream)` without moving a mask between them,
//! and any element of a mask can be computed on its own, in any order.
//!
//! Element `i` of stream `stream` under `seed` is SplitMix64's output number `i + 1` from the state
//! `key = mix64(seed + mix64(stream ^ STREAM_SALT))`, i.e. `mix64(key + (i + 1) * GOLDEN)`. It is kept when its top 32
//! bits are at least `threshold = round(p * 2^32)`, so the keep probability is `1 - p` to within 2^-33. A stream
//! names one use of dropout (a training step, a layer, a site in the layer): [`stream`] packs those.
//!
//! # How a training run names its streams
//!
//! Every engine (the CPU engine in `tandem-worker`, a GPU trainer) names the mask of one LoRA module in one forward
//! with [`training_stream`], the one definition of the naming:
//!
//! ```text
//! stream = (update * 2^16 + micro) * 2^16 + layer * 2^6 + site
//! ```
//!
//! - `update`: the optimizer update the forward belongs to, counted from 0 (below 2^32);
//! - `micro`: the micro-batch within that update (gradient accumulation), from 0 (below 2^16);
//! - `layer`: the block index in the module path, `i` of `model.layers.{i}` (LLaMA) or of `encoder.block.{i}` /
//!   `decoder.block.{i}` (T5) (below 2^10);
//! - `site`: which LoRA module of the block, the fixed number of [`Site`] (below 2^6).
//!
//! [`locate`] reads `(layer, site)` off a Hugging Face module path. Element `i` of the mask belongs to element `i` of
//! the module's input in row-major order (`tokens x in_features`, the padded batch flattened), and a kept element is
//! scaled by `1 / (1 - p)` (inverted dropout). So each micro-batch, layer and module gets its own independent mask,
//! and the numbering depends only on the model's structure, never on thread or call order.

use crate::error::KernelError;

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Mixed into the stream number before it is hashed, so stream 0 under seed s is not the plain SplitMix64 of s.
pub const STREAM_SALT: u64 = 0xD1B5_4A32_D192_ED03;

/// SplitMix64's output function (Stafford's Mix13 variant).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator state of one stream.
pub fn stream_key(seed: u64, stream: u64) -> u64 {
    mix64(seed.wrapping_add(mix64(stream ^ STREAM_SALT)))
}

/// The 64 random bits of element `index` of the stream with state `key`.
pub fn bits_at(key: u64, index: u64) -> u64 {
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The stream number of one use of dropout: training step (48 bits), layer (10 bits), site in the layer (6 bits).
pub fn stream(step: u64, layer: u32, site: u32) -> Result<u64, KernelError> {
    if step >= 1 << 48 || layer >= 1 << 10 || site >= 1 << 6 {
        return Err(KernelError::invalid(
            "dropout stream",
            format!("step {step}, layer {layer}, site {site}: accepted below 2^48, 1024 and 64"),
        ));
    }
    Ok((step << 16) | (u64::from(layer) << 6) | u64::from(site))
}

/// Which LoRA module of a block a dropout mask is for: the `site` of [`stream`]. The numbers are part of the
/// reproducibility contract (a change alters every mask), and a module path maps to one with [`locate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Site {
    /// LLaMA `model.layers.{i}.self_attn.q_proj`.
    QProj = 0,
    /// LLaMA `self_attn.k_proj`.
    KProj = 1,
    /// LLaMA `self_attn.v_proj`.
    VProj = 2,
    /// LLaMA `self_attn.o_proj`.
    OProj = 3,
    /// LLaMA `mlp.gate_proj`.
    GateProj = 4,
    /// LLaMA `mlp.up_proj`.
    UpProj = 5,
    /// LLaMA `mlp.down_proj`.
    DownProj = 6,
    /// T5 `encoder.block.{i}.layer.0.SelfAttention.q`.
    EncoderSelfQ = 8,
    /// T5 encoder `layer.0.SelfAttention.k`.
    EncoderSelfK = 9,
    /// T5 encoder `layer.0.SelfAttention.v`.
    EncoderSelfV = 10,
    /// T5 encoder `layer.0.SelfAttention.o`.
    EncoderSelfO = 11,
    /// T5 encoder `layer.1.DenseReluDense.wi` (ReLU feed-forward).
    EncoderWi = 12,
    /// T5 encoder `layer.1.DenseReluDense.wi_0` (gated-GELU feed-forward).
    EncoderWi0 = 13,
    /// T5 encoder `layer.1.DenseReluDense.wi_1`.
    EncoderWi1 = 14,
    /// T5 encoder `layer.1.DenseReluDense.wo`.
    EncoderWo = 15,
    /// T5 `decoder.block.{i}.layer.0.SelfAttention.q`.
    DecoderSelfQ = 16,
    /// T5 decoder `layer.0.SelfAttention.k`.
    DecoderSelfK = 17,
    /// T5 decoder `layer.0.SelfAttention.v`.
    DecoderSelfV = 18,
    /// T5 decoder `layer.0.SelfAttention.o`.
    DecoderSelfO = 19,
    /// T5 decoder `layer.1.EncDecAttention.q`.
    DecoderCrossQ = 20,
    /// T5 decoder `layer.1.EncDecAttention.k`.
    DecoderCrossK = 21,
    /// T5 decoder `layer.1.EncDecAttention.v`.
    DecoderCrossV = 22,
    /// T5 decoder `layer.1.EncDecAttention.o`.
    DecoderCrossO = 23,
    /// T5 decoder `layer.2.DenseReluDense.wi`.
    DecoderWi = 24,
    /// T5 decoder `layer.2.DenseReluDense.wi_0`.
    DecoderWi0 = 25,
    /// T5 decoder `layer.2.DenseReluDense.wi_1`.
    DecoderWi1 = 26,
    /// T5 decoder `layer.2.DenseReluDense.wo`.
    DecoderWo = 27,
}

/// Every module [`locate`] knows: the block prefix (followed by the block index), the rest of the path, the site.
const MODULES: [(&str, &str, Site); 27] = [
    ("model.layers.", "self_attn.q_proj", Site::QProj),
    ("model.layers.", "self_attn.k_proj", Site::KProj),
    ("model.layers.", "self_attn.v_proj", Site::VProj),
    ("model.layers.", "self_attn.o_proj", Site::OProj),
    ("model.layers.", "mlp.gate_proj", Site::GateProj),
    ("model.layers.", "mlp.up_proj", Site::UpProj),
    ("model.layers.", "mlp.down_proj", Site::DownProj),
    (
        "encoder.block.",
        "layer.0.SelfAttention.q",
        Site::EncoderSelfQ,
    ),
    (
        "encoder.block.",
        "layer.0.SelfAttention.k",
        Site::EncoderSelfK,
    ),
    (
        "encoder.block.",
        "layer.0.SelfAttention.v",
        Site::EncoderSelfV,
    ),
    (
        "encoder.block.",
        "layer.0.SelfAttention.o",
        Site::EncoderSelfO,
    ),
    (
        "encoder.block.",
        "layer.1.DenseReluDense.wi",
        Site::EncoderWi,
    ),
    (
        "encoder.block.",
        "layer.1.DenseReluDense.wi_0",
        Site::EncoderWi0,
    ),
    (
        "encoder.block.",
        "layer.1.DenseReluDense.wi_1",
        Site::EncoderWi1,
    ),
    (
        "encoder.block.",
        "layer.1.DenseReluDense.wo",
        Site::EncoderWo,
    ),
    (
        "decoder.block.",
        "layer.0.SelfAttention.q",
        Site::DecoderSelfQ,
    ),
    (
        "decoder.block.",
        "layer.0.SelfAttention.k",
        Site::DecoderSelfK,
    ),
    (
        "decoder.block.",
        "layer.0.SelfAttention.v",
        Site::DecoderSelfV,
    ),
    (
        "decoder.block.",
        "layer.0.SelfAttention.o",
        Site::DecoderSelfO,
    ),
    (
        "decoder.block.",
        "layer.1.EncDecAttention.q",
        Site::DecoderCrossQ,
    ),
    (
        "decoder.block.",
        "layer.1.EncDecAttention.k",
        Site::DecoderCrossK,
    ),
    (
        "decoder.block.",
        "layer.1.EncDecAttention.v",
        Site::DecoderCrossV,
    ),
    (
        "decoder.block.",
        "layer.1.EncDecAttention.o",
        Site::DecoderCrossO,
    ),
    (
        "decoder.block.",
        "layer.2.DenseReluDense.wi",
        Site::DecoderWi,
    ),
    (
        "decoder.block.",
        "layer.2.DenseReluDense.wi_0",
        Site::DecoderWi0,
    ),
    (
        "decoder.block.",
        "layer.2.DenseReluDense.wi_1",
        Site::DecoderWi1,
    ),
    (
        "decoder.block.",
        "layer.2.DenseReluDense.wo",
        Site::DecoderWo,
    ),
];

/// The `(layer, site)` of a LoRA module from its Hugging Face path (`model.layers.3.self_attn.v_proj` is layer 3,
/// [`Site::VProj`]); an error for a path that is not a LoRA-able module of LLaMA or T5, or a block index of 1024 or
/// more.
pub fn locate(path: &str) -> Result<(u32, Site), KernelError> {
    for (prefix, module, site) in MODULES {
        let Some((index, rest)) = path
            .strip_prefix(prefix)
            .and_then(|tail| tail.split_once('.'))
        else {
            continue;
        };
        if rest != module || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        return match index.parse::<u32>() {
            Ok(layer) if layer < 1 << 10 => Ok((layer, site)),
            _ => Err(KernelError::invalid(
                "dropout layer",
                format!("{path}: block index {index}, accepted below 1024"),
            )),
        };
    }
    Err(KernelError::invalid(
        "dropout site",
        format!(
            "{path}: not a LoRA module of a LLaMA (`model.layers.{{i}}.self_attn.q_proj`, ...) or T5 \
             (`encoder.block.{{i}}.layer.0.SelfAttention.q`, ...) block"
        ),
    ))
}

/// Optimizer updates a training run can name streams for ([`training_stream`]'s `update` is below this).
pub const MAX_UPDATES: u64 = 1 << 32;
/// Micro-batches per update a training run can name streams for ([`training_stream`]'s `micro` is below this).
pub const MAX_MICRO_BATCHES: u64 = 1 << 16;

/// The stream of the mask of one LoRA module (`layer`, `site`) in the forward of micro-batch `micro` of optimizer
/// update `update`: `stream((update << 16) | micro, layer, site)` (see the module documentation).
pub fn training_stream(
    update: u64,
    micro: u64,
    layer: u32,
    site: Site,
) -> Result<u64, KernelError> {
    if update >= MAX_UPDATES || micro >= MAX_MICRO_BATCHES {
        return Err(KernelError::invalid(
            "dropout stream",
            format!(
                "update {update}, micro-batch {micro}: accepted below 2^32 and 2^16 (gradient accumulation of at \
                 most 65536 micro-batches)"
            ),
        ));
    }
    stream((update << 16) | micro, layer, site as u32)
}

/// The threshold on the top 32 bits for dropout probability `p` in [0, 1).
pub fn threshold(p: f32) -> Result<u32, KernelError> {
    if !(0.0..1.0).contains(&p) {
        return Err(KernelError::invalid(
            "dropout",
            format!("{p}: the probability must be in [0, 1)"),
        ));
    }
    Ok((f64::from(p) * 4_294_967_296.0)
        .round()
        .min(f64::from(u32::MAX)) as u32)
}

/// The factor a kept element is multiplied by under dropout probability `p` (inverted dropout): `1 / (1 - p)` in
/// fp32, as every engine computes it.
pub fn keep_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// Whether element `index` is kept.
pub fn keep_at(key: u64, index: u64, threshold: u32) -> bool {
    (bits_at(key, index) >> 32) as u32 >= threshold
}

/// The keep mask (1 kept, 0 dropped) of `n` elements of `stream` under `seed` with dropout probability `p`.
pub fn keep_mask(seed: u64, stream: u64, n: usize, p: f32) -> Result<Vec<u8>, KernelError> {
    let t = threshold(p)?;
    let key = stream_key(seed, stream);
    Ok((0..n as u64)
        .map(|i| u8::from(keep_at(key, i, t)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_splitmix64() {
        // Vigna's splitmix64.c from state 1234567: the first five outputs.
        let want = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        let got: Vec<u64> = (0..5).map(|i| bits_at(1_234_567, i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_kept_fraction_is_one_minus_p() {
        let n = 1_000_000;
        for p in [0.05f32, 0.1, 0.5, 0.9] {
            let mask = keep_mask(7, 3, n, p).unwrap();
            let kept = mask.iter().filter(|&&m| m == 1).count() as f64 / n as f64;
            let q = 1.0 - f64::from(p);
            let sigma = (q * (1.0 - q) / n as f64).sqrt();
            assert!(
                (kept - q).abs() < 5.0 * sigma,
                "p={p}: kept {kept}, expected {q} +- {sigma}"
            );
        }
        assert!(
            keep_mask(7, 3, 10_000, 0.0)
                .unwrap()
                .iter()
                .all(|&m| m == 1)
        );
    }

    #[test]
    fn streams_and_neighbours_are_uncorrelated() {
        let n = 400_000;
        let a = keep_mask(11, stream(5, 3, 0).unwrap(), n, 0.5).unwrap();
        let b = keep_mask(11, stream(5, 3, 1).unwrap(), n, 0.5).unwrap();
        let c = keep_mask(12, stream(5, 3, 0).unwrap(), n, 0.5).unwrap();
        let sigma = (0.25 / n as f64).sqrt();
        let agree = |x: &[u8], y: &[u8]| {
            x.iter().zip(y).filter(|(p, q)| p == q).count() as f64 / x.len() as f64
        };
        for (what, rate) in [
            ("another site", agree(&a, &b)),
            ("another seed", agree(&a, &c)),
            ("the next element", agree(&a[1..], &a[..n - 1])),
        ] {
            assert!((rate - 0.5).abs() < 5.0 * sigma, "{what}: agreement {rate}");
        }
    }

    #[test]
    fn masks_are_reproducible_and_pinned() {
        let a = keep_mask(42, 7, 64, 0.5).unwrap();
        assert_eq!(a, keep_mask(42, 7, 64, 0.5).unwrap());
        // Any element on its own equals the whole mask's (the GPU computes them in parallel).
        let key = stream_key(42, 7);
        let t = threshold(0.5).unwrap();
        for (i, &m) in a.iter().enumerate() {
            assert_eq!(u8::from(keep_at(key, i as u64, t)), m);
        }
        // The generator is part of the reproducibility contract: a change to it must be deliberate.
        let text: String = a.iter().map(|m| char::from(b'0' + m)).collect();
        assert_eq!(text, PINNED);
    }

    /// Seed 42, stream 7, p = 0.5, elements 0..64, recomputed independently in Python (big integers mod 2^64) when
    /// pinned.
    const PINNED: &str = "1100100101001111000001110001101101100001010001100000111010000010";

    #[test]
    fn module_paths_name_their_layer_and_site() {
        assert_eq!(
            locate("model.layers.3.self_attn.v_proj").unwrap(),
            (3, Site::VProj)
        );
        assert_eq!(
            locate("decoder.block.5.layer.1.EncDecAttention.o").unwrap(),
            (5, Site::DecoderCrossO)
        );
        assert_eq!(
            locate("encoder.block.0.layer.1.DenseReluDense.wi").unwrap(),
            (0, Site::EncoderWi)
        );
        for (prefix, module, site) in MODULES {
            assert_eq!(
                locate(&format!("{prefix}1023.{module}")).unwrap(),
                (1023, site)
            );
        }
        // Each module has its own number, and every number fits the 6 bits of the stream.
        let mut numbers: Vec<u32> = MODULES.iter().map(|m| m.2 as u32).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), MODULES.len());
        assert!(numbers.iter().all(|&n| n < 64));
        for bad in [
            "lm_head",
            "m.q_proj",
            "model.layers.x.self_attn.q_proj",
            "model.layers..self_attn.q_proj",
            "model.layers.+1.self_attn.q_proj",
            "model.layers.3.self_attn.q_proj.lora_A",
            "encoder.block.0.layer.1.EncDecAttention.q",
        ] {
            let e = locate(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let e = locate("model.layers.1024.mlp.up_proj")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1024"), "{e}");
    }

    #[test]
    fn training_streams_pack_update_micro_layer_and_site() {
        let s = training_stream(5, 3, 2, Site::VProj).unwrap();
        assert_eq!(s, (((5 << 16) | 3) << 16) | (2 << 6) | 2);
        assert_eq!(s, stream(5 * 65_536 + 3, 2, 2).unwrap());
        assert_ne!(s, training_stream(5, 4, 2, Site::VProj).unwrap());
        assert_ne!(s, training_stream(6, 3, 2, Site::VProj).unwrap());
        assert!(
            training_stream(
                MAX_UPDATES - 1,
                MAX_MICRO_BATCHES - 1,
                1023,
                Site::DecoderWo
            )
            .is_ok()
        );
        let e = training_stream(MAX_UPDATES, 0, 0, Site::QProj)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2^32"), "{e}");
        assert!(training_stream(0, MAX_MICRO_BATCHES, 0, Site::QProj).is_err());
        assert_eq!(keep_scale(0.5), 2.0);
    }

    #[test]
    fn bad_arguments_are_refused_with_the_accepted_range() {
        for p in [1.0f32, -0.1, f32::NAN] {
            let e = threshold(p).unwrap_err().to_string();
            assert!(e.contains("[0, 1)"), "{e}");
        }
        let e = stream(1 << 48, 0, 0).unwrap_err().to_string();
        assert!(e.contains("2^48"), "{e}");
        assert!(stream(3, 1023, 63).is_ok());
        assert!(stream(3, 1024, 0).is_err() && stream(3, 0, 64).is_err());
        assert_eq!(threshold(0.0).unwrap(), 0);
        assert_eq!(threshold(0.5).unwrap(), 1 << 31);
    }
}
