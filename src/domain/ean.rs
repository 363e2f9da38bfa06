//! EAN-8 and EAN-13 barcodes with their GS1 check digit.
use super::Invalid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ean(String);

impl Ean {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let s = raw.trim();
        if !(s.len() == 8 || s.len() == 13) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid::new("ean", "must be 8 or 13 digits"));
        }
        let digits: Vec<u32> = s.bytes().map(|b| u32::from(b - b'0')).collect();
        let (body, check) = digits.split_at(digits.len() - 1);
        // GS1: weights 3,1,3,1… counted from the digit next to the check digit.
        let sum: u32 = body
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| if i % 2 == 0 { d * 3 } else { *d })
            .sum();
        if (10 - sum % 10) % 10 != check[0] {
            return Err(Invalid::new("ean", "check digit is wrong"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The EAN-13 whose first twelve digits are `body` (zero-padded), with its check digit.
    pub fn from_body(body: u64) -> Ean {
        let body = format!("{:012}", body % 1_000_000_000_000);
        let sum: u32 = body
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
            .sum();
        Ean(format!("{body}{}", (10 - sum % 10) % 10))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ean13_and_ean8_are_accepted() {
        for good in [
            "4006381333931",
            "5901234123457",
            "96385074",
            "0000000000000",
        ] {
            assert!(Ean::parse(good).is_ok(), "{good} should be valid");
        }
    }

    #[test]
    fn generated_eans_are_valid() {
        for body in [0, 1, 400638133393, 999_999_999_999] {
            let ean = Ean::from_body(body);
            assert_eq!(Ean::parse(ean.as_str()), Ok(ean.clone()), "{ean:?}");
        }
        assert_eq!(Ean::from_body(400638133393).as_str(), "4006381333931");
    }

    #[test]
    fn wrong_check_digits_lengths_and_characters_are_refused() {
        for bad in [
            "4006381333932",
            "96385075",
            "123",
            "40063813339310",
            "40063813339a1",
            "",
        ] {
            assert!(Ean::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
