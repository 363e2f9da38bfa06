//! Secrets from the OS CSPRNG, their digests and their base62 text form.
use crate::error::{Error, ErrorKind};
use rand::TryRng;
use sha2::{Digest, Sha256};

pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `N` bytes straight from the operating system's generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    rand::rngs::SysRng.try_fill_bytes(&mut out).map_err(|e| {
        Error::new(ErrorKind::Internal, "the system random generator failed").with_cause(e)
    })?;
    Ok(out)
}

/// `len` uniformly random base62 characters (rejection sampling keeps them unbiased).
pub fn random_base62(len: usize) -> Result<String, Error> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<64>()? {
            // 248 = 4 * 62: bytes above it would favour the first characters.
            if b < 248 && out.len() < len {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// Fixed-width base62 rendering of a number, most significant digit first (ASCII, no
/// allocation: key checks render a checksum on every request).
pub fn base62_fixed<const WIDTH: usize>(mut n: u64) -> [u8; WIDTH] {
    let mut digits = [b'0'; WIDTH];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    digits
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_base62_has_the_asked_length_and_alphabet() {
        let s = random_base62(100).unwrap();
        assert_eq!(s.len(), 100);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s, random_base62(100).unwrap());
    }

    #[test]
    fn base62_fixed_pads_and_encodes() {
        assert_eq!(&base62_fixed::<6>(0), b"000000");
        assert_eq!(&base62_fixed::<3>(61), b"00z");
        assert_eq!(&base62_fixed::<3>(62), b"010");
        // u32::MAX = 4 * 62^5 + ...: the widest checksum still fits six digits.
        assert_eq!(&base62_fixed::<6>(u64::from(u32::MAX)), b"4gfFC3");
    }
}
