//! Seeded, counter-based randomness: the engine's random draws (LoRA init, data shuffling, sampling) come from a
//! ChaCha8 stream keyed by (seed, purpose, counters), so results never depend on threads or on history. Dropout
//! masks are not drawn here: they come from `tandem_kernels::dropout`, the generator the CUDA kernels share.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// What a random stream is used for; keeps the streams of different purposes apart. The numbers key the streams
/// (2 was dropout's, before masks moved to `tandem_kernels::dropout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    LoraInit = 1,
    Shuffle = 3,
    Sampling = 4,
}

/// SplitMix64 finaliser: mixes one 64-bit word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit key from a seed, a purpose and any number of counters.
pub fn key(seed: u64, purpose: Purpose, counters: &[u64]) -> u64 {
    let mut h = mix(seed ^ mix(purpose as u64));
    for &c in counters {
        h = mix(h ^ c);
    }
    h
}

/// A stable 64-bit hash of a name (FNV-1a), for keying streams by layer name.
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A deterministic generator of uniform numbers.
pub struct Stream(ChaCha8Rng);

impl Stream {
    /// The stream for `(seed, purpose, counters)`.
    pub fn new(seed: u64, purpose: Purpose, counters: &[u64]) -> Self {
        Self(ChaCha8Rng::seed_from_u64(key(seed, purpose, counters)))
    }

    /// A uniform f32 in [0, 1) with 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform f64 in [0, 1) with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in [0, n) (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.0.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Fisher-Yates shuffle of `items` with a stream.
pub fn shuffle<T>(items: &mut [T], stream: &mut Stream) {
    for i in (1..items.len()).rev() {
        let j = stream.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<f32> = {
            let mut s = Stream::new(42, Purpose::Sampling, &[1, 2]);
            (0..8).map(|_| s.uniform_f32()).collect()
        };
        let b: Vec<f32> = {
            let mut s = Stream::new(42, Purpose::Sampling, &[1, 2]);
            (0..8).map(|_| s.uniform_f32()).collect()
        };
        let c: Vec<f32> = {
            let mut s = Stream::new(42, Purpose::Sampling, &[1, 3]);
            (0..8).map(|_| s.uniform_f32()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        shuffle(&mut v, &mut Stream::new(7, Purpose::Shuffle, &[0]));
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
