//! Authentication of API requests: static bearer tokens read from a file, or
//! ClusterCockpit-compatible Ed25519-signed JWTs in `X-Auth-Token` or `Authorization: Bearer`.
//!
//! No token is ever logged; failures are counted by a closed set of reasons.

use std::path::Path;

use axum::http::HeaderMap;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// The check applied to each request.
pub enum Authenticator {
    /// Every request passes.
    Open,
    /// A request passes when its bearer token equals one of these.
    Tokens(Vec<Vec<u8>>),
    /// A request passes with a JWT signed by this key and not expired.
    Jwt(Box<DecodingKey>),
}

/// The reason a request was not authenticated. The reason names are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` or `X-Auth-Token` header.
    Missing,
    /// A token that is not among the accepted ones, or a JWT with a bad signature or shape.
    Invalid,
    /// A JWT past its `exp` time.
    Expired,
    /// A valid JWT whose `roles` do not allow API use.
    Role,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 3] =
        [AuthFailure::Missing, AuthFailure::Invalid, AuthFailure::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::Role => "role",
        }
    }

    /// The message sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "missing credentials: send Authorization: Bearer <token> or X-Auth-Token: <jwt>"
            }
            AuthFailure::Invalid => "invalid credentials",
            AuthFailure::Expired => "expired token: request a new one",
            AuthFailure::Role => {
                "the token's roles do not allow API use: it needs the role \"api\" alone, or \
                 \"api\" with \"admin\""
            }
        }
    }
}

impl Authenticator {
    /// Builds the authenticator of a config, reading the token file if there is one.
    pub fn from_config(auth: &AuthConfig) -> anyhow::Result<Authenticator> {
        match auth {
            AuthConfig::None => Ok(Authenticator::Open),
            AuthConfig::Token { file } => Ok(Authenticator::Tokens(read_tokens(file)?)),
            AuthConfig::Jwt { public_key } => {
                let key = decode_public_key(public_key)
                    .map_err(|err| anyhow::format_err!("server.jwt_public_key: {err}"))?;
                Ok(Authenticator::Jwt(Box::new(DecodingKey::from_ed_der(&key))))
            }
        }
    }

    /// Checks a request's headers.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        match self {
            Authenticator::Open => Ok(()),
            Authenticator::Tokens(tokens) => {
                let presented = bearer(headers).ok_or(AuthFailure::Missing)?;
                // Compare against every token in constant time, so timing reveals nothing.
                let mut matched = subtle::Choice::from(0);
                for token in tokens {
                    matched |= token.as_slice().ct_eq(presented.as_bytes());
                }
                if bool::from(matched) {
                    Ok(())
                } else {
                    Err(AuthFailure::Invalid)
                }
            }
            Authenticator::Jwt(key) => {
                let token = headers
                    .get("x-auth-token")
                    .and_then(|value| value.to_str().ok())
                    .map(str::trim)
                    .or_else(|| bearer(headers))
                    .ok_or(AuthFailure::Missing)?;
                let mut validation = Validation::new(Algorithm::EdDSA);
                validation.required_spec_claims.clear();
                validation.validate_exp = true;
                validation.leeway = 0;
                match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                    Ok(data) if allows_api(&data.claims) => Ok(()),
                    Ok(_) => Err(AuthFailure::Role),
                    Err(err) => match err.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            Err(AuthFailure::Expired)
                        }
                        _ => Err(AuthFailure::Invalid),
                    },
                }
            }
        }
    }
}

/// Applies cc-backend's rule for its REST API: the `roles` claim is exactly `["api"]`, or
/// contains at least two roles including both `admin` and `api`.
fn allows_api(claims: &serde_json::Value) -> bool {
    let roles: Vec<&str> = claims
        .get("roles")
        .and_then(|roles| roles.as_array())
        .map(|roles| roles.iter().filter_map(|role| role.as_str()).collect())
        .unwrap_or_default();
    match roles.as_slice() {
        ["api"] => true,
        _ => roles.len() >= 2 && roles.contains(&"admin") && roles.contains(&"api"),
    }
}

/// Decodes a base64 (standard alphabet) raw Ed25519 public key, as cc-backend's
/// `JWT_PUBLIC_KEY` contains it.
pub fn decode_public_key(text: &str) -> Result<Vec<u8>, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|err| format!("not base64: {err}"))?;
    if key.len() != 32 {
        return Err(format!(
            "an Ed25519 public key has 32 bytes, this one has {}; use the base64 raw key",
            key.len()
        ));
    }
    Ok(key)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        anyhow::format_err!("server.token_file {}: cannot read: {err}", path.display())
    })?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        anyhow::bail!(
            "server.token_file {}: contains no token; write one token per line",
            path.display()
        );
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn tokens_match_exactly() {
        let auth = Authenticator::Tokens(vec![b"alpha".to_vec(), b"beta".to_vec()]);
        assert_eq!(auth.check(&headers("authorization", "Bearer beta")), Ok(()));
        assert_eq!(auth.check(&headers("authorization", "bearer alpha")), Ok(()));
        assert_eq!(auth.check(&headers("authorization", "Bearer alph")), Err(AuthFailure::Invalid));
        assert_eq!(auth.check(&headers("authorization", "Basic alpha")), Err(AuthFailure::Missing));
        assert_eq!(auth.check(&HeaderMap::new()), Err(AuthFailure::Missing));
    }

    #[test]
    fn public_key_must_be_32_bytes() {
        assert!(decode_public_key("AAAA").unwrap_err().contains("32 bytes"));
        assert!(decode_public_key("not base64!").unwrap_err().contains("base64"));
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(decode_public_key(&key).unwrap(), vec![7u8; 32]);
    }
}
