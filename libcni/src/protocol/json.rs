//! JSON the way the Go plugins read and write it.
//!
//! Go's `encoding/json` matches object keys to struct fields case-insensitively (an exact match
//! wins), ignores unknown keys, and leaves a field untouched when its value is `null`. Configs
//! written for the Go plugins rely on that, so [`from_value`] does the same for any serde type:
//! it wraps the `serde_json::Value` deserializer and, whenever serde asks for a struct (which
//! tells it the field names), renames keys to the field they fold to and drops `null` members.
//!
//! Config types read through it use plain structs, `Option`, `Vec` and string-like enums only:
//! `#[serde(flatten)]` and untagged or internally tagged enums do not tell serde's deserializer
//! their field names, so their keys would not fold.

use serde::de::{
    self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Deserializes `T` from `value` with Go's key matching. The error names the key path.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(GoValue(value)).map_err(KeyError)
}

/// A decoding error with the path of the offending key (`ipam.ranges[0][1].subnet`).
#[derive(Debug)]
pub struct KeyError(serde_path_to_error::Error<serde_json::Error>);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.path().to_string().as_str() {
            "." => write!(f, "{}", self.0.inner()),
            path => write!(f, "key \"{path}\": {}", self.0.inner()),
        }
    }
}

impl std::error::Error for KeyError {}

/// A config value that never fails to decode, for the keys DEL and GC read: a config whose
/// other keys (or even these) no longer validate must still let its pods be torn down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Lenient<T> {
    #[default]
    Absent,
    Valid(T),
    /// The key holds a value `T` cannot hold; why.
    Invalid(String),
}

impl<T> Lenient<T> {
    pub fn valid(self) -> Option<T> {
        match self {
            Lenient::Valid(t) => Some(t),
            Lenient::Absent | Lenient::Invalid(_) => None,
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(match from_value::<T>(value) {
            Ok(t) => Lenient::Valid(t),
            Err(e) => Lenient::Invalid(e.to_string()),
        })
    }
}

/// Go's `json.MarshalIndent(v, "", "    ")`: what plugins print on stdout.
pub fn to_pretty(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serializing a Value or a plain struct into a Vec cannot fail.
    let _ = value.serialize(&mut ser);
    out
}

struct GoValue(Value);

fn canonical_keys(map: Map<String, Value>, fields: &'static [&'static str]) -> Map<String, Value> {
    let mut out = Map::new();
    let exact: Vec<String> = map
        .keys()
        .filter(|k| fields.contains(&k.as_str()))
        .cloned()
        .collect();
    for (key, value) in map {
        if value.is_null() {
            continue;
        }
        let name = if fields.contains(&key.as_str()) {
            key
        } else {
            match fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
                // An exact key for the same field wins over a folded one.
                Some(f) if exact.iter().any(|e| e == f) => continue,
                Some(f) => (*f).to_string(),
                None => key,
            }
        };
        out.insert(name, value);
    }
    out
}

struct GoMap {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for GoMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.value.take().unwrap_or(Value::Null);
        seed.deserialize(GoValue(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct GoSeq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for GoSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoValue(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

impl<'de> Deserializer<'de> for GoValue {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(GoMap {
                iter: map.into_iter(),
                value: None,
            }),
            Value::Array(items) => visitor.visit_seq(GoSeq(items.into_iter())),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => {
                let map = canonical_keys(map, fields);
                visitor.visit_map(GoMap {
                    iter: map.into_iter(),
                    value: None,
                })
            }
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(GoValue(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(default)]
    struct Inner {
        #[serde(rename = "rangeStart")]
        range_start: Option<String>,
    }

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(default)]
    struct Conf {
        bridge: String,
        #[serde(rename = "isGateway")]
        is_gateway: bool,
        mtu: u32,
        ranges: Vec<Inner>,
        nested: Option<Inner>,
    }

    #[test]
    fn lenient_values_never_fail() {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Keys {
            #[serde(rename = "ipMasq")]
            ip_masq: Lenient<bool>,
            mtu: Lenient<u32>,
            bridge: Lenient<String>,
        }
        let keys: Keys =
            from_value(serde_json::json!({"IPMASQ": "yes", "mtu": 1500, "bridge": null})).unwrap();
        assert!(matches!(keys.ip_masq, Lenient::Invalid(ref why) if why.contains("boolean")));
        assert_eq!(keys.mtu, Lenient::Valid(1500));
        assert_eq!(keys.bridge, Lenient::Absent);
    }

    #[test]
    fn keys_fold_like_go() {
        let c: Conf = from_value(json!({
            "BRIDGE": "br9", "isgateway": true, "Ranges": [{"RANGESTART": "10.0.0.5"}],
            "Nested": {"rangestart": "x"}, "unknown": 1
        }))
        .unwrap();
        assert_eq!(c.bridge, "br9");
        assert!(c.is_gateway);
        assert_eq!(c.ranges[0].range_start.as_deref(), Some("10.0.0.5"));
        assert_eq!(c.nested.unwrap().range_start.as_deref(), Some("x"));
    }

    #[test]
    fn exact_key_wins_and_null_leaves_default() {
        let c: Conf =
            from_value(json!({"Bridge": "folded", "bridge": "exact", "mtu": null})).unwrap();
        assert_eq!(c.bridge, "exact");
        assert_eq!(c.mtu, 0);
    }

    #[test]
    fn wrong_types_are_still_errors() {
        let e = from_value::<Conf>(json!({"isGateway": "true"})).unwrap_err();
        assert!(
            e.to_string().starts_with("key \"isGateway\": invalid type"),
            "{e}"
        );
        let e = from_value::<Conf>(json!({"ranges": [{}, {"RangeStart": 5}]})).unwrap_err();
        assert!(
            e.to_string().starts_with("key \"ranges[1].rangeStart\""),
            "{e}"
        );
        assert!(from_value::<Conf>(json!({"mtu": -1})).is_err());
    }

    #[test]
    fn pretty_uses_four_spaces_and_no_newline() {
        assert_eq!(
            to_pretty(&json!({"a": [1]})),
            b"{\n    \"a\": [\n        1\n    ]\n}"
        );
    }
}
