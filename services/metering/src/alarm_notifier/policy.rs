//! Which alarm actions may be called, so that an alarm cannot make the service reach what its
//! owner could not (server-side request forgery): the rules, checked when an alarm is created
//! or changed (the API answers 400 naming the rule) and again before every request.
//!
//! - Schemes `log`, `http` and `https` only; URLs of at most [`MAX_ACTION_LEN`] bytes.
//! - The host is resolved and *every* address it resolves to is checked; the notifier's HTTP
//!   client resolves through [`ActionPolicy::resolve`] and connects only to the addresses it
//!   checked, so a name that resolves to something else a moment later (DNS rebinding) gains
//!   nothing.
//! - Networks, in this order: the operator's deny list (always refused); the operator's allow
//!   list (always allowed, also inside the built-in denials); the built-in denials: unspecified,
//!   cloud metadata, link-local, multicast and reserved addresses always, and loopback, private
//!   and shared (CGNAT) ranges when the policy is strict — which it is when the API has
//!   authentication on, since an authenticated user is then not the operator.
//!
//! IPv4 addresses mapped or translated into IPv6 (`::ffff:a.b.c.d`, `64:ff9b::a.b.c.d`) are
//! judged as the IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;

/// Longest action URL accepted.
pub const MAX_ACTION_LEN: usize = 2048;

/// Longest wait for a host name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

/// A network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network in CIDR notation (such as 10.0.0.0/8 or fd00::/8)")]
pub struct BadNetwork(pub String);

impl Network {
    /// The network of `address` with `prefix` bits (clamped to the family's width).
    pub const fn new(address: IpAddr, prefix: u8) -> Self {
        let width = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = if prefix > width { width } else { prefix };
        Self { address, prefix }
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Self::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self::new(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = BadNetwork;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadNetwork(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(bad)?,
            None => width,
        };
        Ok(Self::new(address, prefix))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl serde::Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A built-in rule: its name (what a refusal says) and its networks.
struct Rule {
    name: &'static str,
    networks: &'static [Network],
}

/// Refused whatever the policy's strictness, unless the operator allows them. Metadata first,
/// so that 169.254.169.254 is named for what it is rather than as link-local.
const ALWAYS_DENIED: &[Rule] = &[
    Rule {
        name: "metadata",
        networks: &[
            Network::v4(169, 254, 169, 254, 32),
            Network::v4(169, 254, 170, 2, 32),
            Network::v4(100, 100, 100, 200, 32),
            Network::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        ],
    },
    Rule {
        name: "link-local",
        networks: &[
            Network::v4(169, 254, 0, 0, 16),
            Network::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        ],
    },
    Rule {
        name: "unspecified",
        networks: &[
            Network::v4(0, 0, 0, 0, 8),
            Network::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        ],
    },
    Rule {
        name: "multicast",
        networks: &[
            Network::v4(224, 0, 0, 0, 4),
            Network::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        ],
    },
    Rule {
        name: "reserved",
        networks: &[Network::v4(240, 0, 0, 0, 4)],
    },
];

/// Refused too when the policy is strict (authentication on), unless the operator allows them.
const DENIED_WHEN_STRICT: &[Rule] = &[
    Rule {
        name: "loopback",
        networks: &[
            Network::v4(127, 0, 0, 0, 8),
            Network::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        ],
    },
    Rule {
        name: "private",
        networks: &[
            Network::v4(10, 0, 0, 0, 8),
            Network::v4(172, 16, 0, 0, 12),
            Network::v4(192, 168, 0, 0, 16),
            Network::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        ],
    },
    Rule {
        name: "shared",
        networks: &[Network::v4(100, 64, 0, 0, 10)],
    },
];

/// The NAT64 well-known prefix: its addresses carry an IPv4 address in the last 32 bits.
const NAT64: Network = Network::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);

/// Why an action may not be called. Its `Display` names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not `log://`, `http://` or `https://`.
    #[error("scheme {0:?} is not allowed: actions are log://, http:// or https://")]
    Scheme(String),
    /// Not a URL, or an http(s) URL without a host.
    #[error("not a URL: {0}")]
    Malformed(String),
    /// Longer than [`MAX_ACTION_LEN`].
    #[error("longer than {MAX_ACTION_LEN} bytes")]
    TooLong,
    /// The host resolves to an address a rule refuses.
    #[error("{host} resolves to {address}, refused by rule {rule:?}{hint}")]
    Address {
        /// The host as written.
        host: String,
        /// The refused address.
        address: IpAddr,
        /// The rule: a built-in name (`metadata`, `link-local`, `loopback`, `private`…) or
        /// `deny_networks <cidr>`.
        rule: String,
        /// How an operator lifts it, when one can.
        hint: &'static str,
    },
    /// The host does not resolve (now).
    #[error("{host} does not resolve: {reason}")]
    Unresolvable {
        /// The host as written.
        host: String,
        /// Why.
        reason: String,
    },
}

impl Refusal {
    /// Whether the same action may pass later (a name that did not resolve this time).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unresolvable { .. })
    }
}

const ALLOW_HINT: &str =
    " (an operator can allow it with --allow-action-network or [actions] allow_networks)";

/// The rules actions are held to; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionPolicy {
    /// Networks always allowed (operator's choice, wins over the built-in denials).
    pub allow: Vec<Network>,
    /// Networks always refused (wins over everything).
    pub deny: Vec<Network>,
    /// Refuse loopback, private and shared ranges too: on when the API authenticates users.
    pub strict: bool,
}

/// What an action URL is, once its scheme and host have passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckedAction {
    /// `log://…`: written to the log, no network.
    Log,
    /// `http(s)://…`: to be POSTed; the host still resolves through the policy.
    Http(Url),
}

impl ActionPolicy {
    /// Checks one address against the network rules.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refusal> {
        let address = canonical(address);
        let refused = |rule: String, hint: &'static str| Refusal::Address {
            host: host.to_owned(),
            address,
            rule,
            hint,
        };
        let mut judged = vec![address];
        if let IpAddr::V6(v6) = address {
            if NAT64.contains(address) {
                let [.., a, b, c, d] = v6.octets();
                judged.push(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
            }
        }
        for ip in &judged {
            if let Some(network) = self.deny.iter().find(|n| n.contains(*ip)) {
                return Err(refused(format!("deny_networks {network}"), ""));
            }
        }
        if judged
            .iter()
            .all(|ip| self.allow.iter().any(|n| n.contains(*ip)))
        {
            return Ok(());
        }
        let strict: &[Rule] = if self.strict { DENIED_WHEN_STRICT } else { &[] };
        for ip in &judged {
            for rule in ALWAYS_DENIED.iter().chain(strict) {
                if rule.networks.iter().any(|n| n.contains(*ip)) {
                    return Err(refused(rule.name.to_owned(), ALLOW_HINT));
                }
            }
        }
        Ok(())
    }

    /// Checks what can be checked without the network: length, scheme, and the host when it is
    /// an address. Run before every request; names are checked as they resolve.
    pub fn check_url(&self, action: &str) -> Result<CheckedAction, Refusal> {
        if action.len() > MAX_ACTION_LEN {
            return Err(Refusal::TooLong);
        }
        let url = Url::parse(action).map_err(|e| Refusal::Malformed(format!("{e}")))?;
        match url.scheme() {
            "log" => Ok(CheckedAction::Log),
            "http" | "https" => {
                let host = url
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| Refusal::Malformed("no host".to_owned()))?;
                if let Some(address) = literal_address(host) {
                    self.check_address(host, address)?;
                }
                Ok(CheckedAction::Http(url))
            }
            other => Err(Refusal::Scheme(other.to_owned())),
        }
    }

    /// Checks an action fully: [`check_url`](Self::check_url), then every address its host
    /// resolves to. What the API runs when an alarm is created or changed.
    pub async fn check_action(&self, action: &str) -> Result<(), Refusal> {
        if let CheckedAction::Http(url) = self.check_url(action)? {
            match url.host_str() {
                Some(host) if literal_address(host).is_none() => {
                    self.resolve(host).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Resolves `host` and checks every address; the addresses (port 0) when all pass. The
    /// notifier's HTTP client connects only to what this returns.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, Refusal> {
        let unresolvable = |reason: String| Refusal::Unresolvable {
            host: host.to_owned(),
            reason,
        };
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0)))
            .await
            .map_err(|_| unresolvable(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
            .map_err(|e| unresolvable(e.to_string()))?;
        let addresses: Vec<SocketAddr> = found.collect();
        if addresses.is_empty() {
            return Err(unresolvable("no address".to_owned()));
        }
        for address in &addresses {
            self.check_address(host, address.ip())?;
        }
        Ok(addresses)
    }
}

/// The address a URL's host names literally (`10.0.0.1`, `[::1]`); `None` for a name. The
/// URL parser has already turned other spellings (`2852039166`, `0x7f.1`) into dotted form.
fn literal_address(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; any other address as it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The notifier's resolver: names resolve only to addresses the policy allows.
#[derive(Debug, Clone)]
pub(crate) struct CheckingResolver {
    pub(crate) policy: std::sync::Arc<ActionPolicy>,
}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = policy.resolve(&host).await.map_err(
                |refusal| -> Box<dyn std::error::Error + Send + Sync> { Box::new(refusal) },
            )?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The policy's refusal behind a failed request, if that is why it failed.
pub(crate) fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn rule(policy: &ActionPolicy, address: &str) -> Option<String> {
        match policy.check_address("h", ip(address)) {
            Ok(()) => None,
            Err(Refusal::Address { rule, .. }) => Some(rule),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: Network = "10.1.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert_eq!(net.to_string(), "10.1.0.0/16");
        let host: Network = "::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        let all: Network = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "fe80::/129"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_and_link_local_are_refused_by_default() {
        let policy = ActionPolicy::default();
        assert_eq!(
            rule(&policy, "169.254.169.254").as_deref(),
            Some("metadata")
        );
        assert_eq!(
            rule(&policy, "::ffff:169.254.169.254").as_deref(),
            Some("metadata")
        );
        assert_eq!(
            rule(&policy, "64:ff9b::a9fe:a9fe").as_deref(),
            Some("metadata")
        );
        assert_eq!(rule(&policy, "169.254.1.1").as_deref(), Some("link-local"));
        assert_eq!(rule(&policy, "fe80::1").as_deref(), Some("link-local"));
        assert_eq!(rule(&policy, "0.0.0.0").as_deref(), Some("unspecified"));
        assert_eq!(
            rule(&policy, "127.0.0.1"),
            None,
            "loopback only when strict"
        );
        assert_eq!(rule(&policy, "10.0.0.1"), None);
        assert_eq!(rule(&policy, "93.184.216.34"), None);
    }

    #[test]
    fn strict_policies_refuse_loopback_and_private_unless_allowed() {
        let mut policy = ActionPolicy {
            strict: true,
            ..ActionPolicy::default()
        };
        assert_eq!(rule(&policy, "127.0.0.1").as_deref(), Some("loopback"));
        assert_eq!(rule(&policy, "::1").as_deref(), Some("loopback"));
        assert_eq!(rule(&policy, "192.168.1.9").as_deref(), Some("private"));
        assert_eq!(rule(&policy, "fd12::1").as_deref(), Some("private"));
        assert_eq!(rule(&policy, "100.64.0.1").as_deref(), Some("shared"));
        policy.allow = vec!["127.0.0.1/32".parse().unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(rule(&policy, "127.0.0.1"), None);
        assert_eq!(rule(&policy, "127.0.0.2").as_deref(), Some("loopback"));
        policy.deny = vec!["127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(
            rule(&policy, "127.0.0.1").as_deref(),
            Some("deny_networks 127.0.0.0/8"),
            "the deny list wins"
        );
    }

    #[test]
    fn only_log_and_http_schemes_pass() {
        let policy = ActionPolicy::default();
        assert_eq!(policy.check_url("log://"), Ok(CheckedAction::Log));
        assert!(matches!(
            policy.check_url("https://93.184.216.34/x"),
            Ok(CheckedAction::Http(_))
        ));
        for (action, expected) in [
            ("file:///etc/passwd", "scheme \"file\""),
            ("gopher://h/", "scheme \"gopher\""),
            ("http://169.254.169.254/latest", "rule \"metadata\""),
            ("http://[::ffff:a9fe:a9fe]/", "rule \"metadata\""),
            ("http://2852039166/", "rule \"metadata\""),
        ] {
            match policy.check_url(action) {
                Ok(checked) => panic!("{action} passed as {checked:?}"),
                Err(refusal) => {
                    assert!(
                        refusal.to_string().contains(expected),
                        "{action}: {refusal}"
                    );
                }
            }
        }
        assert_eq!(
            policy.check_url(&format!("https://h/{}", "x".repeat(MAX_ACTION_LEN))),
            Err(Refusal::TooLong)
        );
    }

    #[tokio::test]
    async fn names_are_judged_by_every_address_they_resolve_to() {
        let strict = ActionPolicy {
            strict: true,
            ..ActionPolicy::default()
        };
        let refusal = strict
            .check_action("http://localhost:9/x")
            .await
            .unwrap_err();
        assert!(
            refusal.to_string().contains("rule \"loopback\""),
            "{refusal}"
        );
        assert!(ActionPolicy::default()
            .check_action("http://localhost:9/x")
            .await
            .is_ok());
    }
}
