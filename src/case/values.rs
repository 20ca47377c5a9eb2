//! The number forms of the case format, read strictly and written so that they read back.
//!
//! JSON has no NaN or infinity, and `serde_json` writes them as `null`, which cannot be told apart from
//! "no value". Float32 arrays and learning rates therefore accept, besides numbers, the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"`, and results are written that way. Every other number is a plain JSON
//! number: a string, a boolean or `null` where a number is required is an error naming what was found.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::ExpectedSlots;

/// The spelling of float NaN in case files and emitted results.
pub const NAN: &str = "NaN";
/// The spelling of float +infinity in case files and emitted results.
pub const INFINITY: &str = "Infinity";
/// The spelling of float -infinity in case files and emitted results.
pub const NEG_INFINITY: &str = "-Infinity";

const FLOAT_EXPECTING: &str = "a number, \"NaN\", \"Infinity\" or \"-Infinity\"";

fn non_finite<E: de::Error>(s: &str, exp: &dyn de::Expected) -> Result<f64, E> {
    match s {
        NAN => Ok(f64::NAN),
        INFINITY => Ok(f64::INFINITY),
        NEG_INFINITY => Ok(f64::NEG_INFINITY),
        _ => Err(E::invalid_value(Unexpected::Str(s), exp)),
    }
}

/// A float32 element: a number within float32's range or one of the three non-finite strings.
struct F32(f32);

impl<'de> Deserialize<'de> for F32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = F32;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(FLOAT_EXPECTING)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<F32, E> {
                let x = v as f32;
                // `as` turns a finite value beyond float32's range into infinity: that is a wrong
                // number in the file, not an infinity it asked for.
                if x.is_finite() || !v.is_finite() {
                    Ok(F32(x))
                } else {
                    Err(E::invalid_value(
                        Unexpected::Float(v),
                        &"a number within the float32 range",
                    ))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<F32, E> {
                Ok(F32(v as f32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<F32, E> {
                Ok(F32(v as f32))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<F32, E> {
                non_finite(v, &self).map(|x| F32(x as f32))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON array of `T`; what errors call it expected is `T::LIST`.
pub(crate) struct List<T>(pub Vec<T>);

/// The name of a list of this element in error messages.
pub(crate) trait Listed {
    const LIST: &'static str;
}

impl<'de, T: Deserialize<'de> + Listed> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Listed> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::LIST)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    out.push(x);
                }
                Ok(List(out))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

impl Listed for F32 {
    const LIST: &'static str = "a list of numbers";
}
impl Listed for F32s {
    const LIST: &'static str = "a list of lists of numbers";
}
impl Listed for Option<F32s> {
    const LIST: &'static str = "a list of lists of numbers (or null)";
}

/// A list of float32 elements.
pub(crate) struct F32s(pub Vec<f32>);

impl<'de> Deserialize<'de> for F32s {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        List::<F32>::deserialize(d).map(|l| F32s(l.0.into_iter().map(|F32(x)| x).collect()))
    }
}

/// A map from slot name to per-variable arrays (entries may be `null`). Written by hand rather than
/// derived for `BTreeMap` because the derived map keeps the last of two equal keys silently.
fn slot_map<'de, D: Deserializer<'de>>(d: D) -> Result<ExpectedSlots, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = ExpectedSlots;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of slot name to one array per variable")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let values: List<Option<F32s>> = map.next_value()?;
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("slot {key:?} given twice")));
                }
                out.insert(key, values.0.into_iter().map(|v| v.map(|l| l.0)).collect());
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// `#[serde(deserialize_with)]`: a list of float32 values.
pub(crate) fn f32s<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    F32s::deserialize(d).map(|v| v.0)
}

/// `#[serde(deserialize_with)]`: one list of float32 values per variable.
pub(crate) fn f32_lists<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f32>>, D::Error> {
    List::<F32s>::deserialize(d).map(|l| l.0.into_iter().map(|v| v.0).collect())
}

/// `#[serde(deserialize_with)]`: slots of an expected state (entries may be `null`).
pub(crate) fn expected_slots<'de, D: Deserializer<'de>>(d: D) -> Result<ExpectedSlots, D::Error> {
    slot_map(d)
}

/// A JSON number read as f64 (integers included); nothing else. Holds what the error message says
/// was expected.
struct Num(&'static str);

impl Visitor<'_> for Num {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
}

/// A JSON number, or one of the non-finite strings (learning rates of states).
struct Float;

impl Visitor<'_> for Float {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(FLOAT_EXPECTING)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        non_finite(v, &self)
    }
}

/// `#[serde(deserialize_with)]`: a number (not null, not a string).
pub(crate) fn num<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Num("a number"))
}

/// `#[serde(deserialize_with)]` with `default`: an optional key that, when present, is a number.
pub(crate) fn some_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    num(d).map(Some)
}

/// `#[serde(deserialize_with)]`: a key that must be present and is a number or `null` (= not used).
pub(crate) fn nullable_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Num("a number or null")).map(Some)
        }
    }
    d.deserialize_option(V)
}

/// `#[serde(deserialize_with)]` with `default`: an optional learning rate (number or non-finite string).
pub(crate) fn some_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_any(Float).map(Some)
}

/// A non-negative integer (a count, a dimension, a step number).
struct Uint;

impl Visitor<'_> for Uint {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }
}

/// `#[serde(deserialize_with)]`: a non-negative integer.
pub(crate) fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Uint)
}

/// `#[serde(deserialize_with)]` with `default`: an optional key that, when present, is a
/// non-negative integer.
pub(crate) fn some_uint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    uint(d).map(Some)
}

/// `#[serde(deserialize_with)]`: a key that must be present, a non-negative integer or `null`.
pub(crate) fn some_nullable_uint<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<u64>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            uint(d).map(Some)
        }
    }
    d.deserialize_option(V).map(Some)
}

/// `#[serde(deserialize_with)]`: a shape, a list of non-negative integers.
pub(crate) fn dims<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    struct Dim(usize);
    impl<'de> Deserialize<'de> for Dim {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = uint(d)?;
            usize::try_from(v)
                .map(Dim)
                .map_err(|_| de::Error::invalid_value(Unexpected::Unsigned(v), &"a dimension"))
        }
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<usize>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of non-negative integers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<usize>, A::Error> {
            let mut out = Vec::new();
            while let Some(Dim(x)) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

/// Sparse row indices, a list of integers (range checked later, with the variable's shape at hand).
pub(crate) struct IndexList(pub Vec<i64>);

impl<'de> Deserialize<'de> for IndexList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Int(i64);
        impl<'de> Deserialize<'de> for Int {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = Int;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an integer")
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                        Ok(Int(v))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                        i64::try_from(v)
                            .map(Int)
                            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &"a row index"))
                    }
                }
                d.deserialize_any(V)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IndexList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IndexList, A::Error> {
                let mut out = Vec::new();
                while let Some(Int(x)) = seq.next_element()? {
                    out.push(x);
                }
                Ok(IndexList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `#[serde(deserialize_with)]` with `default`: an optional key that, when present, is not `null`.
pub(crate) fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A float written so that it reads back: finite values as the shortest JSON number that round-trips,
/// the others as [`NAN`], [`INFINITY`] or [`NEG_INFINITY`].
pub(crate) struct Out32(pub f32);

impl Serialize for Out32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_finite() {
            s.serialize_f32(x)
        } else {
            s.serialize_str(non_finite_name(f64::from(x)))
        }
    }
}

/// As [`Out32`] for an f64.
pub(crate) struct Out64(pub f64);

impl Serialize for Out64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f64(self.0)
        } else {
            s.serialize_str(non_finite_name(self.0))
        }
    }
}

fn non_finite_name(x: f64) -> &'static str {
    if x.is_nan() {
        NAN
    } else if x > 0.0 {
        INFINITY
    } else {
        NEG_INFINITY
    }
}

struct Out32s<'a>(&'a [f32]);

impl Serialize for Out32s<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|&x| Out32(x)))
    }
}

/// `#[serde(serialize_with)]`: one float32 array per variable.
pub(crate) fn ser_f32_lists<S: Serializer>(v: &[Vec<f32>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| Out32s(x)))
}

/// `#[serde(serialize_with)]`: slot name to one float32 array per variable.
pub(crate) fn ser_slots<S: Serializer>(v: &ExpectedSlots, s: S) -> Result<S::Ok, S::Error> {
    // One array per variable, `null` where the variable has no such slot.
    struct Lists<'a>(&'a [Option<Vec<f32>>]);
    impl Serialize for Lists<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|l| l.as_deref().map(Out32s)))
        }
    }
    let mut map = s.serialize_map(Some(v.len()))?;
    for (k, lists) in v {
        map.serialize_entry(k, &Lists(lists))?;
    }
    map.end()
}

/// `#[serde(serialize_with)]`: an optional learning rate.
pub(crate) fn ser_opt_f64<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => Out64(*x).serialize(s),
        None => s.serialize_none(),
    }
}

/// A struct read only from a JSON object. `serde`'s derived structs also accept a JSON array and fill
/// the fields by position (`["w", [], [1]]` as a variable); a case must name its keys, so every struct
/// of the format is read through this.
pub(crate) struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `#[serde(deserialize_with)]`: a struct, from an object only.
pub(crate) fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Obj::deserialize(d).map(|o| o.0)
}

/// `#[serde(deserialize_with)]` with `default`: an optional struct, from an object only (not `null`).
pub(crate) fn some_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    object(d).map(Some)
}

/// `#[serde(deserialize_with)]`: a list of structs, each from an object only.
pub(crate) fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<Obj<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

/// `#[serde(deserialize_with)]` with `default`: an optional list of structs (not `null`).
pub(crate) fn some_objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    objects(d).map(Some)
}

/// `#[serde(deserialize_with)]`: an object of name to struct, a key given twice being an error.
pub(crate) fn object_map<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<String, T>, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = BTreeMap<String, T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let Obj(value) = map.next_value()?;
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("key {key:?} given twice")));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}
