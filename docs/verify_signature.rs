// Verifies `X-PM-Signature` (`t=<unix seconds>,v1=<hex HMAC-SHA256>`) with the `hmac`
// (0.13) and `sha2` (0.11) crates. `body` is the raw request body, exactly as received;
// `now` is the receiver's clock in Unix seconds.
use hmac::{Hmac, KeyInit, Mac};

pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance {
        return false; // too old (or from the future): a replay
    }
    signatures.iter().any(|hex| {
        let Some(given) = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&given).is_ok() // constant-time comparison
    })
}
