//! Which addresses a webhook receiver may be at.
//!
//! A webhook URL is chosen by an agency's credential, not by the operator, and the service POSTs
//! to it from inside the deployment's network. Left open, that lets a credential make the service
//! call its own machine or the internal network (a database port, a cloud metadata endpoint, an
//! admin page), and the delivery log's errors would tell it which ports answer. So receivers must
//! have public addresses unless the operator names further networks (`[webhooks]
//! allow_networks`), for agencies whose systems are reached over a private network. What is
//! public is judged by the address alone: the deployment's own public addresses are not known
//! here, and are for an outbound firewall to close.
//!
//! The rule is applied where the address is known: a URL naming an address is judged at
//! registration and again before every attempt (the configuration may have changed since). A
//! host name is judged before every attempt by what it then resolves to, so that a refused
//! attempt sends nothing and discloses nothing, and again at every connection by the resolver
//! the HTTP client uses, which drops the addresses that are not allowed: a name that changes in
//! between still reaches no refused address.
//!
//! Where the only way out is a forward proxy (`[webhooks] proxy`), deliveries go through it,
//! and the proxy resolves host names: it is then the proxy that must refuse internal
//! destinations, as an egress proxy does. URLs naming an address in an allowed network (or
//! this machine by name, `localhost`, when loopback is allowed) are still connected to
//! directly, since the proxy would reach its own loopback or another network, not the one
//! allowed here; a name that resolves into an allowed network goes through the proxy like any
//! other.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// How long a name found to have a permitted address is taken to still have one, by the check
/// before each attempt: a webhook sends an event at a time, and a lookup per event would cost
/// each one a round trip to the resolver. Every new connection is still judged by the resolver.
const NAME_VERDICT_KEPT: Duration = Duration::from_secs(60);
/// The most names whose verdicts are kept; beyond it, expired ones are dropped.
const NAME_VERDICTS_KEPT: usize = 1024;
/// A name whose lookup never ends, in the tests' resolver.
#[cfg(test)]
const HANGING_NAME: &str = "hanging.example";

/// The networks receivers may be in besides the public internet. Cheap to clone; clones share
/// what they learnt of names.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed: Arc<Vec<IpNet>>,
    /// Names lately found to resolve to a permitted address, with until when that is taken to
    /// hold.
    permitted_names: Arc<Mutex<HashMap<String, Verdict>>>,
    /// The forward proxy deliveries go through, if the operator names one.
    proxy: Option<ForwardProxy>,
    /// Answers the tests give in place of the system's resolver.
    #[cfg(test)]
    hosts: Option<Arc<HashMap<String, Vec<IpAddr>>>>,
}

impl PartialEq for Destinations {
    fn eq(&self, other: &Self) -> bool {
        self.allowed == other.allowed && self.proxy == other.proxy
    }
}

impl Eq for Destinations {}

impl Destinations {
    /// Public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses and those in `networks`.
    pub fn allowing(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            allowed: Arc::new(networks.into_iter().collect()),
            ..Self::default()
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

    /// These destinations, reached through `proxy` but for this machine and the allowed
    /// networks' addresses (see the module's notes).
    pub fn via_proxy(self, proxy: ForwardProxy) -> Self {
        Self {
            proxy: Some(proxy),
            ..self
        }
    }

    /// The forward proxy deliveries go through, if any.
    pub fn proxy(&self) -> Option<&ForwardProxy> {
        self.proxy.as_ref()
    }

    /// Whether a delivery to `url` goes through the forward proxy: with one configured, every
    /// delivery but those to `localhost` and to an address in an allowed network (loopback
    /// included, when allowed), which are this machine's or the operator's own networks.
    pub fn through_proxy(&self, url: &reqwest::Url) -> bool {
        if self.proxy.is_none() {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        if names_this_machine(host) {
            return false;
        }
        literal(host).is_none_or(|address| !self.allowed_network(address))
    }

    /// Whether `address` is in one of the networks the operator allows (as opposed to the
    /// public internet, which [`Self::permits`] also takes).
    fn allowed_network(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.allowed.iter().any(|net| net.contains(&address))
    }

    /// Reads one entry of `allow_networks`: a network (`10.20.0.0/16`, `fd00::/8`) or a single
    /// address. Refused, with the reason: anything else; a network written with host bits (a
    /// typo here would widen or narrow the operator's intent unseen); and a network inside an
    /// IPv6 form that carries IPv4 addresses (`::ffff:0:0/96`, `::/96`, `64:ff9b::/96`,
    /// `2002::/16`), whose addresses are judged as the IPv4 addresses they carry, so that the
    /// entry would never match: the IPv4 network is what to write.
    pub fn network(entry: &str) -> Result<IpNet, String> {
        let network = match entry.parse::<IpNet>() {
            Ok(network) => network,
            Err(_) => match entry.parse::<IpAddr>() {
                Ok(address) => IpNet::from(address),
                Err(_) => {
                    return Err(
                        "is neither a network (`10.20.0.0/16`, `fd00::/8`) nor an address"
                            .to_owned(),
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
        let this_machine = ["::/128", "::1/128"]
            .map(|net| net.parse::<IpNet>().expect("a valid network"))
            .contains(&network);
        let carries_ipv4 = ["::ffff:0:0/96", "::/96", "64:ff9b::/96", "2002::/16"]
            .map(|net| net.parse::<IpNet>().expect("a valid network"))
            .iter()
            .any(|form| form.contains(&network));
        if carries_ipv4 && !this_machine {
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
    /// a name other than this machine's (names are judged when they are resolved, at each delivery),
    /// or when `url` is not one [`crate::registration::url_problem`] accepts.
    pub fn url_problem(&self, url: &str) -> Option<String> {
        let url = reqwest::Url::parse(url).ok()?;
        let host = url.host_str()?;
        if let Some(proxy) = &self.proxy
            && proxy.is_host(host)
            && self.through_proxy(&url)
        {
            // Through the proxy it would be the proxy calling itself, at any port. (Named by
            // an address in an allowed network, it is connected to directly, as a receiver.)
            return Some(format!(
                "url's host {host} is the proxy webhook deliveries go through"
            ));
        }
        let (address, shown) = if names_this_machine(host) {
            // It resolves to either loopback address, or to both: allowing one allows it (the
            // resolver then connects only to that one).
            if self.permits(IpAddr::V6(Ipv6Addr::LOCALHOST)) {
                return None;
            }
            (IpAddr::V4(Ipv4Addr::LOCALHOST), host)
        } else {
            (literal(host)?, host)
        };
        if self.permits(address) {
            return None;
        }
        let kind = restricted(canonical(address)).unwrap_or("a restricted address");
        Some(format!(
            "url's host {shown} is {kind}; receivers must be on the public internet unless the \
             operator allows their network (`[webhooks] allow_networks`)"
        ))
    }

    /// Why a delivery to `url` may not be made now, judging a host name by what it resolves to
    /// at this moment (or did lately, see [`NAME_VERDICT_KEPT`]): `None` when it may. Asked
    /// before each attempt, so that a refused one sends nothing and discloses nothing.
    pub async fn delivery_problem(&self, url: &str, patience: Duration) -> Option<Undeliverable> {
        if let Some(problem) = self.url_problem(url) {
            return Some(Undeliverable::Address(problem));
        }
        let parsed = reqwest::Url::parse(url).ok()?;
        let name = parsed.host_str()?.to_ascii_lowercase();
        if literal(&name).is_some() {
            // An address, judged above, and never resolved.
            return None;
        }
        if self.through_proxy(&parsed) {
            // The proxy resolves the name, and judges where it leads; this machine may not
            // even be able to resolve names outside.
            return None;
        }
        if self.permitted_lately(&name) {
            return None;
        }
        let looked_up_at = Instant::now();
        let found = match tokio::time::timeout(patience, self.lookup(&name)).await {
            Ok(Ok(found)) if !found.is_empty() => found,
            Ok(Ok(_)) => {
                tracing::info!(host = %name, "a webhook receiver's name has no address");
                return Some(Undeliverable::Name(name));
            }
            Ok(Err(error)) => {
                tracing::info!(host = %name, %error, "a webhook receiver's name does not resolve");
                return Some(Undeliverable::Name(name));
            }
            Err(_) => {
                tracing::info!(host = %name, "a webhook receiver's name did not resolve in time");
                return Some(Undeliverable::Name(name));
            }
        };
        if found.iter().any(|address| self.permits(*address)) {
            self.note_permitted(name, looked_up_at);
            return None;
        }
        tracing::info!(
            host = %name, addresses = ?found,
            "a webhook receiver's name resolves only to addresses outside the allowed networks"
        );
        Some(Undeliverable::Name(name))
    }

    fn permitted_lately(&self, name: &str) -> bool {
        let names = self
            .permitted_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        matches!(names.get(name), Some(Verdict::Permitted { until }) if *until > Instant::now())
    }

    /// Notes that `name` was found, by a lookup begun at `looked_up_at`, to have a permitted
    /// address; unless it was forgotten since that lookup began, whose answer is then older
    /// than what made it be forgotten.
    fn note_permitted(&self, name: String, looked_up_at: Instant) {
        let mut names = self
            .permitted_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(names.get(&name), Some(Verdict::Forgotten { at }) if *at > looked_up_at) {
            return;
        }
        let now = Instant::now();
        Self::make_room(&mut names, now);
        if names.len() < NAME_VERDICTS_KEPT {
            names.insert(
                name,
                Verdict::Permitted {
                    until: now + NAME_VERDICT_KEPT,
                },
            );
        }
    }

    /// Drops what was noted of `name`: the resolver found it has no permitted address now (or
    /// is looking again), and the check before the next attempt must not go by the earlier
    /// verdict, nor by one a lookup begun earlier is about to note.
    fn forget_permitted(&self, name: &str) {
        let mut names = self
            .permitted_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        names.remove(name);
        Self::make_room(&mut names, now);
        if names.len() < NAME_VERDICTS_KEPT {
            names.insert(name.to_owned(), Verdict::Forgotten { at: now });
        }
    }

    /// Drops the verdicts that no longer count, when there are too many: permissions past their
    /// time, and forgettings older than any lookup still running could be (lookups before
    /// attempts give up after the receiver's timeout, which is far shorter in practice).
    fn make_room(names: &mut HashMap<String, Verdict>, now: Instant) {
        if names.len() >= NAME_VERDICTS_KEPT {
            names.retain(|_, verdict| match verdict {
                Verdict::Permitted { until } => *until > now,
                Verdict::Forgotten { at } => now.duration_since(*at) < NAME_VERDICT_KEPT,
            });
        }
    }

    /// These destinations, resolving names from `hosts` instead of the system's resolver.
    #[cfg(test)]
    pub(crate) fn resolving_from(self, hosts: HashMap<String, Vec<IpAddr>>) -> Self {
        Self {
            hosts: Some(Arc::new(hosts)),
            ..self
        }
    }

    /// The addresses `name` resolves to, by the system's resolver; a name of this machine, as
    /// RFC 6761 has it, to both loopback addresses, whatever the hosts file says (the rule
    /// judged `localhost` by them at registration).
    async fn lookup(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        if names_this_machine(name) {
            return Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        #[cfg(test)]
        if let Some(hosts) = &self.hosts {
            if name == HANGING_NAME {
                std::future::pending::<()>().await;
            }
            return hosts
                .get(name)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"));
        }
        Ok(tokio::net::lookup_host((name, 0))
            .await?
            .map(|address| address.ip())
            .collect())
    }

    /// The resolver the HTTP client should use: the system's, keeping only permitted addresses.
    pub(crate) fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver {
            destinations: self.clone(),
        })
    }
}

/// What the check before attempts last learnt of a name.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// It had a permitted address, taken to hold until then.
    Permitted { until: Instant },
    /// What was noted was dropped then (see [`Destinations::forget_permitted`]).
    Forgotten { at: Instant },
}

/// Why a delivery is not made; the text is what the delivery log shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    /// The URL names an address outside the permitted networks.
    #[error("refused: {0}")]
    Address(String),
    /// The name has no permitted address: it does not resolve, or only to refused addresses.
    /// One text for both, so that an agency cannot learn from the log which names the
    /// service's own resolver knows (the operator's log says which).
    #[error(
        "refused: {0} has no address receivers may be at (it does not resolve, or only to \
         addresses outside the allowed networks)"
    )]
    Name(String),
}

/// A forward proxy deliveries go through (`[webhooks] proxy`), for deployments whose only way
/// out is one. A user name and password in its URL authenticate to the proxy (`Basic`); they are
/// never shown: its `Debug` and [`ForwardProxy::shown`] leave them out.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    url: reqwest::Url,
    /// The URL's host, in lower case, as the resolver is asked for it.
    host: String,
}

impl ForwardProxy {
    /// Reads `[webhooks] proxy`: `http://host:port` (or `https://`), with an optional
    /// `user:password@`. Refused, with why (never repeating the URL, which may hold a password):
    /// anything else.
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXAMPLE: &str = "`http://proxy.example:3128`";
        // The parser's reason never quotes the text.
        let url = reqwest::Url::parse(text)
            .map_err(|error| format!("is not an absolute URL such as {EXAMPLE} ({error})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "must be an http:// or https:// proxy, such as {EXAMPLE}"
            ));
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(format!("must name a host, as {EXAMPLE}")),
        };
        if names_this_machine(host) {
            // Receivers may be at `localhost` too, and the resolver passes the proxy's name
            // unfiltered: the two must not share a name.
            return Err(
                "must name this machine by its address (`http://127.0.0.1:3128` or \
                 `http://[::1]:3128`), not as localhost"
                    .to_owned(),
            );
        }
        let host = host.trim_end_matches('.');
        if url.port() == Some(0) {
            return Err("must not name port 0: nothing can be reached there".to_owned());
        }
        for (part, encoded) in [
            ("user name", url.username()),
            ("password", url.password().unwrap_or("")),
        ] {
            if !decodes_to_text(encoded) {
                return Err(format!(
                    "has a {part} that is not percent-encoded text: write `%` as `%25`, and \
                     other characters as their UTF-8 bytes, `%XX` each"
                ));
            }
        }
        // Basic authentication separates the two at the first colon.
        if url.username().to_ascii_lowercase().contains("%3a") {
            return Err(
                "has a user name holding `:`, which Basic authentication cannot carry".to_owned(),
            );
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "must be the proxy's address alone, as {EXAMPLE}, without a path"
            ));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            url,
        })
    }

    /// Whether `host`, as a URL has it, is the proxy's: the same name (in any case, with or
    /// without the final dot), or the same address in any of the forms judged as it (an IPv4
    /// address mapped into IPv6, say).
    fn is_host(&self, host: &str) -> bool {
        match (literal(&self.host), literal(host)) {
            (Some(proxy), Some(other)) => canonical(proxy) == canonical(other),
            (None, None) => self.host == host.trim_end_matches('.').to_ascii_lowercase(),
            _ => false,
        }
    }

    /// The URL deliveries are sent through, with its user name and password.
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The proxy's URL without its user name and password.
    pub fn shown(&self) -> String {
        let mut shown = self.url.clone();
        // Setting these can fail only for URLs without a host, which `parse` refuses.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.to_string()
    }
}

impl fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ForwardProxy").field(&self.shown()).finish()
    }
}

/// Whether `encoded`, percent-encoded, decodes to UTF-8 text: every `%` followed by two hex
/// digits. (The URL parser leaves a stray `%` as it is, and the proxy client would send it so,
/// or replace bytes that are not UTF-8.)
fn decodes_to_text(encoded: &str) -> bool {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let Some(hex) = after
                .get(..2)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            else {
                return false;
            };
            let Ok(decoded) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("x"), 16)
            else {
                return false;
            };
            bytes.push(decoded);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).is_ok()
}

/// Whether `host` is a name of this machine: `localhost`, or a name under it (RFC 6761), with
/// or without the root's dot.
fn names_this_machine(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The address a URL's host names, when it is one (IPv6 in its brackets).
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
}

/// What kind of address outside the public internet `address` is, or `None` for a public one:
/// loopback, private, shared (carrier-grade NAT), link-local (which holds cloud metadata
/// endpoints), unspecified (which reaches this machine), multicast, broadcast, the blocks
/// reserved for documentation, benchmarking, protocols and future use, and IPv6 outside global
/// unicast (`2000::/3`), with the exceptions inside it that IANA lists as not global.
fn restricted(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_unspecified() || a == 0 {
                Some("an unspecified address (this machine)")
            } else if v4.is_private() {
                Some("a private address")
            } else if a == 100 && (64..128).contains(&b) {
                Some("a shared address (carrier-grade NAT)")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if a >= 240 {
                Some("a reserved address")
            } else if v4.is_documentation() {
                Some("a documentation address")
            } else if a == 198 && (b == 18 || b == 19) {
                Some("a benchmarking address")
            } else if a == 192 && b == 0 && c == 0 {
                Some("a protocol-assignment address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let bits = u128::from(v6);
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address (this machine)")
            } else if segments[0] & 0xfe00 == 0xfc00 || segments[0] & 0xffc0 == 0xfec0 {
                Some("a private address")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if segments[0] & 0xe000 != 0x2000 {
                // Outside 2000::/3, the only block handed out for the internet: what else is
                // reachable there (local NAT64 prefixes, SIIT, discard) is the network's own.
                Some("a reserved address")
            } else if (segments[0] == 0x2001 && segments[1] == 0x0db8)
                || (segments[0] == 0x3fff && segments[1] < 0x1000)
            {
                Some("a documentation address")
            } else if segments[0] == 0x2001 && segments[1] == 0 {
                // Teredo: the client's IPv4 address is in it, obscured.
                Some("a Teredo address")
            } else if segments[0] == 0x2001
                && segments[1] < 0x200
                // The IETF protocol block, but for its anycast services and global blocks.
                && !((0x2001_0001_0000_0000_0000_0000_0000_0001
                    ..=0x2001_0001_0000_0000_0000_0000_0000_0003)
                    .contains(&bits)
                    || segments[1] == 3
                    || (segments[1] == 4 && segments[2] == 0x112)
                    || (0x20..=0x3f).contains(&segments[1]))
            {
                Some("a reserved address")
            } else {
                None
            }
        }
    }
}

/// An IPv6 address that carries an IPv4 one in these forms is judged as that IPv4 address,
/// which is where it leads: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`, deprecated),
/// translated by the well-known NAT64 prefix (`64:ff9b::a.b.c.d`), or 6to4 (`2002:aabb:ccdd::`).
/// (A network's own NAT64 prefix is not known here; see docs/operations.md.)
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

/// Resolves host names with the system's resolver and drops the addresses receivers may not be
/// at; a name left with none fails the connection before anything is sent.
pub(crate) struct Resolver {
    destinations: Destinations,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.destinations.clone();
        Box::pin(async move {
            let name = name.as_str().to_owned();
            if destinations
                .proxy
                .as_ref()
                .is_some_and(|proxy| proxy.is_host(&name))
            {
                // The operator's own proxy, most likely on an internal address: connected to
                // whatever its addresses, which the rule for receivers does not apply to.
                let found = destinations.lookup(&name).await?;
                let addresses: reqwest::dns::Addrs = Box::new(
                    found
                        .into_iter()
                        .map(|address| SocketAddr::new(address, 0))
                        .collect::<Vec<_>>()
                        .into_iter(),
                );
                return Ok(addresses);
            }
            let refused = || Undeliverable::Name(name.clone()).to_string();
            // What the check before attempts noted of the name holds again only if this lookup
            // finds a permitted address. Forgotten first, so that a lookup the connection's
            // timeout cuts short leaves the next check to look again. If the name changed since
            // that check went by it (or the resolver fails just now), it is said in the
            // server's log as that check says it.
            destinations.forget_permitted(&name);
            let looked_up_at = Instant::now();
            let found = match destinations.lookup(&name).await {
                Ok(found) if !found.is_empty() => found,
                // Forgotten again: the check before another webhook's attempt may have noted
                // the name while this lookup ran.
                Ok(_) => {
                    destinations.forget_permitted(&name);
                    tracing::info!(host = %name, "a webhook receiver's name has no address");
                    return Err(refused().into());
                }
                Err(error) => {
                    destinations.forget_permitted(&name);
                    tracing::info!(host = %name, %error, "a webhook receiver's name does not resolve");
                    return Err(refused().into());
                }
            };
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|address| destinations.permits(*address))
                .map(|address| SocketAddr::new(address, 0))
                .collect();
            if permitted.is_empty() {
                destinations.forget_permitted(&name);
                tracing::info!(
                    host = %name, addresses = ?found,
                    "a webhook receiver's name resolves only to addresses outside the allowed networks"
                );
                return Err(refused().into());
            }
            destinations.note_permitted(name, looked_up_at);
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
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            "2001:1::1",
            "2001:1::3",
            "2001:200::1",
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
            "2001:100::1",
            "2001:1::4",
            "3fff::1",
            "5f00::1",
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

    /// Destinations that resolve names from `hosts` instead of the system's resolver.
    fn resolving(destinations: Destinations, hosts: &[(&str, &[&str])]) -> Destinations {
        destinations.resolving_from(
            hosts
                .iter()
                .map(|(name, found)| {
                    let found = found.iter().map(|text| address(text)).collect();
                    ((*name).to_owned(), found)
                })
                .collect(),
        )
    }

    const HOSTS: &[(&str, &[&str])] = &[
        ("inside.example", &["127.0.0.1", "::1"]),
        ("private.example", &["10.1.2.3"]),
        ("mixed.example", &["10.1.2.3", "93.184.216.34"]),
        ("public.example", &["93.184.216.34"]),
    ];

    #[tokio::test]
    async fn deliveries_are_judged_by_what_names_resolve_to() {
        let public = resolving(Destinations::public_only(), HOSTS);
        let patience = Duration::from_secs(5);
        let refusal = public
            .delivery_problem("http://127.0.0.1:9/", patience)
            .await
            .unwrap();
        assert!(
            matches!(&refusal, Undeliverable::Address(problem) if problem.contains("loopback")),
            "{refusal:?}"
        );
        assert!(refusal.to_string().starts_with("refused: url's host"));
        for allowed in [
            "https://93.184.216.34/",
            "https://public.example/hooks",
            "https://MIXED.example/",
        ] {
            assert_eq!(
                public.delivery_problem(allowed, patience).await,
                None,
                "{allowed}"
            );
        }
        // A name resolving only inside, and one that does not resolve, read alike: the log
        // must not tell an agency which names the service's resolver knows.
        let inside = public
            .delivery_problem("https://inside.example/", patience)
            .await
            .unwrap();
        let private = public
            .delivery_problem("https://private.example/", patience)
            .await
            .unwrap();
        let unknown = public
            .delivery_problem("https://unknown.example/", patience)
            .await
            .unwrap();
        assert_eq!(inside, Undeliverable::Name("inside.example".to_owned()));
        assert_eq!(private, Undeliverable::Name("private.example".to_owned()));
        assert_eq!(unknown, Undeliverable::Name("unknown.example".to_owned()));
        assert!(
            inside
                .to_string()
                .starts_with("refused: inside.example has no address")
        );
        assert_eq!(
            private.to_string().replace("private", "unknown"),
            unknown.to_string()
        );
        let here = resolving(Destinations::public_and_loopback(), HOSTS);
        assert_eq!(
            here.delivery_problem("https://inside.example/", patience)
                .await,
            None
        );
        assert!(
            here.delivery_problem("https://private.example/", patience)
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_name_found_permitted_is_not_looked_up_again_for_a_while() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let public = resolving(Destinations::public_only(), HOSTS);
        let patience = Duration::from_secs(5);
        let url = "https://public.example/";
        assert_eq!(public.delivery_problem(url, patience).await, None);
        // The name now points inside: the check before the attempt goes by what it found a
        // moment ago, and the resolver judges the connection itself...
        let moved = public.clone().resolving_from(HashMap::from([(
            "public.example".to_owned(),
            vec![address("10.0.0.1")],
        )]));
        assert_eq!(moved.delivery_problem(url, patience).await, None);
        let name = reqwest::dns::Name::from_str("public.example").unwrap();
        assert!(moved.resolver().resolve(name).await.is_err());
        // ...and, refusing it, makes the next check look again.
        assert!(moved.delivery_problem(url, patience).await.is_some());

        // A verdict counts until its time is up, and not after.
        let noted = |until: Instant| {
            public
                .permitted_names
                .lock()
                .unwrap()
                .insert("private.example".to_owned(), Verdict::Permitted { until });
        };
        noted(Instant::now() + Duration::from_secs(30));
        let private = "https://private.example/";
        assert_eq!(public.delivery_problem(private, patience).await, None);
        noted(Instant::now());
        assert!(public.delivery_problem(private, patience).await.is_some());

        // A connection's lookup cut short by its timeout leaves the next check to look again.
        public.note_permitted(HANGING_NAME.to_owned(), Instant::now());
        assert!(public.permitted_lately(HANGING_NAME));
        let hanging = reqwest::dns::Name::from_str(HANGING_NAME).unwrap();
        let cut_short = tokio::time::timeout(
            Duration::from_millis(20),
            public.resolver().resolve(hanging),
        );
        assert!(cut_short.await.is_err());
        assert!(!public.permitted_lately(HANGING_NAME));

        // A lookup begun before the name was forgotten does not note it again with its older
        // answer; one begun after does.
        let begun = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        public.forget_permitted("race.example");
        public.note_permitted("race.example".to_owned(), begun);
        assert!(!public.permitted_lately("race.example"));
        public.note_permitted("race.example".to_owned(), Instant::now());
        assert!(public.permitted_lately("race.example"));
    }

    #[test]
    fn localhost_is_allowed_with_either_loopback_address() {
        let url = "http://localhost:8080/";
        for allowed in ["127.0.0.1", "::1", "127.0.0.0/8"] {
            let destinations = Destinations::allowing([Destinations::network(allowed).unwrap()]);
            assert_eq!(destinations.url_problem(url), None, "{allowed}");
        }
        let refused = Destinations::public_only().url_problem(url).unwrap();
        assert!(
            refused.contains("localhost is a loopback address"),
            "{refused}"
        );
        let elsewhere = Destinations::allowing([Destinations::network("10.0.0.0/8").unwrap()]);
        assert!(elsewhere.url_problem(url).is_some());
    }

    /// Names of this machine are its loopback addresses whatever the hosts file says, and the
    /// resolver keeps the allowed ones.
    #[tokio::test]
    async fn localhost_is_both_loopback_addresses() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let resolve = |destinations: Destinations, name: &'static str| async move {
            destinations
                .resolver()
                .resolve(reqwest::dns::Name::from_str(name).unwrap())
                .await
                .map(|found| found.collect::<Vec<SocketAddr>>())
                .map_err(|error| error.to_string())
        };
        let refused = resolve(Destinations::public_only(), "localhost")
            .await
            .unwrap_err();
        assert!(
            refused.starts_with("refused: localhost has no address"),
            "{refused}"
        );
        let both: Vec<SocketAddr> = ["127.0.0.1:0", "[::1]:0"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        assert_eq!(
            resolve(Destinations::public_and_loopback(), "localhost").await,
            Ok(both.clone())
        );
        assert_eq!(
            resolve(Destinations::public_and_loopback(), "Receiver.localhost.").await,
            Ok(both.clone())
        );
        let only_v6 = Destinations::allowing([Destinations::network("::1").unwrap()]);
        assert_eq!(resolve(only_v6, "localhost").await, Ok(vec![both[1]]));
        let only_v4 = Destinations::allowing([Destinations::network("127.0.0.1").unwrap()]);
        assert_eq!(resolve(only_v4, "localhost.").await, Ok(vec![both[0]]));
    }

    #[tokio::test]
    async fn the_resolver_drops_addresses_receivers_may_not_be_at() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let resolve = |destinations: &Destinations, name: &str| {
            destinations
                .resolver()
                .resolve(reqwest::dns::Name::from_str(name).unwrap())
        };
        let public = resolving(Destinations::public_only(), HOSTS);
        let refused = match resolve(&public, "inside.example").await {
            Ok(_) => panic!("a name resolving only to loopback was resolved"),
            Err(error) => error.to_string(),
        };
        assert!(
            refused.starts_with("refused: inside.example has no address"),
            "{refused}"
        );
        let found: Vec<SocketAddr> = resolve(&public, "mixed.example")
            .await
            .map_err(|error| error.to_string())
            .unwrap()
            .collect();
        assert_eq!(found, ["93.184.216.34:0".parse::<SocketAddr>().unwrap()]);
        let here = resolving(Destinations::public_and_loopback(), HOSTS);
        let found: Vec<SocketAddr> = resolve(&here, "inside.example")
            .await
            .map_err(|error| error.to_string())
            .unwrap()
            .collect();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|address| address.ip().is_loopback()));
    }

    #[test]
    fn a_proxy_is_an_address_alone_and_never_shows_its_password() {
        let proxy = ForwardProxy::parse("http://deliveries:s3cret@Proxy.Internal:3128").unwrap();
        assert_eq!(proxy.shown(), "http://proxy.internal:3128/");
        assert!(!format!("{proxy:?}").contains("s3cret"));
        assert_eq!(proxy.url().password(), Some("s3cret"));
        assert_eq!(proxy.host, "proxy.internal");
        let v6 = ForwardProxy::parse("https://[fd00::3]:8443/").unwrap();
        assert_eq!(v6.host, "fd00::3");
        for (wrong, why) in [
            ("proxy.internal:3128", "http:// or https://"),
            ("socks5://proxy.internal:1080", "http:// or https://"),
            (
                "http://user:s3cret@proxy.internal:3128/squid",
                "without a path",
            ),
            ("http://proxy.internal:3128/?a=b", "without a path"),
            ("http://", "absolute URL"),
            ("not a url", "absolute URL"),
            ("http://localhost:3128", "by its address"),
            ("http://proxy.internal:0", "port 0"),
            ("http://proxy.internal:99999", "invalid port"),
            (
                "http://user:s3cret%zz@proxy.internal:3128",
                "percent-encoded text",
            ),
            (
                "http://user:s3cret%FF@proxy.internal:3128",
                "percent-encoded text",
            ),
            (
                "http://user:s3cret%4@proxy.internal:3128",
                "percent-encoded text",
            ),
            (
                "http://user:s3cret%+1@proxy.internal:3128",
                "percent-encoded text",
            ),
            ("http://us%3Aer:s3cret@proxy.internal:3128", "`:`"),
            ("http://proxy.localhost.:3128", "by its address"),
        ] {
            let refused = ForwardProxy::parse(wrong).unwrap_err();
            assert!(refused.contains(why), "{wrong}: {refused}");
            assert!(!refused.contains("s3cret"), "{refused}");
        }
    }

    #[test]
    fn through_a_proxy_go_names_and_addresses_outside_the_allowed_networks() {
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        let direct = Destinations::public_and_loopback();
        assert!(!direct.through_proxy(&url("https://receiver.example/")));
        let proxied = Destinations::allowing([Destinations::network("10.20.0.0/16").unwrap()])
            .via_proxy(ForwardProxy::parse("http://proxy.internal:3128").unwrap());
        for through in [
            "https://receiver.example/hooks",
            "https://93.184.216.34/",
            "https://[2a00:1450:4001:80b::200e]/",
            "https://10.21.0.1/",
        ] {
            assert!(proxied.through_proxy(&url(through)), "{through}");
        }
        for straight in [
            "http://localhost:8080/",
            "http://LOCALHOST:8080/",
            "https://10.20.3.4/",
            "https://[::ffff:10.20.3.4]/",
        ] {
            assert!(!proxied.through_proxy(&url(straight)), "{straight}");
        }
    }

    #[tokio::test]
    async fn behind_a_proxy_names_are_left_to_it_and_addresses_are_still_judged() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let patience = Duration::from_secs(5);
        let proxied = resolving(
            Destinations::public_only()
                .via_proxy(ForwardProxy::parse("http://proxy.internal:3128").unwrap()),
            &[
                ("proxy.internal", &["10.0.0.9"]),
                ("inside.example", &["127.0.0.1"]),
            ],
        );
        // A name this machine cannot resolve goes to the proxy, which resolves it.
        assert_eq!(
            proxied
                .delivery_problem("https://unknown.example/", patience)
                .await,
            None
        );
        // Addresses, this machine by any of its names, and the proxy itself are refused.
        for refused in [
            "https://10.1.2.3/",
            "http://localhost:8080/",
            "https://localhost.:6379/",
            "https://cache.localhost/",
            "https://169.254.169.254/",
            "https://proxy.internal:22/",
            "https://PROXY.internal./",
        ] {
            assert!(
                matches!(
                    proxied.delivery_problem(refused, patience).await,
                    Some(Undeliverable::Address(_))
                ),
                "{refused}"
            );
        }
        // A proxy named by an address in an allowed network shares it with receivers there,
        // which are connected to directly.
        let beside = Destinations::allowing([Destinations::network("10.0.0.0/8").unwrap()])
            .via_proxy(ForwardProxy::parse("http://10.0.0.9:3128").unwrap());
        assert_eq!(beside.url_problem("https://10.0.0.9:8443/hooks"), None);
        // A proxy at a public address is that address in every form judged as it.
        let public = Destinations::public_only()
            .via_proxy(ForwardProxy::parse("http://8.8.8.8:3128").unwrap());
        for same in [
            "https://8.8.8.8/",
            "https://[::ffff:8.8.8.8]/",
            "https://[64:ff9b::808:808]/",
            "https://[2002:808:808::1]/",
        ] {
            let refused = public.url_problem(same).expect(same);
            assert!(refused.contains("is the proxy"), "{same}: {refused}");
        }
        assert_eq!(public.url_problem("https://8.8.4.4/"), None);

        // The proxy itself is connected to, though its address is private; other names still
        // get only permitted addresses.
        let resolve = |name: &str| {
            proxied
                .resolver()
                .resolve(reqwest::dns::Name::from_str(name).unwrap())
        };
        let found: Vec<SocketAddr> = resolve("proxy.internal")
            .await
            .map_err(|error| error.to_string())
            .unwrap()
            .collect();
        assert_eq!(found, ["10.0.0.9:0".parse::<SocketAddr>().unwrap()]);
        assert!(resolve("inside.example").await.is_err());
    }
}
