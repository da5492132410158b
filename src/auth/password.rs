//! Room passwords: argon2id hashes, computed on the blocking-thread pool (a hash costs
//! tens of milliseconds on purpose; it must never stall a shard's event loop).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::rt;

/// Longest accepted password, in bytes (argon2 itself takes more; nobody needs to).
pub const MAX_PASSWORD: usize = 256;

/// Hashes `password` (PHC string format) off the event loop.
pub async fn hash(password: String) -> Option<String> {
    rt::blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).ok().map(|h| h.to_string())
    })
    .await
}

/// Checks `password` against a PHC hash off the event loop.
pub async fn verify(password: String, hash: std::sync::Arc<str>) -> bool {
    rt::blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
}

/// The same as [`hash`] and [`verify`] but on the calling thread (tests, tools).
pub fn hash_now(password: &str) -> Option<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).ok().map(|h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let a = hash_now("hunter2").unwrap();
        let b = hash_now("hunter2").unwrap();
        assert_ne!(a, b, "salted");
        let ok = |pw: &str, h: &str| {
            PasswordHash::new(h).is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        };
        assert!(ok("hunter2", &a) && !ok("hunter3", &a));
        assert!(a.starts_with("$argon2id$"));
    }
}
