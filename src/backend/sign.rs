//! Request signatures: `X-Corecast-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//!
//! Exactly the request body is signed, byte for byte as sent. Every body corecast sends
//! (webhook batches and proxy requests) carries its creation time in milliseconds
//! (`sent_at` or `ts`), so a replayed body is recognizable by its age: the
//! `X-Corecast-Timestamp` header repeats it for receivers that check the age before
//! parsing, and because the body is signed the two cannot be changed apart.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-corecast-signature";
/// The timestamp header's name (milliseconds since the Unix epoch, as in the body).
pub const TIMESTAMP_HEADER: &str = "x-corecast-timestamp";

/// The header value for `body` under `secret`: `sha256=` and 64 lowercase hex digits.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; the error case cannot happen.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", data_encoding::HEXLOWER.encode(&digest))
}

/// Whether `header` is a valid signature of `body` under `secret` (constant-time
/// comparison), as a receiver checks it.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = signature(secret, body);
    expected.len() == header.len() && bool::from(expected.as_bytes().ct_eq(header.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn verification_rejects_any_change() {
        let sig = signature(b"secret", b"{\"a\":1}");
        assert!(verify(b"secret", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", b"{\"a\":2}", &sig));
        assert!(!verify(b"other", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", b"{\"a\":1}", &sig[..sig.len() - 1]));
        assert!(!verify(b"secret", b"{\"a\":1}", ""));
    }
}
