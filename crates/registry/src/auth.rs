//! Optional authentication for mutating endpoints: a bearer token or HTTP basic auth.

use crate::error::{Error, Result};

/// Credentials the server demands for POST/PUT/DELETE (reads stay open), and that
/// clients and replicating peers send.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// User name (no `:`).
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Auth::Bearer(_) => f.write_str("Auth::Bearer(***)"),
            Auth::Basic { user, .. } => {
                write!(f, "Auth::Basic {{ user: {user:?}, password: *** }}")
            }
        }
    }
}

impl Auth {
    /// Checks the credentials are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Error::InvalidConfig {
            field,
            value: "***".into(),
            reason,
        };
        match self {
            Auth::Bearer(t)
                if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Err(bad("auth.token", "must be non-empty, without spaces"))
            }
            Auth::Basic { user, .. } if user.is_empty() || user.contains(':') => {
                Err(bad("auth.user", "must be non-empty, without ':'"))
            }
            _ => Ok(()),
        }
    }

    /// Parses `bearer:TOKEN` or `basic:USER:PASSWORD` (the server binary's `--auth`).
    pub fn parse(spec: &str) -> Result<Self> {
        let auth = if let Some(token) = spec.strip_prefix("bearer:") {
            Auth::Bearer(token.to_owned())
        } else if let Some(rest) = spec.strip_prefix("basic:") {
            let (user, password) = rest.split_once(':').ok_or_else(|| Error::InvalidConfig {
                field: "auth",
                value: "basic:***".into(),
                reason: "expected basic:USER:PASSWORD",
            })?;
            Auth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            }
        } else {
            return Err(Error::InvalidConfig {
                field: "auth",
                value: "***".into(),
                reason: "expected bearer:TOKEN or basic:USER:PASSWORD",
            });
        };
        auth.validate()?;
        Ok(auth)
    }

    /// The `Authorization` header value.
    #[must_use]
    pub fn header_value(&self) -> String {
        match self {
            Auth::Bearer(t) => format!("Bearer {t}"),
            Auth::Basic { user, password } => {
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
            }
        }
    }

    /// Whether an `Authorization` header carries these credentials (constant-time compare).
    #[must_use]
    pub fn accepts(&self, header: Option<&str>) -> bool {
        let Some(got) = header else { return false };
        let want = self.header_value();
        let scheme_len = want.find(' ').unwrap_or(0);
        // The scheme is case-insensitive; the credentials are not. Compared as
        // bytes: `got` may hold any text, and a byte offset into it need not
        // fall on a character boundary.
        let (got, want) = (got.as_bytes(), want.as_bytes());
        got.len() == want.len()
            && got[..scheme_len].eq_ignore_ascii_case(&want[..scheme_len])
            && constant_time_eq(&got[scheme_len..], &want[scheme_len..])
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc_7617() {
        let a = Auth::Basic {
            user: "Aladdin".into(),
            password: "open sesame".into(),
        };
        assert_eq!(a.header_value(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(a.accepts(Some("basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")));
        assert!(!a.accepts(Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZR==")));
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn bearer_and_parsing() {
        let a = Auth::parse("bearer:s3cret").unwrap();
        assert!(
            a.accepts(Some("Bearer s3cret"))
                && !a.accepts(Some("Bearer s3creT"))
                && !a.accepts(None)
        );
        assert!(Auth::parse("basic:u:p:w").is_ok(), "passwords may hold ':'");
        // Same length as "Bearer s3cret", with a multi-byte character across
        // the scheme's end: refused, not a panic on a char boundary.
        assert!(!a.accepts(Some("Beare\u{e9}s3cret")));
        assert!(!a.accepts(Some("\u{1f600}\u{1f600}\u{1f600}x")));
        assert!(Auth::parse("token").is_err() && Auth::parse("bearer:").is_err());
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
