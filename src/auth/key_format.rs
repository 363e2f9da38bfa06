//! The API key format: `pm_live_` or `pm_test_`, 32 random base62 characters, then a 6-character
//! base62 CRC32 of everything before it. The checksum lets us refuse typos and garbage without a
//! store read, and makes leaked keys recognisable to secret scanners.
use super::secret::{base62_fixed, random_base62, sha256};
use crate::domain::Environment;
use crate::error::Error;

pub const KEY_LEN: usize = 8 + 38;
const RANDOM_LEN: usize = 32;
const CHECK_LEN: usize = 6;

/// A freshly generated key: the raw text is shown once, only the digest is stored.
pub struct NewKey {
    pub raw: String,
    pub digest: [u8; 32],
    pub hint: String,
}

fn prefix(env: Environment) -> &'static str {
    match env {
        Environment::Live => "pm_live_",
        Environment::Test => "pm_test_",
    }
}

fn checksum(body: &str) -> [u8; CHECK_LEN] {
    base62_fixed(u64::from(crc32fast::hash(body.as_bytes())))
}

pub fn generate(env: Environment) -> Result<NewKey, Error> {
    let mut raw = String::with_capacity(KEY_LEN);
    raw.push_str(prefix(env));
    raw.push_str(&random_base62(RANDOM_LEN)?);
    raw.extend(checksum(&raw).map(char::from));
    Ok(NewKey {
        digest: sha256(raw.as_bytes()),
        hint: hint(&raw),
        raw,
    })
}

/// Checks prefix, length, alphabet and checksum; returns the environment the key names.
pub fn parse(raw: &str) -> Option<Environment> {
    if raw.len() != KEY_LEN || !raw.is_ascii() {
        return None;
    }
    let env = match &raw[..8] {
        "pm_live_" => Environment::Live,
        "pm_test_" => Environment::Test,
        _ => return None,
    };
    let rest = &raw.as_bytes()[8..];
    if !rest.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let (body, check) = raw.split_at(8 + RANDOM_LEN);
    (checksum(body) == check.as_bytes()).then_some(env)
}

/// What lists show: the first 12 and the last 4 characters.
pub fn hint(raw: &str) -> String {
    match (raw.get(..12), raw.get(raw.len().saturating_sub(4)..)) {
        (Some(head), Some(tail)) if raw.len() > 16 => format!("{head}…{tail}"),
        _ => "…".to_owned(),
    }
}

/// Whether a bearer credential looks like an API key (so we can say "use X-API-Key").
pub fn looks_like_key(raw: &str) -> bool {
    raw.starts_with("pm_live_") || raw.starts_with("pm_test_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_match_the_published_format_and_parse() {
        for env in [Environment::Live, Environment::Test] {
            let key = generate(env).unwrap();
            assert_eq!(key.raw.len(), KEY_LEN);
            assert!(key.raw.starts_with(prefix(env)));
            assert!(key.raw[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(parse(&key.raw), Some(env));
            assert_eq!(key.digest, sha256(key.raw.as_bytes()));
        }
    }

    #[test]
    fn a_key_with_one_changed_character_fails_its_checksum() {
        let key = generate(Environment::Live).unwrap().raw;
        for i in 8..KEY_LEN {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(parse(&changed), None, "change at {i} must be caught");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512, failure_persistence: None, ..Default::default()
        })]

        /// Any input: no panic, and an accepted one has the published shape.
        #[test]
        fn parse_accepts_only_the_published_shape(raw in "(pm_(live|test)_)?.{0,50}") {
            if let Some(env) = parse(&raw) {
                proptest::prop_assert_eq!(raw.len(), KEY_LEN);
                proptest::prop_assert!(raw.starts_with(prefix(env)));
                proptest::prop_assert!(raw[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }

        /// Any one character of a real key replaced by any other base62 character is caught.
        #[test]
        fn any_substitution_in_a_real_key_is_refused(i in 8..KEY_LEN, c in "[0-9A-Za-z]") {
            let key = generate(Environment::Test).unwrap().raw;
            let mut changed = key.clone();
            changed.replace_range(i..=i, &c);
            proptest::prop_assume!(changed != key);
            proptest::prop_assert_eq!(parse(&changed), None);
        }
    }

    #[test]
    fn wrong_prefix_length_and_alphabet_are_refused() {
        let key = generate(Environment::Test).unwrap().raw;
        let cases = [
            (
                "live prefix swapped",
                key.replacen("pm_test_", "pm_prod_", 1),
            ),
            ("too short", key[..KEY_LEN - 1].to_owned()),
            ("too long", format!("{key}0")),
            ("symbol", format!("{}-{}", &key[..20], &key[21..])),
            ("empty", String::new()),
            ("non-ascii", format!("{}é{}", &key[..20], &key[22..])),
        ];
        for (what, raw) in cases {
            assert_eq!(parse(&raw), None, "{what}");
        }
    }

    #[test]
    fn hints_show_twelve_leading_and_four_trailing_characters() {
        let key = generate(Environment::Live).unwrap();
        assert_eq!(
            key.hint,
            format!("{}…{}", &key.raw[..12], &key.raw[KEY_LEN - 4..])
        );
    }
}
