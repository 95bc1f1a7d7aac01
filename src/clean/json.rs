//! The JSON the cleaning operators read: one record's top-level object, keeping only the
//! keys its operator reads (see [`Keys`]), with string values borrowed from the record's
//! bytes (copied only when they contain escapes), numbers, booleans and nulls inline, and
//! nested arrays/objects kept whole as [`serde_json::Value`] (no field of the contract is
//! nested; they are only ever shown in a reject's detail).
//!
//! Same semantics as `serde_json::Value`: numbers are what `Value` would hold, a key given
//! twice keeps its last value, a text `Value` refuses is refused here with serde_json's
//! message (keys nobody reads are parsed and checked all the same). What it saves is the
//! per-key and per-string allocations and the map a `Value` builds, and the search for
//! each key afterwards: a key's slot is found once, while parsing. Records in the usual
//! flat shape are read by `flat`, a one-pass reader that answers only when its answer is
//! serde_json's; everything else goes through serde_json itself.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

mod flat;

/// One value of the top-level object.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    /// An array or object (boxed: rare, and unboxed it would make every field larger).
    Nested(Box<Value>),
}

impl Field<'_> {
    /// The value as JSON text (for reject details).
    pub fn to_json(&self) -> String {
        match self {
            Field::Null => "null".into(),
            Field::Bool(b) => b.to_string(),
            Field::Number(n) => n.to_string(),
            Field::Str(s) => Value::from(s.as_ref()).to_string(),
            Field::Nested(v) => v.to_string(),
        }
    }

    /// Converts a `Value` (tests, and anything built in memory).
    pub fn from_value(v: &Value) -> Field<'static> {
        match v {
            Value::Null => Field::Null,
            Value::Bool(b) => Field::Bool(*b),
            Value::Number(n) => Field::Number(n.clone()),
            Value::String(s) => Field::Str(Cow::Owned(s.clone())),
            nested => Field::Nested(Box::new(nested.clone())),
        }
    }
}

/// The top-level keys one cleaning operator reads, in slot order: the order the real
/// producers send them (as in the sample records), which the fast reader uses to guess
/// each next key. Any order is read correctly; this one is read faster. The built-in
/// generator writes keys alphabetically, so its records miss the guess and take the lookup.
pub trait Keys {
    const NAMES: &'static [&'static str];
    /// The slot of each name by `key_hash` (built at compile time).
    const BY_HASH: [u8; HASH_SLOTS] = hash_table(Self::NAMES);
}

/// Most keys any operator reads (pin: 11).
pub const MAX_KEYS: usize = 12;

/// The slot of `key` among `K`'s names: the one name with the key's hash, compared once.
/// (A search through the names cost about 1,650 instructions per record, a sixth of the
/// cleaning, when the keys came in another order than `K::NAMES`: the fast reader's guess
/// then misses on every key.)
#[inline(always)]
fn slot<K: Keys>(key: &str) -> Option<usize> {
    match K::BY_HASH[key_hash(key.as_bytes())] {
        NO_NAME => None,
        SHARED => K::NAMES.iter().position(|n| *n == key),
        s => {
            let name = K::NAMES[usize::from(s)].as_bytes();
            (name.len() == key.len() && flat::same(name, key.as_bytes())).then_some(usize::from(s))
        }
    }
}

/// Entries of a [`Keys::BY_HASH`] table.
const HASH_SLOTS: usize = 32;
/// No name has this hash.
const NO_NAME: u8 = u8::MAX;
/// Several names have this hash: search them all (none of pinstream's operators has one).
const SHARED: u8 = u8::MAX - 1;

/// Length plus first and last byte: distinct for the names of each operator.
#[inline(always)]
const fn key_hash(key: &[u8]) -> usize {
    match key {
        [] => 0,
        [first, .., last] => (key.len() + *first as usize + *last as usize) % HASH_SLOTS,
        [only] => (1 + 2 * *only as usize) % HASH_SLOTS,
    }
}

const fn hash_table(names: &[&str]) -> [u8; HASH_SLOTS] {
    assert!(names.len() <= MAX_KEYS);
    let mut table = [NO_NAME; HASH_SLOTS];
    let mut i = 0;
    while i < names.len() {
        let h = key_hash(names[i].as_bytes());
        table[h] = if table[h] == NO_NAME { i as u8 } else { SHARED };
        i += 1;
    }
    table
}

/// A record's top-level JSON object: the values of the keys `K` names (the last one when a
/// key is given more than once); other keys were parsed and dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<'a, K> {
    slots: [Option<Field<'a>>; MAX_KEYS],
    keys: PhantomData<fn() -> K>,
}

impl<'a, K: Keys> Object<'a, K> {
    fn empty() -> Self {
        Object {
            slots: Default::default(),
            keys: PhantomData,
        }
    }

    /// The value of `key`, one of `K::NAMES`.
    #[inline(always)]
    pub fn get(&self, key: &str) -> Option<&Field<'a>> {
        let i = slot::<K>(key);
        debug_assert!(i.is_some(), "`{key}` is not among the keys read");
        self.slots[i?].as_ref()
    }
}

/// What a record's JSON text turned out to be.
#[expect(
    clippy::large_enum_variant,
    reason = "one per record, on the stack; boxing would allocate per record"
)]
pub enum TopLevel<'a, K> {
    Object(Object<'a, K>),
    /// Anything else, by its kind ("a string", "an array", ...).
    Other(&'static str),
}

/// Parses JSON text, keeping the keys `K` names; serde_json's error when it is not JSON.
/// Flat objects in the usual shape take a faster one-pass reader (`flat`) that answers
/// only what serde_json would; everything else is serde_json's.
pub fn parse<K: Keys>(text: &str) -> Result<TopLevel<'_, K>, serde_json::Error> {
    match parse_flat(text) {
        Some(obj) => Ok(TopLevel::Object(obj)),
        None => parse_with_serde_json(text),
    }
}

/// The fast path of [`parse`] alone: the object when `flat` can decide, else `None`
/// (then [`parse_with_serde_json`] decides).
#[inline]
pub fn parse_flat<K: Keys>(text: &str) -> Option<Object<'_, K>> {
    flat::parse(text)
}

/// [`parse`] without the fast path.
pub fn parse_with_serde_json<K: Keys>(text: &str) -> Result<TopLevel<'_, K>, serde_json::Error> {
    serde_json::from_str(text)
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Field::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Field::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Field::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // As `Value` does: a float JSON cannot hold becomes null.
        Ok(Number::from_f64(n).map_or(Field::Null, Field::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Field::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(|v| Field::Nested(Box::new(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(|v| Field::Nested(Box::new(v)))
    }
}

/// Reads an object key as its slot among `K`'s names (no copy, escaped or not).
struct SlotOf<K>(PhantomData<fn() -> K>);

impl<'de, K: Keys> DeserializeSeed<'de> for SlotOf<K> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, K: Keys> Visitor<'de> for SlotOf<K> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(slot::<K>(s))
    }
}

impl<'de, K: Keys> Deserialize<'de> for TopLevel<'de, K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor(PhantomData))
    }
}

struct TopLevelVisitor<K>(PhantomData<fn() -> K>);

impl<'de, K: Keys> Visitor<'de> for TopLevelVisitor<K> {
    type Value = TopLevel<'de, K>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots: [Option<Field<'de>>; MAX_KEYS] = Default::default();
        while let Some(slot) = map.next_key_seed(SlotOf::<K>(PhantomData))? {
            // A key nobody reads is parsed as fully as `Value` would (so what `Value`
            // refuses is refused here too), then dropped.
            let value: Field<'de> = map.next_value()?;
            if let Some(i) = slot {
                slots[i] = Some(value);
            }
        }
        Ok(TopLevel::Object(Object {
            slots,
            keys: PhantomData,
        }))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        // Parsed as `Value` would (what it refuses, e.g. `[1e400]`, is invalid JSON here
        // too); only rejected records take this path.
        Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(TopLevel::Other("an array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // `Value` turns a float it cannot hold into null.
        Ok(TopLevel::Other(if n.is_finite() {
            "a number"
        } else {
            "null"
        }))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a string"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    enum Test {}
    impl Keys for Test {
        const NAMES: &'static [&'static str] =
            &["s", "e", "i", "u", "f", "b", "n", "a", "o", "k", "missing"];
    }

    #[test]
    fn every_name_finds_its_slot_and_nothing_else_does() {
        fn check<K: Keys>(shared_allowed: bool) {
            for (i, name) in K::NAMES.iter().enumerate() {
                assert_eq!(slot::<K>(name), Some(i), "{name}");
            }
            if !shared_allowed {
                assert!(!K::BY_HASH.contains(&SHARED), "{:?}", K::NAMES);
            }
            // Same length, first and last byte as a name (so the same hash), or none.
            for other in ["", "x", "iaaax", "tiTLe", "downloaded", "index ", "Index"] {
                assert_eq!(slot::<K>(other), None, "{other}");
            }
        }
        check::<crate::clean::pin::PinKeys>(false);
        check::<crate::clean::geo::GeoKeys>(false);
        check::<crate::clean::user::UserKeys>(false);
        // Single letters share hashes here ("e" and "u"): searched, still exact.
        assert!(Test::BY_HASH.contains(&SHARED));
        check::<Test>(true);
    }

    fn object(text: &str) -> Object<'_, Test> {
        match parse(text).unwrap() {
            TopLevel::Object(o) => o,
            TopLevel::Other(k) => panic!("not an object: {k}"),
        }
    }

    #[test]
    fn fields_are_what_a_value_would_hold() {
        let text = r#"{"s":"plain","e":"a\"b\u00e9","i":-3,"u":18446744073709551615,"f":1.5,"b":true,"n":null,"a":[1,{"x":2}],"o":{"k":"v"}}"#;
        let o = object(text);
        let v: Value = serde_json::from_str(text).unwrap();
        for (k, expected) in v.as_object().unwrap() {
            assert_eq!(o.get(k), Some(&Field::from_value(expected)), "{k}");
            assert_eq!(o.get(k).unwrap().to_json(), expected.to_string(), "{k}");
        }
        assert!(matches!(
            o.get("s"),
            Some(Field::Str(Cow::Borrowed("plain")))
        ));
        assert!(matches!(o.get("e"), Some(Field::Str(Cow::Owned(_)))));
        assert_eq!(o.get("missing"), None);
    }

    #[test]
    fn keys_nobody_reads_are_checked_as_value_checks_them_then_dropped() {
        let text = r#"{"zz":1e400}"#;
        let ours = parse::<Test>(text).err().expect("refused").to_string();
        let theirs = serde_json::from_str::<Value>(text).unwrap_err().to_string();
        assert_eq!(ours, theirs);
        let o = object(r#"{"zz":{"deep":[1,"x\n"]},"\u0073":"escaped key","i":2}"#);
        assert_eq!(o.get("s"), Some(&Field::Str(Cow::Borrowed("escaped key"))));
        assert_eq!(o.get("i"), Some(&Field::Number(2.into())));
        assert_eq!(o.get("k"), None);
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_value_does() {
        let text = r#"{"k":1,"k":"two"}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(object(text).get("k"), Some(&Field::from_value(&v["k"])));
        assert_eq!(v["k"], json!("two"));
    }

    #[test]
    fn non_objects_are_named_and_invalid_json_keeps_serde_json_messages() {
        for (text, kind) in [
            ("[1,[2]]", "an array"),
            ("\"x\"", "a string"),
            ("7", "a number"),
            ("-7", "a number"),
            ("7.5", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            assert!(
                matches!(parse::<Test>(text), Ok(TopLevel::Other(k)) if k == kind),
                "{text}"
            );
        }
        for bad in ["{", "{\"a\":}", "{} x", "", "{\"a\":1,}", "[1e400]"] {
            let ours = parse::<Test>(bad).err().unwrap().to_string();
            let theirs = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{bad}");
        }
    }
}
