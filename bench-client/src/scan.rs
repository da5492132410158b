//! Reads the few fields bench-client needs from a server frame's JSON, without building a
//! document: one pass over the top-level object, no allocation.
//!
//! The receive path sees every delivery (a million per second on a big run), so it must
//! not parse whole documents. Values are returned raw (the bytes between the quotes of a
//! string, or the token of a number); nested values are skipped. Strings are returned
//! unescaped only in the sense that they are not unescaped at all: bench-client's own
//! payloads never contain escapes, and fields it does not own are only compared or counted.

/// The fields of a server frame that bench-client reads.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Fields<'a> {
    /// `type`, raw.
    pub kind: &'a [u8],
    /// `seq`, when present and an unsigned integer.
    pub seq: Option<u64>,
    /// `text`, raw (between the quotes); for a message without `text`, the `stamp` of
    /// its `data` object (bench-client's `--data-bytes` payloads).
    pub text: &'a [u8],
    /// `code` of an `error` frame, raw.
    pub code: &'a [u8],
    /// `epoch` of a `joined` frame, raw (the server's room-stream id).
    pub epoch: &'a [u8],
    /// `recovered` of a `joined` that answered a `join` with `since`.
    pub recovered: Option<bool>,
    /// `ref` of an `ack` or `error` (the request's `id`), raw: a string's bytes between
    /// the quotes, or a number's token.
    pub reference: &'a [u8],
}

/// Why a frame could not be scanned: it is not a JSON object bench-client understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed server JSON at byte {0}")]
pub struct ScanError(pub usize);

/// Scans the top-level object in `json` for `type`, `seq`, `text` and `code`.
pub fn scan(json: &[u8]) -> Result<Fields<'_>, ScanError> {
    let mut s = Scanner { b: json, i: 0 };
    let mut out = Fields::default();
    s.ws();
    s.expect(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        return Ok(out);
    }
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.expect(b':')?;
        s.ws();
        match key {
            b"type" => out.kind = s.string()?,
            b"text" => out.text = s.string()?,
            b"data" if s.peek() == Some(b'{') => {
                let stamp = s.stamp()?;
                if out.text.is_empty() {
                    out.text = stamp;
                }
            }
            b"code" => out.code = s.string()?,
            b"epoch" => out.epoch = s.string()?,
            b"recovered" => {
                out.recovered = match s.number()? {
                    b"true" => Some(true),
                    b"false" => Some(false),
                    _ => None,
                }
            }
            b"seq" => out.seq = parse_u64(s.number()?),
            b"ref" if s.peek() == Some(b'"') => out.reference = s.string()?,
            b"ref" => out.reference = s.number()?,
            _ => s.skip_value()?,
        }
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b'}') => return Ok(out),
            _ => return Err(s.err()),
        }
    }
}

/// Parses an unsigned decimal integer; `None` for anything else (sign, fraction, overflow).
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if d.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn err(&self) -> ScanError {
        ScanError(self.i)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(self.err())
        }
    }

    /// A string value: the raw bytes between its quotes (escapes left as they are).
    fn string(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match self.next() {
                Some(b'"') => return Ok(&self.b[start..self.i - 1]),
                Some(b'\\') => {
                    self.next().ok_or(self.err())?;
                }
                Some(_) => {}
                None => return Err(self.err()),
            }
        }
    }

    /// A number, `true`, `false` or `null`: the raw token.
    fn number(&mut self) -> Result<&'a [u8], ScanError> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')) {
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err());
        }
        Ok(&self.b[start..self.i])
    }

    /// Skips any value, nested objects and arrays included.
    /// A `data` object (at `{`): its `stamp` string, raw (empty if it has none); the
    /// rest of the object is skipped.
    fn stamp(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'{')?;
        let mut stamp: &'a [u8] = b"";
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(stamp);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            if key == b"stamp" && self.peek() == Some(b'"') {
                stamp = self.string()?;
            } else {
                self.skip_value()?;
            }
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b'}') => return Ok(stamp),
                _ => return Err(self.err()),
            }
        }
    }

    fn skip_value(&mut self) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => self.skip_nested(),
            _ => self.number().map(drop),
        }
    }

    fn skip_nested(&mut self) -> Result<(), ScanError> {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                    continue;
                }
                Some(b'{' | b'[') => depth += 1,
                Some(b'}' | b']') => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                Some(_) => {}
                None => return Err(self.err()),
            }
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_room_message() {
        let f = scan(
            br#"{"type":"message","room":"r-1","seq":119,"user":"b-3","text":"b:0:1:2:3:4:xx","ts":1763800000123}"#,
        )
        .unwrap();
        assert_eq!(f.kind, b"message");
        assert_eq!(f.seq, Some(119));
        assert_eq!(f.text, b"b:0:1:2:3:4:xx");
    }

    #[test]
    fn reads_the_ref_of_an_ack_whether_string_or_number() {
        let f = scan(br#"{"type":"ack","ref":"3.17.2001","room":"r-1","seq":119}"#).unwrap();
        assert_eq!((f.kind, f.reference, f.seq), (&b"ack"[..], &b"3.17.2001"[..], Some(119)));
        let f = scan(br#"{"type":"ack","ref":42,"room":"r-1"}"#).unwrap();
        assert_eq!(f.reference, b"42");
    }

    #[test]
    fn reads_a_joined_after_recovery() {
        let f =
            scan(br#"{"type":"joined","room":"r","members":2,"seq":120,"epoch":"a3f0c2d4e5b61789","recovered":true}"#)
                .unwrap();
        assert_eq!(
            (f.kind, f.seq, f.epoch, f.recovered),
            (&b"joined"[..], Some(120), &b"a3f0c2d4e5b61789"[..], Some(true))
        );
        assert_eq!(scan(br#"{"type":"joined","recovered":false}"#).unwrap().recovered, Some(false));
        assert_eq!(scan(br#"{"type":"joined","seq":1}"#).unwrap().recovered, None);
    }

    #[test]
    fn skips_nested_values_and_escaped_strings() {
        let f = scan(br#" { "users" : ["a\"}", {"x":[1,2]}], "room":"q\"seq\":1", "type":"presence" } "#).unwrap();
        assert_eq!(f.kind, b"presence");
        assert_eq!(f.seq, None);
        let e = scan(br#"{"type":"error","code":"not_member","message":"join first"}"#).unwrap();
        assert_eq!(e.code, b"not_member");
        assert_eq!(scan(b"{}").unwrap(), Fields::default());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in
            [&b""[..], b"[1]", b"{\"type\"", b"{\"type\":\"x\"", b"{\"a\":[1,2}", b"{\"a\":}", b"{\"a\":1 \"b\":2}"]
        {
            assert!(scan(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn u64_parsing_refuses_what_is_not_a_plain_integer() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"1.5"), None);
        assert_eq!(parse_u64(b""), None);
    }
}
