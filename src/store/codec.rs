//! Value encoding: one schema version byte, then bincode (standard config) of the record.
use super::{StoreError, StoreResult};
use serde::{Serialize, de::DeserializeOwned};

pub const SCHEMA_VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    // Encoding plain structs into a Vec cannot fail; an error would be a programming bug.
    if let Err(e) =
        bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
    {
        tracing::error!(error = %e, "BUG: record encoding failed");
    }
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    let body = check_version(bytes)?;
    let (value, read) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if read != body.len() {
        return Err(StoreError::Corrupt("trailing bytes after record".into()));
    }
    Ok(value)
}

/// An index value (an id, a count, nothing): the version byte, then the raw bytes.
pub fn raw(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(SCHEMA_VERSION);
    out.extend_from_slice(bytes);
    out
}

/// The raw bytes of an index value, `None` when the version byte is wrong.
pub fn unraw(bytes: &[u8]) -> Option<&[u8]> {
    check_version(bytes).ok()
}

pub(crate) fn check_version(bytes: &[u8]) -> StoreResult<&[u8]> {
    match bytes.split_first() {
        Some((&SCHEMA_VERSION, body)) => Ok(body),
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown schema version {v}"))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        n: u32,
    }

    #[test]
    fn records_round_trip_and_carry_the_version_byte() {
        let bytes = encode(&Sample {
            name: "x".into(),
            n: 7,
        });
        assert_eq!(bytes[0], SCHEMA_VERSION);
        assert_eq!(
            decode::<Sample>(&bytes).unwrap(),
            Sample {
                name: "x".into(),
                n: 7
            }
        );
    }

    #[test]
    fn truncated_or_unversioned_records_are_refused() {
        let bytes = encode(&Sample {
            name: "hello".into(),
            n: 7,
        });
        assert!(decode::<Sample>(&bytes[..bytes.len() - 2]).is_err());
        assert!(decode::<Sample>(&[]).is_err());
        assert!(decode::<Sample>(&[9, 1, 2]).is_err());
    }
}
