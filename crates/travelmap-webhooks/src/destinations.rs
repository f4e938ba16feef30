//! Which addresses a webhook receiver may be at.
//!
//! A webhook URL is chosen by an agency's credential, not by the operator, and the service POSTs
//! to it from inside the deployment's network. Left open, that lets a credential make the service
//! call its own machine or the internal network (a database port, a cloud metadata endpoint, an
//! admin page), and the delivery log's errors would tell it which ports answer. So receivers must
//! be on the public internet unless the operator names further networks (`[webhooks]
//! allow_networks`), for agencies whose systems are reached over a private network.
//!
//! The rule is applied where the address is known: a URL naming an address is judged at
//! registration and again before every attempt (the configuration may have changed since); a
//! host name is judged at every connection, by the resolver the HTTP client uses, which drops
//! the addresses that are not allowed, so a name that later resolves elsewhere gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// The networks receivers may be in besides the public internet. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    allowed: Arc<Vec<IpNet>>,
}

impl Destinations {
    /// Public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses and those in `networks`.
    pub fn allowing(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            allowed: Arc::new(networks.into_iter().collect()),
        }
    }

    /// Public addresses and this machine's loopback interface: for a service started without a
    /// configuration, which only the person at the machine can use.
    pub fn public_and_loopback() -> Self {
        Self::allowing([
            IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8)
                .expect("8 is a valid IPv4 prefix"),
            IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ])
    }

    /// Reads one entry of `allow_networks`: a network (`10.20.0.0/16`, `fd00::/8`) or a single
    /// address. Refused, with the reason: anything else, a network written with host bits (a
    /// typo here would widen or narrow the operator's intent unseen), and IPv6 forms that carry
    /// an IPv4 address, since addresses are judged as the IPv4 address they carry (the entry
    /// would never match; the IPv4 network is what to write).
    pub fn network(entry: &str) -> Result<IpNet, String> {
        let network = match entry.parse::<IpNet>() {
            Ok(network) => network,
            Err(_) => match entry.parse::<IpAddr>() {
                Ok(address) => IpNet::from(address),
                Err(_) => {
                    return Err(
                        "neither a network (`10.20.0.0/16`, `fd00::/8`) nor an address".to_owned(),
                    );
                }
            },
        };
        if network.trunc() != network {
            return Err(format!(
                "has host bits set; the network is written `{}`",
                network.trunc()
            ));
        }
        if let IpNet::V6(v6) = network
            && (canonical(IpAddr::V6(v6.network())) != IpAddr::V6(v6.network())
                || canonical(IpAddr::V6(v6.broadcast())) != IpAddr::V6(v6.broadcast()))
        {
            return Err(
                "carries IPv4 addresses, which are judged as IPv4: write the IPv4 network"
                    .to_owned(),
            );
        }
        Ok(network)
    }

    /// The networks allowed besides the public internet.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether a receiver may be at `address`.
    pub fn permits(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        restricted(address).is_none() || self.allowed.iter().any(|net| net.contains(&address))
    }

    /// Why a receiver may not be at the host `url` names: `None` when it may, when the host is
    /// a name other than `localhost` (names are judged when they are resolved, at each delivery),
    /// or when `url` is not one [`crate::registration::url_problem`] accepts.
    pub fn url_problem(&self, url: &str) -> Option<String> {
        let url = reqwest::Url::parse(url).ok()?;
        let host = url.host_str()?;
        let (address, shown) = if host.eq_ignore_ascii_case("localhost") {
            (IpAddr::V4(Ipv4Addr::LOCALHOST), "localhost")
        } else {
            (literal(host)?, host)
        };
        if self.permits(address) {
            return None;
        }
        let kind = restricted(canonical(address)).unwrap_or("restricted");
        Some(format!(
            "url's host {shown} is a {kind} address; receivers must be on the public internet \
             unless the operator allows their network (`[webhooks] allow_networks`)"
        ))
    }

    /// Why a delivery to `url` may not be made now, judging a host name by what it resolves to
    /// at this moment: `None` when it may. Asked before each attempt, so that a refused one
    /// sends nothing and discloses nothing; the client's resolver judges the name again when it
    /// connects, so a name that changes in between still reaches no refused address.
    pub async fn delivery_problem(&self, url: &str, patience: Duration) -> Option<Refusal> {
        if let Some(problem) = self.url_problem(url) {
            return Some(Refusal::NotPermitted(problem));
        }
        let parsed = reqwest::Url::parse(url).ok()?;
        let name = parsed.host_str()?.to_owned();
        if literal(&name).is_some() {
            // An address, judged above, and never resolved.
            return None;
        }
        match tokio::time::timeout(patience, permitted_addresses(self, &name)).await {
            Ok(Ok(_)) => None,
            Ok(Err(refusal)) => Some(refusal),
            Err(_) => Some(Refusal::Unresolved(format!(
                "could not resolve {name}: no answer within {} ms",
                patience.as_millis()
            ))),
        }
    }

    /// The resolver the HTTP client should use: the system's, keeping only permitted addresses.
    pub(crate) fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver {
            destinations: self.clone(),
        })
    }
}

/// The address a URL's host names, when it is one (IPv6 in its brackets).
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
}

/// What kind of address outside the public internet `address` is, or `None` for a public one.
/// Loopback, private, shared (carrier-grade NAT), link-local (which holds cloud metadata
/// endpoints), unspecified (which reaches this machine), multicast, broadcast, the blocks
/// reserved for documentation, benchmarking and future use, and IPv6 outside global unicast.
fn restricted(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified (this machine)")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if a >= 240 {
                Some("reserved")
            } else if v4.is_documentation() {
                Some("documentation")
            } else if a == 198 && (b == 18 || b == 19) {
                Some("benchmarking")
            } else if a == 192 && b == 0 && c == 0 {
                Some("protocol-assignment")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified (this machine)")
            } else if segments[0] & 0xfe00 == 0xfc00 || segments[0] & 0xffc0 == 0xfec0 {
                Some("private")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if segments[0] & 0xe000 != 0x2000 {
                // Outside 2000::/3, the only block handed out for the internet: what else is
                // reachable there (local NAT64 prefixes, SIIT, discard) is the network's own.
                Some("reserved")
            } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
                Some("documentation")
            } else if segments[0] == 0x2001 && segments[1] == 0 {
                // Teredo: the client's IPv4 address is in it, obscured.
                Some("tunnelled (Teredo)")
            } else if segments[0] == 0x2001 && (segments[1] == 2 || segments[1] & 0xfff0 == 0x10) {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// An IPv6 address that carries an IPv4 one is judged as that IPv4 address, which is where it
/// leads: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`, deprecated), translated by NAT64
/// (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn canonical(address: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = address else {
        return address;
    };
    let segments = v6.segments();
    let v4 =
        |high: u16, low: u16| IpAddr::V4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    if let Some(mapped) = v6.to_ipv4_mapped() {
        IpAddr::V4(mapped)
    } else if (segments[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
        || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        v4(segments[6], segments[7])
    } else if segments[0] == 0x2002 {
        v4(segments[1], segments[2])
    } else {
        address
    }
}

/// Why a delivery is not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The receiver's address, or every address its name resolves to, is outside the permitted.
    NotPermitted(String),
    /// The name could not be resolved.
    Unresolved(String),
}

impl std::fmt::Display for Refusal {
    /// As the delivery log shows it: a refusal starts with `refused: `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotPermitted(problem) => write!(f, "refused: {problem}"),
            Self::Unresolved(problem) => f.write_str(problem),
        }
    }
}

/// The addresses `name` resolves to that a receiver may be at; an error when there are none.
async fn permitted_addresses(
    destinations: &Destinations,
    name: &str,
) -> Result<Vec<SocketAddr>, Refusal> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|error| Refusal::Unresolved(format!("could not resolve {name}: {error}")))?
        .collect();
    let permitted: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|address| destinations.permits(address.ip()))
        .collect();
    if permitted.is_empty() {
        let Some(kind) = found
            .iter()
            .find_map(|address| restricted(canonical(address.ip())))
        else {
            return Err(Refusal::Unresolved(format!(
                "could not resolve {name}: no address"
            )));
        };
        return Err(Refusal::NotPermitted(format!(
            "{name} resolves only to addresses receivers may not be at ({kind}); the operator \
             may allow the network with `[webhooks] allow_networks`"
        )));
    }
    Ok(permitted)
}

/// Resolves host names with the system's resolver and drops the addresses receivers may not be
/// at; a name left with none fails the connection before anything is sent.
pub(crate) struct Resolver {
    destinations: Destinations,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.destinations.clone();
        Box::pin(async move {
            let permitted = permitted_addresses(&destinations, name.as_str())
                .await
                .map_err(|refusal| refusal.to_string())?;
            let addresses: reqwest::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_are_permitted_by_default() {
        let destinations = Destinations::public_only();
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2a00:1450:4001:80b::200e",
            "100.128.0.1",
            "2002:5db8:d822::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(destinations.permits(address(public)), "{public}");
        }
        for inside in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "::2",
        ] {
            assert!(!destinations.permits(address(inside)), "{inside}");
        }
    }

    #[test]
    fn networks_the_operator_names_are_permitted_too() {
        let destinations = Destinations::allowing([
            "10.20.0.0/16".parse::<IpNet>().unwrap(),
            "fd00::/8".parse::<IpNet>().unwrap(),
        ]);
        assert!(destinations.permits(address("10.20.3.4")));
        assert!(destinations.permits(address("::ffff:10.20.3.4")));
        assert!(destinations.permits(address("fd12::1")));
        assert!(!destinations.permits(address("10.21.0.1")));
        assert!(!destinations.permits(address("127.0.0.1")));
        assert!(destinations.permits(address("8.8.8.8")));

        let local = Destinations::public_and_loopback();
        assert!(local.permits(address("127.0.0.1")));
        assert!(local.permits(address("::1")));
        assert!(local.permits(address("::ffff:127.0.0.2")));
        assert!(!local.permits(address("192.168.0.1")));
    }

    #[test]
    fn urls_naming_addresses_are_judged_at_once_and_names_later() {
        let public = Destinations::public_only();
        let problem = public.url_problem("http://127.0.0.1:9/").unwrap();
        assert!(problem.contains("loopback"), "{problem}");
        assert!(problem.contains("allow_networks"), "{problem}");
        assert!(public.url_problem("http://localhost/").is_some());
        assert!(public.url_problem("http://[::1]/").is_some());
        assert!(public.url_problem("http://0x7f000001/").is_some());
        let problem = public.url_problem("https://169.254.169.254/").unwrap();
        assert!(problem.contains("link-local"), "{problem}");
        assert_eq!(public.url_problem("https://93.184.216.34/"), None);
        assert_eq!(public.url_problem("https://agency.example/"), None);

        let local = Destinations::public_and_loopback();
        assert_eq!(local.url_problem("http://localhost:8080/"), None);
        assert_eq!(local.url_problem("http://127.0.0.1:8080/"), None);
        assert!(local.url_problem("https://10.0.0.1/").is_some());
    }

    #[tokio::test]
    async fn deliveries_are_judged_by_what_names_resolve_to() {
        let public = Destinations::public_only();
        let patience = Duration::from_secs(5);
        let refusal = public
            .delivery_problem("http://127.0.0.1:9/", patience)
            .await;
        assert!(
            matches!(&refusal, Some(Refusal::NotPermitted(problem)) if problem.contains("loopback")),
            "{refusal:?}"
        );
        assert!(refusal.unwrap().to_string().starts_with("refused: "));
        assert_eq!(
            public
                .delivery_problem("https://93.184.216.34/", patience)
                .await,
            None
        );
        let refusal = permitted_addresses(&public, "localhost").await.unwrap_err();
        assert!(
            matches!(&refusal, Refusal::NotPermitted(problem) if problem.contains("loopback")),
            "{refusal:?}"
        );
        assert!(
            permitted_addresses(&Destinations::public_and_loopback(), "localhost")
                .await
                .is_ok()
        );
        // A name that resolves to nothing is no refusal, and no delivery either.
        let unresolved = public
            .delivery_problem("https://receiver.invalid/", Duration::from_secs(2))
            .await;
        assert!(
            matches!(&unresolved, Some(Refusal::Unresolved(problem)) if problem.contains("receiver.invalid")),
            "{unresolved:?}"
        );
        assert!(!unresolved.unwrap().to_string().starts_with("refused"));
    }

    #[tokio::test]
    async fn the_resolver_drops_addresses_receivers_may_not_be_at() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = || reqwest::dns::Name::from_str("localhost").unwrap();
        let refused = match Destinations::public_only().resolver().resolve(name()).await {
            Ok(_) => panic!("localhost resolved while loopback is not allowed"),
            Err(error) => error.to_string(),
        };
        assert!(refused.contains("refused: localhost"), "{refused}");
        assert!(refused.contains("loopback"), "{refused}");
        let found: Vec<SocketAddr> = Destinations::public_and_loopback()
            .resolver()
            .resolve(name())
            .await
            .map_err(|error| error.to_string())
            .unwrap()
            .collect();
        assert!(!found.is_empty());
        assert!(found.iter().all(|address| address.ip().is_loopback()));
    }
}
