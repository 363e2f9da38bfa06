//! SHA-256 digests of secrets (API keys, refresh tokens), the form in which they are stored
//! and looked up.

pub type Digest = [u8; 32];

/// Whether two byte strings are equal, in time independent of where they differ (only their
/// lengths, which are not secret here, decide early): the words are folded together before the
/// single data-dependent decision. (`subtle`'s slice comparison puts an optimisation barrier on
/// every byte, which showed in profiles of the key path.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = wa
        .remainder()
        .iter()
        .zip(wb.remainder())
        .fold(0u64, |d, (x, y)| d | u64::from(x ^ y));
    // The barrier on every word keeps the compiler from turning the fold into an early exit.
    let diff = wa.zip(wb).fold(tail, |d, (x, y)| {
        std::hint::black_box(d | (word(x) ^ word(y)))
    });
    bool::from(subtle::ConstantTimeEq::ct_eq(&diff, &0))
}

/// Whether two digests are equal, in constant time.
pub fn digests_equal(a: &Digest, b: &Digest) -> bool {
    constant_time_eq(a, b)
}

/// Lower-case hex of `bytes` (signatures, digests in messages, index keys).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
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

    #[test]
    fn byte_strings_of_any_length_compare_by_every_byte() {
        let text = b"eyJhbGciOiJIUzI1NiJ9.a-token-whose-length-is-not-a-multiple-of-8";
        assert!(constant_time_eq(text, text));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(text, &text[..text.len() - 1]), "length");
        for i in 0..text.len() {
            let mut other = *text;
            other[i] ^= 0x20;
            assert!(!constant_time_eq(text, &other), "byte {i} differs");
        }
    }
}
