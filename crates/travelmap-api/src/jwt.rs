//! OAuth2 client-credentials tokens: JWTs signed with RS256 or ES256 by an identity provider,
//! verified against its published keys (a JWKS). The issuer and audience must be the configured
//! ones and the token unexpired; the agency and roles come from claims, and the agency must be
//! one the configuration declares (its kind decides what it may post, as for API keys).

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::RwLock;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use travelmap_domain::AgencyKind;

use crate::auth::{Credential, Role};

/// How a JWT is checked and read.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must include.
    pub audience: String,
    /// The claim naming the agency the client acts for.
    pub agency_claim: String,
    /// The claim listing the roles (an array of strings, or one space-separated string).
    pub roles_claim: String,
    /// The declared agencies and their kinds.
    pub agencies: HashMap<String, AgencyKind>,
}

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the key set is not a JWKS: {0}")]
    KeySet(String),
    #[error("the key set holds no RS256 or ES256 key")]
    NoKeys,
    #[error("the token is not a valid JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with {0:?}; RS256 or ES256 is required")]
    Algorithm(Algorithm),
    #[error("the token is signed with {token:?}, but the key it names is an {key:?} key")]
    KeyAlgorithm { token: Algorithm, key: Algorithm },
    #[error(
        "the token's key ({}) is not in the identity provider's key set",
        .0.as_deref().map_or_else(|| "no kid".to_owned(), |kid| format!("kid `{kid}`"))
    )]
    UnknownKey(Option<String>),
    #[error("the token is not accepted: {0}")]
    Invalid(String),
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error(
        "the token's `sub` is blank, longer than 256 characters, or has surrounding spaces, \
         control or invisible formatting characters: it would not read as who acted in the log \
         and the audit trail"
    )]
    UnreadableSubject,
    #[error("agency `{0}` in the token is not declared in the configuration")]
    UndeclaredAgency(String),
    #[error("the token grants no Travelmap role")]
    NoRoles,
}

/// Verifies tokens against the current key set (replaced whole when it is refreshed).
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: RwLock<HashMap<Option<String>, (DecodingKey, Algorithm)>>,
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings) -> Self {
        Self {
            settings,
            keys: RwLock::new(HashMap::new()),
        }
    }

    /// Replaces the key set with the RS256 and ES256 keys of `jwks` (JSON); returns how many.
    pub fn set_keys(&self, jwks: &str) -> Result<usize, JwtError> {
        #[derive(serde::Deserialize)]
        struct Listed {
            keys: Vec<Value>,
        }
        let listed: Listed =
            serde_json::from_str(jwks).map_err(|error| JwtError::KeySet(error.to_string()))?;
        // Each key is read on its own: a set also holds keys of kinds this library does not
        // know (an `ECDH-ES` encryption key, say), which are left out rather than failing the
        // whole set.
        let set = JwkSet {
            keys: listed
                .keys
                .into_iter()
                .filter_map(|key| serde_json::from_value(key).ok())
                .collect(),
        };
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (algorithm, named) = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
                AlgorithmParameters::EllipticCurve(_) => (Algorithm::ES256, KeyAlgorithm::ES256),
                _ => continue,
            };
            // Identity providers publish their encryption keys in the same set: a key marked for
            // another use, other operations or another algorithm must not check a signature.
            let common = &jwk.common;
            if common
                .public_key_use
                .as_ref()
                .is_some_and(|usage| *usage != PublicKeyUse::Signature)
                || common
                    .key_operations
                    .as_ref()
                    .is_some_and(|operations| !operations.contains(&KeyOperations::Verify))
                || common.key_algorithm.is_some_and(|stated| stated != named)
            {
                continue;
            }
            let key =
                DecodingKey::from_jwk(jwk).map_err(|error| JwtError::KeySet(error.to_string()))?;
            // Two keys under one `kid` (or two without one) cannot be told apart: keeping the
            // last would refuse tokens of the other, and, without a `kid`, let the set pass for
            // a single key.
            if keys
                .insert(jwk.common.key_id.clone(), (key, algorithm))
                .is_some()
            {
                return Err(JwtError::KeySet(match &jwk.common.key_id {
                    Some(kid) => format!("two keys have the kid `{kid}`"),
                    None => "two keys have no kid; each key needs its own".to_owned(),
                }));
            }
        }
        if keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
        let count = keys.len();
        *self.keys.write().expect("key set lock") = keys;
        Ok(count)
    }

    /// The credential a valid token stands for, and until when it is taken (its `exp`, plus the
    /// clock skew allowed).
    pub fn verify(&self, token: &str) -> Result<(Credential, DateTime<Utc>), JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            // The library knows no `none` and answers with the algorithms it does know, HMAC
            // ones included, which are no more accepted here.
            if raw_header(token).is_some_and(|raw| {
                raw["alg"].as_str() != Some("RS256") && raw["alg"].as_str() != Some("ES256")
            }) {
                let named = raw_header(token)
                    .and_then(|raw| raw["alg"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                return JwtError::Malformed(format!(
                    "the token is signed with `{named}`; RS256 or ES256 is required"
                ));
            }
            JwtError::Malformed(error.to_string())
        })?;
        // An extension the token says must be understood is not (RFC 7515, section 4.1.11);
        // the library's header type drops `crit`, so it is looked for in the raw header.
        if raw_header(token).is_some_and(|raw| raw.get("crit").is_some()) {
            return Err(JwtError::Malformed(
                "the token's header lists critical extensions (`crit`), which are not supported"
                    .into(),
            ));
        }
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let keys = self.keys.read().expect("key set lock");
        // A token without `kid` is accepted only while the set holds a single key.
        let (key, algorithm) = match &header.kid {
            Some(_) => keys.get(&header.kid),
            None if keys.len() == 1 => keys.values().next(),
            None => None,
        }
        .ok_or_else(|| JwtError::UnknownKey(header.kid.clone()))?;
        if *algorithm != header.alg {
            return Err(JwtError::KeyAlgorithm {
                token: header.alg,
                key: *algorithm,
            });
        }
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // A token not yet valid is refused like an expired one (the library checks `nbf` only
        // when asked to).
        validation.validate_nbf = true;
        validation.leeway = CLOCK_SKEW_SECONDS;
        let claims = jsonwebtoken::decode::<Value>(token, key, &validation)
            .map_err(|error| match error.kind() {
                // The library reads a registered claim of the wrong type as missing.
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
                    JwtError::Invalid(format!(
                        "the token lacks the `{claim}` claim, or it is not of the type the \
                         claim takes (`iss` and `sub` are strings, `exp` is a number that a \
                         date can be)"
                    ))
                }
                _ => JwtError::Invalid(error.to_string()),
            })?
            .claims;
        drop(keys);
        // A claim named twice is read as its last value here and perhaps as its first by
        // another reader of the same token: refused, as a request body naming a member twice is.
        if let Err(why) = raw_claims(token) {
            return Err(JwtError::Malformed(format!("the token's claims are {why}")));
        }
        // The library compares `iss` with the configured issuer also when the token gives a
        // list, and checks `nbf` only when it is a number: a claim of another type is refused.
        if !claims["iss"].is_string() {
            return Err(JwtError::Invalid(
                "the token's `iss` must be a string".into(),
            ));
        }
        if claims.get("nbf").is_some_and(|nbf| !nbf.is_number()) {
            return Err(JwtError::Invalid(
                "the token's `nbf` must be a number".into(),
            ));
        }
        // A NumericDate may have a fraction (RFC 7519, section 2); whole seconds are enough.
        // The token is taken until `exp` plus the skew allowed for the issuer's clock, as it was
        // just now: a stream opened with it runs that long too, rather than closing at once.
        let expires = claims["exp"]
            .as_i64()
            .or_else(|| claims["exp"].as_f64().map(|seconds| seconds.floor() as i64))
            .and_then(|seconds| seconds.checked_add(CLOCK_SKEW_SECONDS as i64))
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
            .ok_or_else(|| JwtError::MissingClaim("exp".into()))?;
        Ok((self.credential(&claims)?, expires))
    }

    fn credential(&self, claims: &Value) -> Result<Credential, JwtError> {
        let subject = claims["sub"]
            .as_str()
            .ok_or_else(|| JwtError::MissingClaim("sub".into()))?;
        // The subject becomes the credential id recorded with every event and audit entry, so it
        // is held to what a configured credential id must be, and kept short.
        if subject.is_empty()
            || !crate::auth::plain_id(subject)
            || subject.chars().count() > MAX_SUBJECT_CHARS
        {
            return Err(JwtError::UnreadableSubject);
        }
        let agency = claims[&self.settings.agency_claim]
            .as_str()
            .ok_or_else(|| JwtError::MissingClaim(self.settings.agency_claim.clone()))?;
        let kind = *self
            .settings
            .agencies
            .get(agency)
            .ok_or_else(|| JwtError::UndeclaredAgency(agency.to_owned()))?;
        let names: Vec<&str> = match &claims[&self.settings.roles_claim] {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(text) => text.split_whitespace().collect(),
            _ => return Err(JwtError::MissingClaim(self.settings.roles_claim.clone())),
        };
        // Roles Travelmap does not know are left out: tokens often carry other services' scopes.
        let roles: Vec<Role> = names
            .iter()
            .filter_map(|name| serde_json::from_value(Value::String((*name).to_owned())).ok())
            .collect();
        if roles.is_empty() {
            return Err(JwtError::NoRoles);
        }
        Ok(Credential {
            id: format!("jwt:{subject}"),
            agency: agency.to_owned(),
            agency_kind: Some(kind),
            roles,
        })
    }
}

/// The longest token subject taken: it is written into every event and audit entry.
const MAX_SUBJECT_CHARS: usize = 256;

/// How far the issuer's clock may be from this server's, in seconds: a token is taken until its
/// `exp` plus this, and from its `nbf` minus this.
const CLOCK_SKEW_SECONDS: u64 = 30;

/// The token's claims (its payload), parsed refusing a claim named twice.
fn raw_claims(token: &str) -> Result<Value, String> {
    use base64::Engine;
    let encoded = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|error| format!("not base64url: {error}"))?;
    crate::extract::parse_json(&bytes)
}

/// The token's header as JSON, if it reads as such.
fn raw_header(token: &str) -> Option<Value> {
    use base64::Engine;
    let encoded = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = r#"{"kty":"EC","crv":"P-256","x":"7DOaSUK28lCEfsiXf75SeiuX49M0jb7IBjjrmt23TxM","y":"Wcg9ru28mzCffVHhJVLMU8JwlB7jqdVs9Uu6NPMzQj8""#;
    const SECOND: &str = r#"{"kty":"EC","crv":"P-256","x":"TFsL7U0bX4lKz2_7u0bvT0hlyAvbIBKZDMTqH4X6NsM","y":"xirYPZKJQAzx5MJqufElhTCAU7qI9QmnXMtu2lR79nI""#;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            issuer: "https://idp.test".into(),
            audience: "travelmap".into(),
            agency_claim: "agency".into(),
            roles_claim: "roles".into(),
            agencies: HashMap::new(),
        })
    }

    /// Keys are told apart by `kid`: a set where two share one (or both lack one) is refused,
    /// rather than keeping one of them and refusing the other's tokens.
    #[test]
    fn a_key_set_whose_keys_cannot_be_told_apart_is_refused() {
        let set = |first: &str, second: &str| {
            format!(r#"{{"keys": [{FIRST}{first}}}, {SECOND}{second}}}]}}"#)
        };
        let verifier = verifier();
        assert_eq!(
            verifier
                .set_keys(&set(r#","kid":"a""#, r#","kid":"b""#))
                .unwrap(),
            2
        );
        for (first, second) in [("", ""), (r#","kid":"a""#, r#","kid":"a""#)] {
            let refused = verifier.set_keys(&set(first, second)).unwrap_err();
            assert!(matches!(refused, JwtError::KeySet(_)), "{refused}");
        }
        assert_eq!(verifier.set_keys(&set("", r#","kid":"b""#)).unwrap(), 2);
    }

    /// A key the set marks for encryption, for operations other than verifying, or for another
    /// algorithm checks no signature.
    #[test]
    fn only_keys_for_verifying_signatures_are_taken() {
        let verifier = verifier();
        let set = |second: &str| {
            format!(
                r#"{{"keys": [{FIRST},"kid":"a","use":"sig"}}, {SECOND},"kid":"b"{second}}}]}}"#
            )
        };
        for other in [
            r#","use":"enc""#,
            r#","key_ops":["encrypt"]"#,
            r#","alg":"ECDH-ES""#,
            r#","alg":"ES384""#,
        ] {
            assert_eq!(verifier.set_keys(&set(other)).unwrap(), 1, "{other}");
            assert!(
                verifier
                    .keys
                    .read()
                    .unwrap()
                    .contains_key(&Some("a".into()))
            );
        }
        assert_eq!(
            verifier
                .set_keys(&set(r#","use":"sig","key_ops":["verify"],"alg":"ES256""#))
                .unwrap(),
            2
        );
        let encryption_only = format!(r#"{{"keys": [{SECOND},"use":"enc"}}]}}"#);
        assert!(matches!(
            verifier.set_keys(&encryption_only),
            Err(JwtError::NoKeys)
        ));
    }
}
