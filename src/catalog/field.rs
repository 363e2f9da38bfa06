//! A JSON field that may be absent, explicitly `null`, or set: what PATCH needs to tell
//! "leave alone" from "clear".
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Field::Value(v),
            None => Field::Null,
        })
    }
}

impl<T> Field<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

/// A JSON integer. JSON has a single number type, so `5.0` is the integer 5 (JSON Schema says
/// the same); a fraction, or a value beyond `i64`, is refused.
struct WholeNumber(i64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WholeNumber;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<WholeNumber, E> {
                i64::try_from(v).map(WholeNumber).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Unsigned(v), &"a smaller integer")
                })
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<WholeNumber, E> {
                // 2^63 is exactly representable; every whole f64 in [-2^63, 2^63) fits in i64.
                const LIMIT: f64 = 9_223_372_036_854_775_808.0;
                if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                    Ok(WholeNumber(v as i64))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `deserialize_with` for an integer field (see [`WholeNumber`]), refusing values that do not
/// fit `T`.
pub fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let WholeNumber(v) = WholeNumber::deserialize(d)?;
    T::try_from(v).map_err(|_| {
        serde::de::Error::invalid_value(serde::de::Unexpected::Signed(v), &"an integer in range")
    })
}

/// `deserialize_with` for an integer [`Field`]: absent, `null`, or a whole number.
pub fn whole_field<'de, D: Deserializer<'de>>(d: D) -> Result<Field<i64>, D::Error> {
    Ok(match Option::<WholeNumber>::deserialize(d)? {
        Some(WholeNumber(v)) => Field::Value(v),
        None => Field::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default, deserialize_with = "whole_field")]
        n: Field<i64>,
        #[serde(default, deserialize_with = "whole")]
        small: u32,
    }

    fn parse(json: &str) -> Result<Sample, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_whole_number_may_be_written_with_a_fraction_part_of_zero() {
        let s = parse(r#"{"n": 5.0, "small": 86400.0}"#).unwrap();
        assert_eq!((s.n, s.small), (Field::Value(5), 86_400));
        assert_eq!(parse(r#"{"n": -3}"#).unwrap().n, Field::Value(-3));
        assert_eq!(parse(r#"{"n": null}"#).unwrap().n, Field::Null);
        assert_eq!(parse("{}").unwrap().n, Field::Absent);
    }

    #[test]
    fn fractions_and_out_of_range_values_are_refused() {
        for bad in [
            r#"{"n": 5.5}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": 18446744073709551615}"#,
            r#"{"n": "5"}"#,
            r#"{"small": -1}"#,
            r#"{"small": 4294967296}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
