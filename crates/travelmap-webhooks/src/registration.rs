//! What a webhook registration must be for the dispatcher to deliver it: a URL it can POST to,
//! event types from the catalogue, a purpose a standing subscription may have, and a secret.
//! The API checks a request with these before storing it.

use travelmap_domain::payloads::Purpose;

/// The longest URL accepted, in characters as sent (its normal form, which percent-encodes what
/// needs it and may add a `/`, can be longer).
pub const MAX_URL_LENGTH: usize = 2048;
/// The most type patterns one webhook may list.
pub const MAX_TYPES: usize = 100;
/// The purpose a webhook is registered for when it names none.
pub const DEFAULT_PURPOSE: Purpose = Purpose::CaseManagement;

/// Why a URL cannot be delivered to: `None` when it can. It must be absolute `http` or `https`
/// with a host, without user name or password (the URL is listed to everyone of the agency, and
/// the signature already authenticates the sender) and without a fragment (never sent).
pub fn url_problem(url: &str) -> Option<String> {
    if url.chars().count() > MAX_URL_LENGTH {
        return Some(format!("url must be at most {MAX_URL_LENGTH} characters"));
    }
    // The URL parser forgives what a careful reader would not (`http:///host` read as
    // `http://host/`, spaces turned into `%20`): the URL shown must be the one called.
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("url must not contain spaces or control characters".to_owned());
    }
    if url.contains('\\') {
        return Some("url must not contain a backslash".to_owned());
    }
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if authority.is_some_and(|authority| authority.contains('@')) {
        return Some(
            "url must not carry a user name or password; deliveries are authenticated by their signature"
                .to_owned(),
        );
    }
    if url
        .split_once("://")
        .is_none_or(|(_, rest)| rest.is_empty() || rest.starts_with('/'))
    {
        return Some("url must be absolute, `http://host/...` or `https://host/...`".to_owned());
    }
    let parsed = match reqwest::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(error) => return Some(format!("url is not an absolute URL: {error}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some(format!(
            "url must be http or https, not `{}`",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Some("url must name a host".to_owned());
    }
    if parsed.port() == Some(0) {
        return Some("url must not name port 0: nothing can be delivered there".to_owned());
    }
    // Deliveries carry criminal-justice and health data: sent in the clear, anyone on the way
    // could read them. Plain HTTP only to this machine (a local relay, a test receiver).
    if parsed.scheme() == "http" && !on_this_machine(&parsed) {
        return Some(
            "url must be https://: deliveries carry personal data (plain http:// only to this machine: localhost or a loopback address, 127.0.0.0/8 or [::1])"
                .to_owned(),
        );
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some(
            "url must not carry a user name or password; deliveries are authenticated by their signature"
                .to_owned(),
        );
    }
    if parsed.fragment().is_some() {
        return Some("url must not have a fragment (#...); it is never sent".to_owned());
    }
    None
}

/// Whether the URL's host is this machine's loopback interface: `localhost` or a loopback
/// address (127.0.0.0/8, `[::1]`), in any form the URL parser reads as one (`127.1`). The one
/// rule for every URL the service calls in the clear (webhooks, the identity provider's keys).
pub fn on_this_machine(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|host| {
        // `localhost.` and names under it are not taken, to keep plain HTTP to the one name
        // everybody writes (deliveries resolve them all to loopback, see `destinations`).
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    })
}

/// The URL as it is stored, shown and called: in its normal form (`HTTPS://A.example` is
/// `https://a.example/`). Only for a URL [`url_problem`] accepts.
pub fn normal_url(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| url.to_owned(), |parsed| parsed.to_string())
}

/// Why a list of type patterns cannot be subscribed to, with the index of the offending entry
/// when one is to blame: `None` when it can.
pub fn types_problem(types: &[String]) -> Option<(Option<usize>, String)> {
    if types.is_empty() {
        return Some((
            None,
            "types must name at least one event type or family (`job.*`); see GET /v1/event-types"
                .to_owned(),
        ));
    }
    if types.len() > MAX_TYPES {
        return Some((None, format!("types may list at most {MAX_TYPES} entries")));
    }
    use travelmap_service::subscriptions::{is_known_type_pattern, reaches_agencies_pattern};
    types.iter().enumerate().find_map(|(index, pattern)| {
        let problem = if !is_known_type_pattern(pattern) {
            format!(
                "`{pattern}` is neither an event type of the catalogue nor a family of them such as `job.*`; see GET /v1/event-types"
            )
        } else if !reaches_agencies_pattern(pattern) {
            format!(
                "`{pattern}` is never sent to an agency's webhook: a restriction and its lifting are the data-protection officer's decisions, and an agency learns of a restriction from the `403 restricted` its reads get"
            )
        } else {
            return None;
        };
        Some((Some(index), problem))
    })
}

/// Whether a standing subscription may be registered for `purpose`. Audit, subject access and
/// emergency are purposes of a person's one-off, logged read (a review, a request, a
/// break-glass), never of a feed that runs on its own; and statistics are given as aggregates
/// only (`GET /v1/statistics/outcomes`), never as a feed of clients' events.
pub fn purpose_allowed(purpose: Purpose) -> bool {
    matches!(
        purpose,
        Purpose::CaseManagement | Purpose::Supervision | Purpose::ServiceDelivery
    )
}

/// The purposes [`purpose_allowed`] accepts, for error messages.
pub const ALLOWED_PURPOSES: &str = "case_management, supervision, service_delivery";

/// A new signing secret: `whsec_` and 32 random bytes in hex. The prefix lets secret scanners
/// recognise one that leaked.
pub fn new_secret() -> String {
    format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_urls_with_a_host_are_accepted() {
        assert_eq!(url_problem("https://agency.example/hooks/travelmap"), None);
        assert_eq!(url_problem("http://127.0.0.1:8081/receive?x=1"), None);
        assert_eq!(url_problem("http://localhost/receive"), None);
        assert_eq!(url_problem("http://[::1]:9000/"), None);
        for loopback in ["http://127.1/", "http://0x7f000001/", "HTTP://LOCALHOST"] {
            assert_eq!(url_problem(loopback), None, "{loopback}");
        }
        assert_eq!(url_problem("HTTPS://Agency.example"), None);
        assert_eq!(
            normal_url("HTTPS://Agency.example"),
            "https://agency.example/",
            "stored as it will be called"
        );
    }

    #[test]
    fn other_urls_are_refused() {
        for url in [
            "",
            "agency.example/hooks",
            "ftp://agency.example/hooks",
            "file:///etc/passwd",
            "https://user:password@agency.example/",
            "https://agency.example/hooks#part",
            "mailto:someone@agency.example",
            // Personal data in the clear, beyond this machine.
            "http://agency.example/hooks",
            "http://10.0.0.7:8080/hooks",
            "http://localhost.agency.example/",
            "http://localhost./",
        ] {
            assert!(url_problem(url).is_some(), "{url} was accepted");
        }
        for url in [
            "http:///ok",
            "http://a.example/x y",
            "https:/a.example/",
            "https://",
            "http://:@a.example/",
            "http://a.example\\x",
            "http://127.0.0.1:0/x",
        ] {
            assert!(url_problem(url).is_some(), "{url} was accepted");
        }
        assert!(
            url_problem(&format!("https://a.example/{}", "x".repeat(MAX_URL_LENGTH))).is_some()
        );
        // The length is counted as sent, in characters, as the published schema counts it.
        let host = |length: usize| format!("https://{}.example", "a".repeat(length - 16));
        assert_eq!(url_problem(&host(MAX_URL_LENGTH)), None);
        let path = format!("https://a.example/{}", "é".repeat(MAX_URL_LENGTH - 18));
        assert_eq!(path.chars().count(), MAX_URL_LENGTH);
        assert_eq!(url_problem(&path), None);
    }

    #[test]
    fn types_must_be_known_and_the_culprit_is_named() {
        assert_eq!(
            types_problem(&["job.*".into(), "client.released".into()]),
            None
        );
        assert_eq!(types_problem(&[]).map(|(index, _)| index), Some(None));
        assert_eq!(
            types_problem(&["job.*".into(), "job.stolen".into()]).map(|(index, _)| index),
            Some(Some(1))
        );
    }

    #[test]
    fn secrets_are_fresh_and_recognisable() {
        let (first, second) = (new_secret(), new_secret());
        assert_ne!(first, second);
        assert!(first.starts_with("whsec_"));
        assert_eq!(first.len(), "whsec_".len() + 64);
    }

    #[test]
    fn only_operational_purposes_may_subscribe() {
        assert!(purpose_allowed(Purpose::CaseManagement));
        assert!(!purpose_allowed(Purpose::Emergency));
        assert!(!purpose_allowed(Purpose::Audit));
        assert!(!purpose_allowed(Purpose::SubjectAccess));
    }
}
