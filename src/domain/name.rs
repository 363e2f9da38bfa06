//! Names people read in lists (keys, tenants): trimmed, 1 to 100 characters, and nothing that
//! is not shown as itself. Control characters break lines and logs; Unicode format characters
//! (general category Cf: bidi overrides such as U+202E, zero-width spaces and joiners, the
//! BOM) are invisible or reorder the text around them, so `ci\u{202E}yek` could pass for another
//! key's name in the settings page.
use super::Invalid;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

pub const MAX_NAME_CHARS: usize = 100;

/// The trimmed name, or why it is refused.
pub fn display_name(field: &str, raw: &str) -> Result<String, Invalid> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid::new(field, "must be 1 to 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    if name
        .chars()
        .any(|c| c.general_category() == GeneralCategory::Format)
    {
        return Err(Invalid::new(
            field,
            "must not contain invisible formatting characters (such as bidi overrides)",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_control_and_format_characters_and_keep_the_rest() {
        for bad in [
            "",
            "   ",
            "a\nb",
            "ci\u{7f}",
            "ci\u{202E}yek",
            "a\u{200B}b",
            "\u{FEFF}bom",
            "x\u{2066}y\u{2069}",
            "soft\u{00AD}hyphen",
        ] {
            assert!(display_name("name", bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(
            display_name("name", "  Crème brûlée 日本 ").unwrap(),
            "Crème brûlée 日本"
        );
        assert!(display_name("name", &"é".repeat(100)).is_ok());
        assert!(display_name("name", &"é".repeat(101)).is_err());
    }
}
