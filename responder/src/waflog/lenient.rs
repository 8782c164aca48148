//! Optional fields read leniently: a WAF record needs only its `timestamp`,
//! `action` and `httpRequest.clientIp` (a Cloudflare record its `ClientIP`
//! and `EdgeStartTimestamp`); any other field may be missing,
//! null, of another type or shaped otherwise (AWS's own "Log examples" page
//! shows a header entry with no `value`) and the record still counts, with
//! that field empty. Nothing is buffered: odd values are skipped as they
//! are read.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A visitor's answer to any scalar it does not want: `$empty`.
macro_rules! scalars_are {
    ($empty:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($empty)
        }
    };
}

/// A string, or empty for any other JSON value.
pub(super) fn string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Cow<'de, str>, D::Error> {
    deserializer.deserialize_any(Text)
}

/// A string if the field holds a non-empty one, else `None`.
pub(crate) fn optional_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    let text = deserializer.deserialize_any(Text)?;
    Ok((!text.is_empty()).then_some(text))
}

/// An entry of `headers` or `labels`: its `name`, and `value` if it has one.
#[derive(Debug)]
pub(super) struct Named<'a> {
    pub name: Cow<'a, str>,
    pub value: Option<Cow<'a, str>>,
}

/// The objects of an array that have a `name`; any other element, or a
/// value that is not an array, is skipped.
pub(super) fn named<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Named<'de>>, D::Error> {
    deserializer.deserialize_any(Entries)
}

struct Text;

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    scalars_are!(Cow::Borrowed(""));

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq).map(|()| Cow::Borrowed(""))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        skip_map(map).map(|()| Cow::Borrowed(""))
    }
}

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

struct Entries;

impl<'de> Visitor<'de> for Entries {
    type Value = Vec<Named<'de>>;

    scalars_are!(Vec::new());

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element_seed(Entry)? {
            entries.extend(entry);
        }
        Ok(entries)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        skip_map(map).map(|()| Vec::new())
    }
}

/// One element of a `named` array: `Some` for an object with a `name`.
struct Entry;

impl<'de> DeserializeSeed<'de> for Entry {
    type Value = Option<Named<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entry {
    type Value = Option<Named<'de>>;

    scalars_are!(None);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut value) = (None, None);
        while let Some(key) = map.next_key_seed(Text)? {
            match key.as_ref() {
                "name" => name = Some(map.next_value_seed(Text)?),
                "value" => value = Some(map.next_value_seed(Text)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(name.map(|name| Named { name, value }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq).map(|()| None)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}
