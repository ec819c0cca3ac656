//! Randomness, from one place: the operating system's generator for identifiers that must not
//! collide (UIDs, generated names), and a fast seedable generator for choices that only need
//! to vary (scheduler tie-breaks, jitter), which tests seed to make them repeatable.

/// Fills `buf` from the operating system's random generator.
///
/// # Panics
/// When the kernel has no randomness to give (`getrandom(2)` failing is not recoverable: an
/// identifier made without it could collide).
pub fn fill(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random generator failed");
}

/// A random version-4 UUID in its hyphenated form.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The alphabet upstream uses for generated names: no vowels (no words) and no look-alikes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters from upstream's generated-name alphabet (`generateName`, pod
/// suffixes).
pub fn name_suffix(n: usize) -> String {
    let mut b = vec![0u8; n];
    fill(&mut b);
    b.iter()
        .map(|x| char::from(NAME_ALPHABET[usize::from(*x) % NAME_ALPHABET.len()]))
        .collect()
}

/// A fast, non-cryptographic generator for choices that only need to vary.
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator seeded from the operating system.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        fill(&mut seed);
        Self(fastrand::Rng::with_seed(u64::from_le_bytes(seed)))
    }

    /// A generator that repeats the same sequence for the same seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    /// A random `u64`.
    pub fn u64(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// A random number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }

    /// A random fraction in `[0, 1)`, e.g. for jitter.
    pub fn fraction(&mut self) -> f64 {
        self.0.f64()
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let a = uuid_v4();
        let b = uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn name_suffixes_use_upstreams_alphabet() {
        let s = name_suffix(64);
        assert_eq!(s.len(), 64);
        assert!(s.bytes().all(|c| NAME_ALPHABET.contains(&c)));
        assert_ne!(name_suffix(10), name_suffix(10));
    }

    #[test]
    fn seeded_generators_repeat() {
        let mut a = Rng::with_seed(7);
        let mut b = Rng::with_seed(7);
        let xs: Vec<u64> = (0..5).map(|_| a.u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.u64()).collect();
        assert_eq!(xs, ys);
        assert!((0..1000).all(|_| a.below(3) < 3));
        let f = a.fraction();
        assert!((0.0..1.0).contains(&f));
    }
}
