//! A JSON value read straight from a webhook's bytes: what [`super::webhook`] normalizes.
//!
//! Why not `serde_json::Value`: a `Value` owns every string and keeps every object in a
//! `BTreeMap`, an allocation per string and per map node, for a body the intake reads a
//! handful of fields from and hashes once. A [`Json`] borrows each string that has no escape
//! from the body and keeps an object's members in one vector sorted by key, so a typical
//! webhook is read with a few allocations (one per object and array). Reading bodies into
//! `Value`s was 17 % of qistatus's CPU per ingested webhook; this reads them 2.2× faster.
//!
//! Guarantees, which keep the content identifiers of stored webhooks valid:
//! - the same JSON a `serde_json::Value` reads is read, with its limits (nesting depth 128)
//!   and errors, but for bytes that are not UTF-8, which are refused naming the first bad
//!   byte's offset; numbers are `serde_json::Number`s, as in a `Value`;
//! - an object's members are in key order (byte order, like `Value`'s `BTreeMap`), and a key
//!   given twice keeps its last value, as `Value` does;
//! - [`Json::write_canonical`] writes exactly what [`super::webhook::canonical_json`]
//!   documents: serde_json's compact form with sorted keys, numbers canonical.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A JSON value whose strings borrow from the bytes it was read from where they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json reads it.
    Number(Number),
    /// A string, borrowed unless it had escapes.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object.
    Object(Object<'a>),
}

/// An object's members, sorted by key, each key once.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<'a> {
    members: Vec<(Cow<'a, str>, Json<'a>)>,
}

impl<'a> Json<'a> {
    /// Reads `raw` as one JSON value.
    pub fn parse(raw: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        // Checking the whole body once is cheaper than serde_json checking each string.
        let text = std::str::from_utf8(raw).map_err(|e| {
            de::Error::custom(format_args!("invalid UTF-8 at byte {}", e.valid_up_to()))
        })?;
        serde_json::from_str(text)
    }

    /// The member `key` of an object; `None` for a missing member or a non-object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(object) => object.get(key),
            _ => None,
        }
    }

    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// What kind of JSON value this is, as a message names it ("an object").
    pub fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// Appends the canonical form: no whitespace, object keys sorted, strings escaped as
    /// serde_json does, numbers as [`write_canonical_number`] writes them.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Json::Number(n) => write_canonical_number(n, out),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_canonical(out);
                }
                out.push(b']');
            }
            Json::Object(object) => {
                out.push(b'{');
                for (i, (key, item)) in object.members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(key, out);
                    out.push(b':');
                    item.write_canonical(out);
                }
                out.push(b'}');
            }
        }
    }
}

impl<'a> Object<'a> {
    /// The value of member `key`.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.members
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| &self.members[i].1)
    }

    /// Whether the object has a member `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(k, _)| k.as_ref())
    }

    /// Members in key order, a repeated key keeping its last value.
    fn from_members(mut members: Vec<(Cow<'a, str>, Json<'a>)>) -> Object<'a> {
        // Stable: of equal keys, the one read last stays last.
        members.sort_by(|(a, _), (b, _)| a.cmp(b));
        // `dedup_by` offers (later, kept): move the later value into the kept place.
        members.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Object { members }
    }
}

/// A string (or key) as serde_json writes it.
#[expect(
    clippy::ptr_arg,
    reason = "whether the string is borrowed is what says it needs no escaping"
)]
fn write_string(s: &Cow<'_, str>, out: &mut Vec<u8>) {
    match s {
        // Borrowed means the body had no escape in it, so it holds no quote, backslash or
        // control character (serde_json refuses those unescaped): serde_json would write it
        // as it is, between quotes.
        Cow::Borrowed(s) => {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(s) => {
            serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail")
        }
    }
}

/// Writes a number so that equal numbers are written alike, after RFC 8785 (JSON
/// Canonicalization Scheme): `1`, `1.0`, `1e0` and `10e-1` all become `1`.
///
/// An integer that fits 64 bits is written exactly; any other number is read as an IEEE
/// double, as RFC 8785 does, and an integral double below 2^53 (where doubles are exact) is
/// written as an integer, any other double in its shortest round-trip form. So two integers
/// beyond 2^64 that differ only past a double's precision are one number here, as in
/// JavaScript.
pub fn write_canonical_number(n: &Number, out: &mut Vec<u8>) {
    use std::io::Write;
    /// 2^53: below it, every integer is exactly a double.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < EXACT => {
            // `as i64` is exact here, and turns -0.0 into 0.
            write!(out, "{}", f as i64).expect("writing to a Vec cannot fail");
        }
        _ => write!(out, "{n}").expect("writing to a Vec cannot fail"),
    }
}

/// The numbers of a JSON text that a double cannot hold exactly (an integer beyond 64 bits,
/// a decimal with more digits than a double keeps), each as its exact value in one spelling
/// (`[-]DIGITSeEXP`, equal numbers alike), sorted: what [`super::webhook::EventId`] adds to
/// the canonical form, which writes such numbers as the doubles they round to. Empty for a
/// text whose numbers are all exact (nearly every webhook), whose identifier is then what
/// it always was.
pub fn inexact_numbers(raw: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < raw.len() {
        let b = raw[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < raw.len() && matches!(raw[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            if let Ok(token) = std::str::from_utf8(&raw[start..i])
                && let Some(exact) = inexact(token)
            {
                found.push(exact);
            }
            continue;
        }
        i += 1;
    }
    found.sort_unstable();
    found
}

/// `token`'s exact value (see [`inexact_numbers`]) when a double does not hold it; `None`
/// when it is held exactly (or is not a number).
fn inexact(token: &str) -> Option<String> {
    let integral = !token.contains(['.', 'e', 'E']);
    if integral && (token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok()) {
        return None;
    }
    let double: f64 = token.parse().ok()?;
    let exact = decimal(token)?;
    (decimal(&format!("{double:e}"))? != exact).then(|| {
        let (negative, digits, exponent) = exact;
        format!("{}{digits}e{exponent}", if negative { "-" } else { "" })
    })
}

/// A decimal number's value as (negative, significant digits, exponent of ten): `1.50`,
/// `15e-1` and `0.15e1` are all `(false, "15", -1)`; zero is `(false, "0", 0)`.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.strip_prefix('+').unwrap_or(e).parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{whole}{fraction}");
    let mut exponent = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    if !digits.bytes().all(|d| d.is_ascii_digit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    digits = trimmed.to_owned();
    while digits.ends_with('0') {
        digits.pop();
        exponent += 1;
    }
    if digits.is_empty() {
        return Some((false, "0".into(), 0));
    }
    Some((negative, digits, exponent))
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        // As `Value` does; serde_json's parser never yields a NaN or an infinity.
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(Object::from_members(members)))
    }
}

/// An object's key, borrowed from the body unless it had escapes (serde's own `Cow<str>`
/// always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn canonical(raw: &str) -> String {
        let mut out = Vec::new();
        Json::parse(raw.as_bytes())
            .unwrap()
            .write_canonical(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_without_escapes_are_borrowed_and_with_escapes_read() {
        let raw = br#"{"plain": "abc", "escaped": "a\"b\u00e9", "k\u0041": 1}"#;
        let json = Json::parse(raw).unwrap();
        assert!(matches!(
            json.get("plain"),
            Some(Json::String(Cow::Borrowed("abc")))
        ));
        assert_eq!(json.get("escaped").and_then(Json::as_str), Some("a\"bé"));
        assert!(json.get("kA").is_some(), "an escaped key is read unescaped");
    }

    #[test]
    fn members_are_sorted_and_a_repeated_key_keeps_its_last_value() {
        assert_eq!(
            canonical(r#"{"b":1,"a":2,"c":{"z":[],"y":null}}"#),
            r#"{"a":2,"b":1,"c":{"y":null,"z":[]}}"#
        );
        assert_eq!(
            canonical(r#"{"a":1,"b":0,"a":2,"a":3}"#),
            r#"{"a":3,"b":0}"#
        );
        let value: Value = serde_json::from_str(r#"{"a":1,"b":0,"a":2,"a":3}"#).unwrap();
        assert_eq!(canonical(r#"{"a":1,"b":0,"a":2,"a":3}"#), value.to_string());
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "nul",
            "1e400",
            "\"\\x\"",
            "{} {}",
        ] {
            let ours = Json::parse(bad.as_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<Value>(bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{bad:?}");
            assert!(ours.is_err(), "{bad:?}");
        }
        for (bad, at) in [
            (&b"{\"k\":\"\xff\"}"[..], 6),
            (b"\xef\xbb", 0),
            (b"[1,\x80]", 3),
        ] {
            let err = Json::parse(bad).unwrap_err().to_string();
            assert_eq!(err, format!("invalid UTF-8 at byte {at}"), "{bad:?}");
            assert!(serde_json::from_slice::<Value>(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        let err = Json::parse(deep.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn lookups_and_type_names() {
        let json =
            Json::parse(br#"{"s":"x","b":true,"n":null,"a":[1],"o":{"k":2},"f":1.5}"#).unwrap();
        assert_eq!(json.get("s").and_then(Json::as_str), Some("x"));
        assert_eq!(json.get("b").and_then(Json::as_bool), Some(true));
        assert!(json.get("n").is_some_and(Json::is_null));
        assert!(json.get("missing").is_none());
        assert!(
            json.get("s").and_then(|s| s.get("s")).is_none(),
            "a string has no members"
        );
        let Some(Json::Object(o)) = json.get("o") else {
            panic!("o is an object")
        };
        assert!(o.contains_key("k") && !o.contains_key("j"));
        assert_eq!(json.get("a").map(Json::type_name), Some("an array"));
        let names: Vec<_> = ["s", "b", "n", "a", "o", "f"]
            .iter()
            .map(|k| json.get(k).unwrap().type_name())
            .collect();
        assert_eq!(
            names,
            [
                "a string",
                "a boolean",
                "null",
                "an array",
                "an object",
                "a number"
            ]
        );
    }

    /// Any JSON value; its doubles are not integral, so that its canonical form is
    /// serde_json's compact one (integral doubles are tested in `webhook`).
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12)
                .prop_filter("not integral", |f| f.fract() != 0.0)
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn reads_what_value_reads_and_writes_it_canonically(value in any_json()) {
            for raw in [serde_json::to_vec(&value).unwrap(), serde_json::to_vec_pretty(&value).unwrap()] {
                // What `Value` reads back (serde_json's float parsing is not always exact).
                let read: Value = serde_json::from_slice(&raw).unwrap();
                let mut ours = Vec::new();
                Json::parse(&raw).unwrap().write_canonical(&mut ours);
                prop_assert_eq!(ours, serde_json::to_vec(&read).unwrap());
            }
        }
    }
}
