//! Signing deliveries, so that a receiver can tell a delivery from Travelmap from a forgery, and
//! a fresh one from a replay.
//!
//! Each delivery carries `Travelmap-Signature: t=<unix seconds>,v1=<hex>`, where the hex is the
//! HMAC-SHA256, keyed with the webhook's secret exactly as it was shown at registration (its
//! UTF-8 bytes, `whsec_` prefix included), of the timestamp, a full stop and the raw body:
//! `"<t>.<body>"`. A receiver recomputes it over the bytes it received, compares in constant
//! time, and refuses timestamps too far from its clock. docs/api.md shows it in code.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header holding the signature.
pub const SIGNATURE_HEADER: &str = "Travelmap-Signature";

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the signature header is not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature's timestamp is more than {0} seconds from now")]
    Stale(i64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a signature header as a receiver would: the timestamp within `tolerance` seconds of
/// `now`, and a `v1` signature matching the body.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), Refusal> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => candidates.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Refusal::Malformed)?;
    if candidates.is_empty() {
        return Err(Refusal::Malformed);
    }
    // Without overflow whatever the header says (`t=-9223372036854775808`, say).
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(Refusal::Stale(tolerance));
    }
    for candidate in candidates {
        let Ok(bytes) = hex::decode(candidate) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // verify_slice compares in constant time.
        if mac.verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(Refusal::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' |
        //   openssl dgst -sha256 -hmac "$SECRET"
        assert_eq!(
            signature(SECRET, 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=9ab7948b445e1a525c48b2d927d95e2cdeb4a7f29c82a7bdb2ac52c380eeec49"
        );
    }

    #[test]
    fn a_signature_verifies_over_the_same_body_and_secret_only() {
        let body = br#"{"id":"e1"}"#;
        let header = signature(SECRET, 1_000, body);
        assert_eq!(verify(SECRET, &header, body, 1_010, 300), Ok(()));
        assert_eq!(
            verify(SECRET, &header, br#"{"id":"e2"}"#, 1_010, 300),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, body, 1_010, 300),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn old_and_malformed_signatures_are_refused() {
        let body = b"{}";
        let header = signature(SECRET, 1_000, body);
        assert_eq!(
            verify(SECRET, &header, body, 2_000, 300),
            Err(Refusal::Stale(300))
        );
        assert_eq!(
            verify(SECRET, "v1=abcd", body, 1_000, 300),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(SECRET, "t=1000", body, 1_000, 300),
            Err(Refusal::Malformed)
        );
        // Timestamps at the ends of the range are refused as stale, not a panic.
        for extreme in [i64::MIN, i64::MAX] {
            assert_eq!(
                verify(SECRET, &format!("t={extreme},v1=00"), body, 1_000, 300),
                Err(Refusal::Stale(300))
            );
        }
    }

    #[test]
    fn a_moved_timestamp_breaks_the_signature() {
        let body = b"{}";
        let header = signature(SECRET, 1_000, body).replace("t=1000", "t=1001");
        assert_eq!(
            verify(SECRET, &header, body, 1_001, 300),
            Err(Refusal::Mismatch)
        );
    }
}
