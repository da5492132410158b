//! Who a connection is: JWTs validated at the upgrade, guests when allowed, room
//! allow-lists, and room passwords.
//!
//! * [`jwt`]: token validation (HS256 secret; RS256/ES256 public keys), claims;
//! * [`grants`]: the `rooms` claim's `*` patterns;
//! * [`password`]: argon2 hashing on the blocking pool.

pub mod grants;
pub mod jwt;
pub mod password;

use std::sync::Arc;

use crate::config::Config;
use crate::protocol;

pub use jwt::{Claims, JwtError, Verifier};

/// Who an upgraded connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id: the token's `sub`, or the guest's name.
    pub user: Arc<str>,
    /// Display name (the token's `name`).
    pub name: Option<String>,
    /// Rooms the token allows (`None`: any).
    pub rooms: Option<Vec<grants::Pattern>>,
    /// Token expiry, seconds since the Unix epoch (`None` for guests).
    pub expires: Option<u64>,
}

/// Why an upgrade is refused before it happens (HTTP 401, or 400 for a bad name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Guests are not allowed and no token was presented.
    #[error("a token is required (?token= or Sec-WebSocket-Protocol: bearer.<token>)")]
    TokenRequired,
    /// The token is invalid, expired, not yet valid, or signed with the wrong key.
    #[error("invalid token: {0}")]
    BadToken(#[from] JwtError),
    /// Tokens were presented but the server has no key configured.
    #[error("this server does not accept tokens (no JWT key configured)")]
    NoKeyConfigured,
    /// The guest name is not acceptable.
    #[error("`name` must be 1 to 64 characters without control characters, `@` or `:`")]
    BadName,
}

impl AuthError {
    /// HTTP status answering this refusal.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::BadName => 400,
            _ => 401,
        }
    }

    /// JSON error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::TokenRequired => "token_required",
            AuthError::BadToken(_) | AuthError::NoKeyConfigured => "invalid_token",
            AuthError::BadName => "invalid_name",
        }
    }
}

/// Decides who may connect: built once from the configuration, shared read-only by all
/// shards (it holds keys, never mutable state).
#[derive(Debug)]
pub struct Authenticator {
    verifier: Option<Verifier>,
    allow_guests: bool,
}

impl Authenticator {
    /// From the configuration: a verifier when a JWT key is configured; guests allowed
    /// when asked for, or when no key is configured at all (the zero-config default).
    pub fn new(cfg: &Config) -> Result<Authenticator, JwtError> {
        let verifier = Verifier::from_config(cfg)?;
        let allow_guests = cfg.allow_guests || verifier.is_none();
        Ok(Authenticator { verifier, allow_guests })
    }

    /// One line for the startup log saying plainly who may connect.
    pub fn describe(&self) -> String {
        match (&self.verifier, self.allow_guests) {
            (None, _) => "no JWT key configured: anyone may connect as a guest (?name=)".into(),
            (Some(v), true) => format!("JWT ({}) required for users; guests (?name=) also allowed", v.algorithms()),
            (Some(v), false) => format!("JWT ({}) required: guests are refused", v.algorithms()),
        }
    }

    /// Whether tokens can be checked (a `refresh` needs that).
    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// Decides the identity of an upgrade from its token (if any), its `?name=` (if
    /// any), and the current time (seconds since the Unix epoch).
    pub fn authenticate(&self, token: Option<&str>, name: Option<&str>, now: u64) -> Result<Identity, AuthError> {
        if let Some(token) = token {
            let verifier = self.verifier.as_ref().ok_or(AuthError::NoKeyConfigured)?;
            let claims = verifier.verify(token, now)?;
            return Ok(claims.into_identity());
        }
        if !self.allow_guests {
            return Err(AuthError::TokenRequired);
        }
        let user = match name {
            Some(n) if protocol::validate_user_name(n) => n.to_owned(),
            Some(_) => return Err(AuthError::BadName),
            None => format!("guest-{:06x}", fastrand::u32(..0x100_0000)),
        };
        Ok(Identity { user: Arc::from(user), name: None, rooms: None, expires: None })
    }
}

/// Finds a token in an offered `Sec-WebSocket-Protocol` list: the entry `bearer.<jwt>`.
/// Returns the token and the protocol the server should select: another offered
/// protocol when there is one (so the token is not echoed back), else the bearer entry
/// (a browser fails the connection unless one offered protocol is selected).
pub fn token_from_protocols(protocols: &[String]) -> Option<(&str, &str)> {
    let bearer = protocols.iter().find_map(|p| p.strip_prefix("bearer."))?;
    let selected = protocols.iter().find(|p| !p.starts_with("bearer.")).unwrap_or_else(|| {
        // Only the bearer entry was offered: select it.
        protocols.iter().find(|p| p.starts_with("bearer.")).unwrap_or(&protocols[0])
    });
    Some((bearer, selected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_in_protocols() {
        let offered = vec!["corecast".to_owned(), "bearer.abc.def.ghi".to_owned()];
        assert_eq!(token_from_protocols(&offered), Some(("abc.def.ghi", "corecast")));
        let only = vec!["bearer.t".to_owned()];
        assert_eq!(token_from_protocols(&only), Some(("t", "bearer.t")));
        assert_eq!(token_from_protocols(&["chat".to_owned()]), None);
    }

    #[test]
    fn guests_by_configuration() {
        let open = Authenticator::new(&Config::default()).unwrap();
        assert_eq!(&*open.authenticate(None, Some("ann"), 0).unwrap().user, "ann");
        assert!(open.authenticate(None, None, 0).unwrap().user.starts_with("guest-"));
        assert_eq!(open.authenticate(None, Some("a:b"), 0), Err(AuthError::BadName));
        assert_eq!(open.authenticate(Some("x"), None, 0), Err(AuthError::NoKeyConfigured));
        let closed = Config { jwt_secret: Some("s".repeat(32)), ..Config::default() };
        let closed = Authenticator::new(&closed).unwrap();
        assert_eq!(closed.authenticate(None, Some("ann"), 0), Err(AuthError::TokenRequired));
        assert!(closed.describe().contains("guests are refused"));
        let both = Config { jwt_secret: Some("s".repeat(32)), allow_guests: true, ..Config::default() };
        assert!(Authenticator::new(&both).unwrap().authenticate(None, Some("ann"), 0).is_ok());
    }
}
