//! OAuth2 client-credentials tokens: a JWT signed by the identity provider's key (ES256 and
//! RS256 alike; generated here) is accepted when its issuer, audience and expiry hold, with the
//! agency and roles from its claims; anything else is 401. The key set comes from a file or a URL.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::binary::{Server, write_config};
use crate::samples::sample_event;
use crate::support::*;

const ISSUER: &str = "https://idp.example/realms/justice";
const AUDIENCE: &str = "travelmap";

/// An ES256 key pair: the private half as PEM (to sign with) and the public half as a JWK.
fn es256_key(seed: u8, kid: &str) -> (EncodingKey, Value) {
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    });
    (EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(), jwk)
}

/// The operating system's randomness, for the RSA key generator (which takes an RNG of the
/// `rand_core` version it was built with).
struct SystemRandom;

impl rsa::rand_core::RngCore for SystemRandom {
    fn next_u32(&mut self) -> u32 {
        rand::random()
    }
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = rand::random();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for SystemRandom {}

/// An RS256 key pair: the private half as PEM and the public half as a JWK.
fn rs256_key(kid: &str) -> (EncodingKey, Value) {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut SystemRandom, 2048).unwrap();
    let pem = private.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let jwk = json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
    });
    (EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(), jwk)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &EncodingKey, kid: &str, claims: Value) -> String {
    signed(Algorithm::ES256, key, kid, claims)
}

fn signed(algorithm: Algorithm, key: &EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn claims(agency: &str, roles: Value) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "opava-prison-client",
        "exp": now() + 300, "iat": now(),
        "travelmap_agency": agency, "travelmap_roles": roles,
    })
}

fn config_with_jwt(dir: &Path, source: &str) -> std::path::PathBuf {
    let path = write_config(dir);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "[jwt]\n{source}\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
    path
}

async fn post_with(server: &Server, bearer: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", server.address))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn tokens_from_the_identity_provider_are_checked_and_carry_agency_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwk) = es256_key(1, "k1");
    let (stranger, _) = es256_key(2, "k1");
    let (rsa_key, rsa_jwk) = rs256_key("r1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk, rsa_jwk]}).to_string()).unwrap();
    let config = config_with_jwt(dir.path(), &format!("jwks_file = \"{}\"", jwks.display()));
    let server = Server::start(&dir.path().join("data"), Some(&config)).await;
    let client = Uuid::new_v4();

    // A valid token: recorded for the agency in the token, under the token's subject.
    let writer = token(&key, "k1", claims("prison-opava", json!(["writer"])));
    let (status, receipt) = post_with(
        &server,
        &writer,
        &sample_event(client, "client.released", "2026-01-05T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    let history: Value = reqwest::Client::new()
        .get(format!("{}/v1/clients/{client}/events", server.address))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["events"][0]["agency"], "prison-opava");
    assert_eq!(
        history["events"][0]["credential"],
        "jwt:opava-prison-client"
    );

    // RS256 tokens are accepted the same way.
    let rsa_writer = signed(
        Algorithm::RS256,
        &rsa_key,
        "r1",
        claims("prison-opava", json!(["writer"])),
    );
    let (status, receipt) = post_with(
        &server,
        &rsa_writer,
        &sample_event(client, "contact.made", "2026-01-05T10:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    // A token claiming RS256 under the EC key is refused.
    let mixed = signed(
        Algorithm::RS256,
        &rsa_key,
        "k1",
        claims("prison-opava", json!(["writer"])),
    );
    let (status, _) = post_with(
        &server,
        &mixed,
        &sample_event(client, "contact.made", "2026-01-05T11:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The agency's kind still decides what it may post; roles as a space-separated string work.
    let probation = token(
        &key,
        "k1",
        claims("probation-opava", json!("coordinator writer")),
    );
    let (status, _) = post_with(
        &server,
        &probation,
        &sample_event(client, "client.released", "2026-01-05T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Everything else is 401, saying why.
    let mut expired = claims("prison-opava", json!(["writer"]));
    expired["exp"] = json!(now() - 3600);
    let mut other_audience = claims("prison-opava", json!(["writer"]));
    other_audience["aud"] = json!("another-service");
    let mut other_issuer = claims("prison-opava", json!(["writer"]));
    other_issuer["iss"] = json!("https://idp.elsewhere/");
    let mut not_yet_valid = claims("prison-opava", json!(["writer"]));
    not_yet_valid["nbf"] = json!(now() + 3000);
    let mut blank_subject = claims("prison-opava", json!(["writer"]));
    blank_subject["sub"] = json!("");
    let mut disguised_subject = claims("prison-opava", json!(["writer"]));
    disguised_subject["sub"] = json!(" opava-writer\u{7}\nforged");
    // Shown right to left from the override on, it would read as another name.
    let mut reversed_subject = claims("prison-opava", json!(["writer"]));
    reversed_subject["sub"] = json!("\u{202e}retirw-avapo");
    let mut long_subject = claims("prison-opava", json!(["writer"]));
    long_subject["sub"] = json!("s".repeat(257));
    let mut listed_issuers = claims("prison-opava", json!(["writer"]));
    listed_issuers["iss"] = json!(["https://idp.elsewhere/", ISSUER]);
    let mut numeric_issuer = claims("prison-opava", json!(["writer"]));
    numeric_issuer["iss"] = json!(42);
    let mut text_nbf = claims("prison-opava", json!(["writer"]));
    text_nbf["nbf"] = json!("9999999999");
    // A header naming an extension that must be understood.
    let critical = {
        let header =
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","crit":["exp2"],"exp2":1}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims("prison-opava", json!(["writer"])).to_string());
        let message = format!("{header}.{payload}");
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    };
    // A claim named twice, which readers may take as its first value or its last.
    let agency_twice = {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1"}"#);
        let claims = claims("prison-opava", json!(["writer"])).to_string();
        let twice = claims.replacen('{', r#"{"travelmap_agency":"probation-opava","#, 1);
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(twice));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    };
    let refused = [
        (agency_twice, "appears twice"),
        (token(&key, "k1", reversed_subject), "`sub` is blank"),
        (token(&key, "k1", long_subject), "`sub` is blank"),
        (token(&key, "k1", listed_issuers), "`iss` must be a string"),
        (token(&key, "k1", text_nbf), "`nbf` must be a number"),
        (
            token(&key, "k1", numeric_issuer),
            "`iss` claim, or it is not of the type",
        ),
        (critical, "critical extensions"),
        (token(&key, "k1", expired), "Expired"),
        (token(&key, "k1", not_yet_valid), "ImmatureSignature"),
        (token(&key, "k1", blank_subject), "`sub` is blank"),
        (token(&key, "k1", disguised_subject), "`sub` is blank"),
        (token(&key, "k1", other_audience), "Audience"),
        (token(&key, "k1", other_issuer), "Issuer"),
        (
            token(&stranger, "k1", claims("prison-opava", json!(["writer"]))),
            "Signature",
        ),
        (
            token(&key, "k9", claims("prison-opava", json!(["writer"]))),
            "(kid `k9`) is not in the identity provider's key set",
        ),
        (
            token(&key, "k1", claims("prison-brno", json!(["writer"]))),
            "not declared",
        ),
        (
            token(&key, "k1", claims("prison-opava", json!(["superuser"]))),
            "no Travelmap role",
        ),
    ];
    for (bearer, why) in refused {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/events", server.address))
            .bearer_auth(&bearer)
            .json(&sample_event(
                client,
                "contact.made",
                "2026-01-06T09:00:00Z",
            ))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{why}: {detail}");
    }
    // An unsigned token ("alg": "none") is refused too.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("prison-opava", json!(["writer"])).to_string())
    );
    let (status, problem) = post_with(
        &server,
        &unsigned,
        &sample_event(client, "contact.made", "2026-01-06T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("signed with `none`; RS256 or ES256 is required"),
        "{problem}"
    );
    // API keys keep working beside tokens.
    let (status, _) = post_with(
        &server,
        PRISON_WRITER,
        &sample_event(client, "contact.made", "2026-01-06T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A one-route HTTP server on 127.0.0.1 that answers every request with `body` (the key set).
/// A break-glass grant is for the credential and the agency that justified it: a token subject
/// that acts for another agency in its next token does not carry the grant along.
#[tokio::test]
async fn a_break_glass_grant_stays_with_the_agency_that_justified_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwk) = es256_key(1, "k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let config = config_with_jwt(dir.path(), &format!("jwks_file = \"{}\"", jwks.display()));
    let server = Server::start(&dir.path().join("data"), Some(&config)).await;
    let client = Uuid::new_v4();
    let (status, receipt) = post_with(
        &server,
        PRISON_WRITER,
        &sample_event(client, "client.released", "2026-01-05T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    let read = |agency: &str, why: Option<&str>| {
        let mut request = reqwest::Client::new()
            .get(format!("{}/v1/clients/{client}/events", server.address))
            .bearer_auth(token(&key, "k1", claims(agency, json!(["coordinator"]))))
            .header("x-purpose", "emergency");
        if let Some(why) = why {
            request = request.header("x-justification", why);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(read("ngo-opava", None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        read("probation-opava", Some("client missing after release")).await,
        StatusCode::OK
    );
    assert_eq!(read("probation-opava", None).await, StatusCode::OK);
    assert_eq!(read("ngo-opava", None).await, StatusCode::FORBIDDEN);
}

async fn serve_jwks(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/realms/justice/protocol/openid-connect/certs")
}

#[tokio::test]
async fn the_key_set_can_come_from_the_identity_providers_url() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwk) = es256_key(3, "rotating-1");
    let url = serve_jwks(json!({"keys": [jwk]}).to_string()).await;
    let config = config_with_jwt(dir.path(), &format!("jwks_url = \"{url}\""));
    let server = Server::start(&dir.path().join("data"), Some(&config)).await;
    let writer = token(
        &key,
        "rotating-1",
        claims("prison-opava", json!(["writer"])),
    );
    let (status, receipt) = post_with(
        &server,
        &writer,
        &sample_event(Uuid::new_v4(), "sentence.started", "2026-01-05T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
}

/// A live feed opened with a token ends when the token expires: what it may receive was decided
/// by an authentication that no longer holds. (Its system reconnects with a fresh token.) The
/// token is taken until `exp` plus the 30 s allowed for the issuer's clock, for the stream as
/// for requests: one whose `exp` passed 25 s ago opens a stream that runs about 5 s, rather than
/// one that closes at once.
#[tokio::test]
async fn a_live_feed_opened_with_a_token_ends_when_the_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwk) = es256_key(1, "k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let config = config_with_jwt(dir.path(), &format!("jwks_file = \"{}\"", jwks.display()));
    let server = Server::start(&dir.path().join("data"), Some(&config)).await;
    let mut short = claims("probation-opava", json!(["auditor"]));
    short["exp"] = json!(now() - 25);
    let mut response = reqwest::Client::new()
        .get(format!("{}/v1/subscriptions/feed", server.address))
        .bearer_auth(token(&key, "k1", short))
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    // Heartbeats come every 15 s: a stream still open after 12 s outlived its token.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(12), async {
        while response.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
}
