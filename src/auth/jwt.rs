//! JWT validation with the `jsonwebtoken` crate: HS256 with a shared secret, RS256/ES256
//! with a PEM public key. `alg: none` and algorithm confusion (an HS token checked with a
//! public key as secret) are refused because every key accepts only its own algorithms.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::grants::Pattern;
use super::Identity;
use crate::config::Config;

/// Why a token was refused (or a key could not be loaded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The public key file could not be read or parsed.
    #[error("cannot load JWT public key {path}: {message}")]
    Key {
        /// File path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The token's algorithm has no configured key (including `none`).
    #[error("algorithm not accepted")]
    Algorithm,
    /// Expired (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// Not valid yet (`nbf` in the future beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// Bad signature, bad format, missing claims, wrong issuer or audience.
    #[error("{0}")]
    Invalid(String),
}

/// The claims corecast reads. Others are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    pub name: Option<String>,
    /// Expiry (seconds since the Unix epoch); required.
    pub exp: u64,
    /// Rooms this token may join (`*` wildcards); absent: any room.
    pub rooms: Option<Vec<String>>,
}

impl Claims {
    /// The identity these claims grant.
    pub fn into_identity(self) -> Identity {
        Identity {
            user: Arc::from(self.sub),
            name: self.name,
            rooms: self.rooms.map(|r| r.into_iter().map(Pattern::new).collect()),
            expires: Some(self.exp),
        }
    }
}

/// Checks tokens against the configured keys.
pub struct Verifier {
    keys: Vec<(DecodingKey, Vec<Algorithm>)>,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.algorithms()).finish()
    }
}

impl Verifier {
    /// A verifier for the keys in `cfg`, or `None` when none is configured.
    pub fn from_config(cfg: &Config) -> Result<Option<Verifier>, JwtError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            keys.push((DecodingKey::from_secret(secret.as_bytes()), vec![Algorithm::HS256]));
        }
        if let Some(path) = &cfg.jwt_public_key {
            let err = |message: String| JwtError::Key { path: path.display().to_string(), message };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let key = match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => (k, vec![Algorithm::RS256]),
                Err(_) => match DecodingKey::from_ec_pem(&pem) {
                    Ok(k) => (k, vec![Algorithm::ES256]),
                    Err(e) => return Err(err(format!("not an RSA or EC public key in PEM form ({e})"))),
                },
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            keys,
            leeway: cfg.jwt_leeway,
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
        }))
    }

    /// The accepted algorithms, for logs.
    pub fn algorithms(&self) -> String {
        let names: Vec<String> = self.keys.iter().flat_map(|(_, a)| a.iter().map(|a| format!("{a:?}"))).collect();
        names.join(", ")
    }

    /// Whether a token expiring at `exp` has expired at `now`, beyond the leeway.
    pub fn expired(&self, exp: u64, now: u64) -> bool {
        exp.saturating_add(self.leeway) < now
    }

    /// Validates `token` at time `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Algorithm)?;
        let (key, algs) = self.keys.iter().find(|(_, algs)| algs.contains(&header.alg)).ok_or(JwtError::Algorithm)?;
        let mut v = Validation::new(header.alg);
        v.algorithms = algs.clone();
        v.leeway = self.leeway;
        v.validate_nbf = true;
        // Checked below against `now`, so tests and the sweep use one clock.
        v.validate_exp = false;
        v.required_spec_claims = HashSet::from(["sub".to_owned(), "exp".to_owned()]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => JwtError::Algorithm,
            _ => JwtError::Invalid(e.to_string()),
        })?;
        if self.expired(data.claims.exp, now) {
            return Err(JwtError::Expired);
        }
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(JwtError::Invalid("`sub` must be 1 to 256 bytes".into()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &str = "an-hs256-test-secret-of-32-bytes";
    const NOW: u64 = 1_800_000_000;

    fn hs(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn verifier() -> Verifier {
        let cfg = Config { jwt_secret: Some(SECRET.into()), ..Config::default() };
        Verifier::from_config(&cfg).unwrap().unwrap()
    }

    #[test]
    fn valid_token_gives_its_claims() {
        let t = hs(json!({"sub":"u1","name":"Ann","exp":NOW + 60,"rooms":["team-*"]}));
        let c = verifier().verify(&t, NOW).unwrap();
        assert_eq!((c.sub.as_str(), c.name.as_deref()), ("u1", Some("Ann")));
        let id = c.into_identity();
        assert!(super::super::grants::allows(id.rooms.as_deref().unwrap(), "team-red"));
    }

    #[test]
    fn time_claims_use_a_small_leeway() {
        let v = verifier();
        assert!(v.verify(&hs(json!({"sub":"u","exp":NOW - 10})), NOW).is_ok(), "within leeway");
        assert_eq!(v.verify(&hs(json!({"sub":"u","exp":NOW - 100})), NOW), Err(JwtError::Expired));
        // jsonwebtoken checks nbf against the real clock: a far-future nbf is refused.
        let far = hs(json!({"sub":"u","exp":u64::MAX / 2,"nbf":u64::MAX / 4}));
        assert_eq!(v.verify(&far, NOW), Err(JwtError::NotYetValid));
    }

    #[test]
    fn wrong_key_none_and_missing_claims_are_refused() {
        let v = verifier();
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"u","exp":NOW + 60}),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert!(matches!(v.verify(&other, NOW), Err(JwtError::Invalid(_))));
        // alg none: header {"alg":"none"} with an empty signature.
        let b64 = |s: &str| data_encoding::BASE64URL_NOPAD.encode(s.as_bytes());
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&json!({"sub":"u","exp":NOW + 60}).to_string())
        );
        assert_eq!(v.verify(&none, NOW), Err(JwtError::Algorithm));
        assert!(matches!(v.verify(&hs(json!({"exp":NOW + 60})), NOW), Err(JwtError::Invalid(_))), "no sub");
        assert!(matches!(v.verify(&hs(json!({"sub":"u"})), NOW), Err(JwtError::Invalid(_))), "no exp");
        // An RS256 token cannot be checked with the HS key.
        let rs_header = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(v.verify(&rs_header, NOW), Err(JwtError::Algorithm));
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(t in ".{0,300}", parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5)) {
            let v = verifier();
            let _ = v.verify(&t, NOW);
            let _ = v.verify(&parts.join("."), NOW);
        }
    }
}
