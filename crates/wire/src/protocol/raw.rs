//! Finding a member's value in a JSON object as the bytes it was written with.
//!
//! A message's `data` (and an API publish's `tags`) is carried **verbatim**: the server
//! splices the bytes it received into the frame it builds, so numbers beyond 64 bits,
//! `\u` escapes and key order reach every receiver exactly as sent, and nothing is
//! re-serialized. simd-json unescapes strings in place while it parses, so the span must
//! be found (and copied) before the parser runs; the parser then validates the whole
//! document, this value included. This scan therefore never decides what is valid JSON:
//! on input it does not understand it simply finds nothing, and it never panics.

/// The value of the top-level member `key` of the JSON object `json`, exactly as written
/// (leading and trailing whitespace excluded). `None` when `json` is not an object, when
/// no member is named `key` as written (a key spelled with escapes does not match), or
/// when the object is malformed before that member. The first such member wins; callers
/// parse the document with a parser that refuses duplicate fields.
pub fn member<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_ws(json, 0);
    if *json.get(i)? != b'{' {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        if *json.get(i)? != b'"' {
            return None;
        }
        let key_end = string_end(json, i)?;
        let name = json.get(i + 1..key_end - 1)?;
        i = skip_ws(json, key_end);
        if *json.get(i)? != b':' {
            return None;
        }
        let start = skip_ws(json, i + 1);
        let end = value_end(json, start)?;
        if name == key {
            return json.get(start..end);
        }
        i = skip_ws(json, end);
        if *json.get(i)? != b',' {
            return None;
        }
        i += 1;
    }
}

/// The elements of the JSON array `json`, each exactly as written. `None` when `json` is
/// not an array or is malformed.
pub fn items(json: &[u8]) -> Option<Vec<&[u8]>> {
    let mut i = skip_ws(json, 0);
    if *json.get(i)? != b'[' {
        return None;
    }
    let mut out = Vec::new();
    i = skip_ws(json, i + 1);
    if *json.get(i)? == b']' {
        return Some(out);
    }
    loop {
        let start = skip_ws(json, i);
        let end = value_end(json, start)?;
        out.push(json.get(start..end)?);
        i = skip_ws(json, end);
        match json.get(i)? {
            b',' => i += 1,
            b']' => return Some(out),
            _ => return None,
        }
    }
}

/// Whether `json` may contain a member named `key` at all: a fast test (a SIMD substring
/// search) so that messages without one pay nothing for [`member`].
pub fn mentions(json: &[u8], key: &[u8]) -> bool {
    // `"key"` with its quotes: a key is always a quoted string.
    let mut quoted = [0u8; 34];
    match quoted.get_mut(1..=key.len()) {
        Some(slot) if key.len() <= 32 => {
            slot.copy_from_slice(key);
            quoted[0] = b'"';
            quoted[key.len() + 1] = b'"';
            memchr::memmem::find(json, &quoted[..key.len() + 2]).is_some()
        }
        _ => true,
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `json[i]` is the opening quote of a string: the index just after its closing quote.
fn string_end(json: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match json.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The index just after the value starting at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = string_end(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(b) = json.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_values_as_written() {
        let j = br#" { "type" : "message", "data" : {"n": 12345678901234567890123, "s":"caf\u00e9 \"}\""} , "x":1}"#;
        assert_eq!(member(j, b"data"), Some(&br#"{"n": 12345678901234567890123, "s":"caf\u00e9 \"}\""}"#[..]));
        assert_eq!(member(j, b"type"), Some(&br#""message""#[..]));
        assert_eq!(member(j, b"x"), Some(&b"1"[..]));
        assert_eq!(member(j, b"n"), None, "only top-level members");
        assert_eq!(member(br#"{"data":[1,[2,{"a":"]"}]],"b":2}"#, b"data"), Some(&br#"[1,[2,{"a":"]"}]]"#[..]));
        assert_eq!(member(br#"{"d\u0061ta":1}"#, b"data"), None, "escaped keys do not match");
        assert_eq!(member(b"[1]", b"data"), None);
        assert_eq!(member(br#"{"data":"#, b"data"), None);
        assert_eq!(member(br#"{"data":"abc"#, b"data"), None);
        assert!(mentions(br#"{"data":1}"#, b"data"));
        assert_eq!(items(br#" [ {"a":[1,"]"]} , 2,"x" ] "#), Some(vec![&br#"{"a":[1,"]"]}"#[..], b"2", br#""x""#]));
        assert_eq!(items(b"[]"), Some(vec![]));
        assert_eq!(items(b"[1,"), None);
        assert_eq!(items(b"{}"), None);
        assert!(!mentions(br#"{"dat":1,"text":"metadata"}"#, b"data"));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_span_is_exactly_the_value(value in json_value(), other in json_value(), pretty in any::<bool>()) {
            let doc = serde_json::json!({"a": other, "data": value, "z": 1});
            let text = if pretty { serde_json::to_vec_pretty(&doc).unwrap() } else { serde_json::to_vec(&doc).unwrap() };
            let span = member(&text, b"data").unwrap();
            let back: serde_json::Value = serde_json::from_slice(span).unwrap();
            prop_assert_eq!(back, doc["data"].clone());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = member(&bytes, b"data");
            let _ = mentions(&bytes, b"data");
        }
    }
}
