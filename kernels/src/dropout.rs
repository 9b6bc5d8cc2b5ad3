//! Dropout keep masks from a counter-based generator, so the CPU and the GPU (`dropout_keep_mask` in
//! `kernels/cuda/ops.cu`) draw the same mask bits from the same `(seed, stream)` without moving a mask between them,
//! and any element of a mask can be computed on its own, in any order.
//!
//! Element `i` of stream `stream` under `seed` is SplitMix64's output number `i + 1` from the state
//! `key = mix64(seed + mix64(stream ^ STREAM_SALT))`, i.e. `mix64(key + (i + 1) * GOLDEN)`. It is kept when its top 32
//! bits are at least `threshold = round(p * 2^32)`, so the keep probability is `1 - p` to within 2^-33. A stream
//! names one use of dropout (a training step, a layer, a site in the layer): [`stream`] packs those.

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
