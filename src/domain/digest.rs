//! SHA-256 digests of secrets (API keys, refresh tokens), the form in which they are stored
//! and looked up.

pub type Digest = [u8; 32];

/// Whether two SHA-256 digests are equal, in time independent of where they differ: the words
/// are folded together before the single data-dependent decision. (`subtle`'s slice comparison
/// puts an optimisation barrier on every byte, which showed in profiles of the key path.)
pub fn digests_equal(a: &Digest, b: &Digest) -> bool {
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
        diff |= word(x) ^ word(y);
    }
    bool::from(subtle::ConstantTimeEq::ct_eq(&diff, &0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        let a = [7u8; 32];
        assert!(digests_equal(&a, &a));
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 1;
            assert!(!digests_equal(&a, &b), "byte {i} differs");
        }
    }
}
