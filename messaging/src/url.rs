//! Transport URLs: [`TransportUrl`], its hosts ([`TransportHost`]), its [`Scheme`] and the
//! [`UrlError`] a malformed URL gives.
//!
//! This module owns the text form of "where the bus is", parsed the way oslo.messaging 18.3.1's
//! `TransportURL.parse` (oslo_messaging/transport.py) and its rabbit driver read it:
//!
//! ```text
//! SCHEME://[USER[:PASS]@]HOST[:PORT][,[USER[:PASS]@]HOST[:PORT]...][/VHOST][?KEY=VALUE[&...]]
//! memory://[NAME][/VHOST][?KEY=VALUE[&...]]
//! ```
//!
//! - Schemes `rabbit`, `amqp` and `amqps` (TLS) name the AMQP driver; `memory` names the
//!   in-process driver and its broker. Schemes are case-insensitive.
//! - The host list is split on `,`; each host may carry its own credentials. Credentials are
//!   split from the host at the *last* `@`, and user from password at the *first* `:`, so a raw
//!   `@` or `:` in a password still works; user, password, vhost and query text are
//!   percent-decoded, host names are not. IPv6 hosts are written in brackets, `[::1]:5672`.
//! - No path gives no virtual host, `/` gives the empty one, `/%2F` gives `/`.
//! - Query options follow Python's `parse_qs`: blank values are dropped, `+` is a space, and a
//!   key given several times keeps its values joined with `,`.
//! - Anything after `#` is ignored, as `urlparse` does; surrounding whitespace is trimmed.
//!
//! Where oslo is lenient this parser is strict and says why: an empty host list or an empty
//! host in a list, a bad port, a bad IPv6 literal, or invalid percent-encoding is an error
//! rather than a fallback. How hosts are dialled, and what options mean, belongs to the drivers.
//!
//! Passwords never appear in `Display` or `Debug` output, nor in error messages; drivers get
//! the real URL from [`TransportUrl::to_url_string_unredacted`].

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Port of `rabbit://` and `amqp://` hosts that name none.
pub const DEFAULT_AMQP_PORT: u16 = 5672;
/// Port of `amqps://` hosts that name none.
pub const DEFAULT_AMQPS_PORT: u16 = 5671;
/// User name the AMQP driver uses for a host without one (RabbitMQ's default account).
pub const DEFAULT_USERNAME: &str = "guest";
/// Password the AMQP driver uses for a host without one (RabbitMQ's default account).
pub const DEFAULT_PASSWORD: &str = "guest";

/// What redacted output shows in place of a secret.
const REDACTED: &str = "***";

/// Everything but RFC 3986 "unreserved" characters is encoded, as Python's `quote(s, '')`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Which driver a transport URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `rabbit://`: AMQP 0-9-1 over plain TCP (TLS only if the `ssl` option asks for it).
    Rabbit,
    /// `amqp://`: AMQP over plain TCP.
    Amqp,
    /// `amqps://`: AMQP over TLS.
    Amqps,
    /// `memory://NAME`: the in-process driver; NAME picks the broker.
    Memory,
}

impl Scheme {
    /// The scheme as written in a URL, lower case, without `://`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Rabbit => "rabbit",
            Scheme::Amqp => "amqp",
            Scheme::Amqps => "amqps",
            Scheme::Memory => "memory",
        }
    }

    /// Whether the scheme itself demands TLS (only `amqps`).
    pub const fn is_tls(self) -> bool {
        matches!(self, Scheme::Amqps)
    }

    /// Port of a host that names none: 5672, 5671 for `amqps`, `None` for `memory`.
    pub const fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Rabbit | Scheme::Amqp => Some(DEFAULT_AMQP_PORT),
            Scheme::Amqps => Some(DEFAULT_AMQPS_PORT),
            Scheme::Memory => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheme {
    type Err = UrlError;

    /// Parses a scheme name (case-insensitive, without `://`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rabbit" => Ok(Scheme::Rabbit),
            "amqp" => Ok(Scheme::Amqp),
            "amqps" => Ok(Scheme::Amqps),
            "memory" => Ok(Scheme::Memory),
            other => Err(UrlError::UnknownScheme(other.to_owned())),
        }
    }
}

/// Why a transport URL (or a part given to a constructor) was rejected.
///
/// Messages never contain a password: percent-encoding errors name the part, not its text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The text does not start with `SCHEME://`.
    #[error(
        "transport URL does not start with SCHEME:// \
         (expected e.g. rabbit://user:pass@host:5672/vhost or memory://name)"
    )]
    MissingScheme,
    /// The scheme is well formed but no driver has it.
    #[error("unknown transport URL scheme {0:?}: expected rabbit, amqp, amqps or memory")]
    UnknownScheme(String),
    /// An AMQP URL with nothing between `://` and the path.
    #[error("{0}:// transport URL has no hosts: expected at least one HOST[:PORT]")]
    NoHosts(Scheme),
    /// Host number `.0` (1-based) of the list is empty: `h1,,h2`, a trailing comma, or
    /// credentials without a host (`user:pass@`, `user:pass@:5672`).
    #[error(
        "host #{0} of the transport URL is empty \
         (hosts are separated by single commas, e.g. h1:5672,h2:5672)"
    )]
    EmptyHost(usize),
    /// The port of `host` is not a number in 1-65535.
    #[error("invalid port for host {host:?}: {reason}")]
    BadPort {
        /// The host whose port is wrong.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bracketed host is not `[IPV6]` / `[IPV6]:PORT`, or an IPv6 address lacks brackets.
    #[error("invalid IPv6 host {host:?}: {reason}")]
    BadIpv6 {
        /// The host text as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A host name that cannot be written in a URL (whitespace, `/`, `@`, `,`, ...).
    #[error("invalid host {host:?}: {reason}")]
    InvalidHost {
        /// The host text as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `%` not followed by two hex digits in the named part (e.g. "password of host #1").
    #[error("invalid percent-encoding in the {0}: '%' must be followed by two hex digits")]
    InvalidPercentEncoding(String),
    /// The named part is not UTF-8 once percent-decoded.
    #[error("the {0} is not valid UTF-8 after percent-decoding")]
    InvalidUtf8(String),
    /// A raw control character (tab, newline, ...) at this byte offset of the trimmed URL.
    #[error("transport URL contains a control character at byte {0}; percent-encode it")]
    ControlCharacter(usize),
    /// The host list is malformed and an `@` follows it: most likely a user name or password
    /// holds a raw `/`, `?` or `#`, which ends the host list early.
    #[error(
        "malformed host list in transport URL, and an '@' follows it: \
         percent-encode '/', '?' and '#' in user names and passwords (%2F, %3F, %23)"
    )]
    MisplacedCredentials,
    /// A `memory://` URL with credentials, a port or several names.
    #[error("invalid memory:// URL: {0}")]
    InvalidMemoryUrl(&'static str),
    /// Option `key` is present but its value does not parse as the requested type.
    #[error("invalid value {value:?} for transport URL option {key:?}: expected {expected}")]
    BadOption {
        /// The option name.
        key: String,
        /// The value as given (`***` when the key looks secret).
        value: String,
        /// What was expected instead.
        expected: String,
    },
}

/// One broker address of an AMQP transport URL, with its own optional credentials.
///
/// `Display` and `Debug` show `user:***@host:port`; the password is only reachable through
/// [`TransportHost::password`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TransportHost {
    /// Host name or IPv6 address, without brackets.
    host: String,
    /// Port, with the scheme's default filled in.
    port: u16,
    /// Percent-decoded user name, if the URL gave credentials.
    username: Option<String>,
    /// Percent-decoded password, if the URL gave one (implies a user name).
    password: Option<String>,
}

impl TransportHost {
    /// A host without credentials. `host` is a name, an IPv4 address, or an IPv6 address
    /// with or without brackets (`::1`, `[::1]`, `fe80::1%25eth0`).
    ///
    /// Fails on an empty host, one with whitespace or any of `/ ? # @ , [ ]`, a malformed
    /// IPv6 address, or port 0.
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self, UrlError> {
        let host = host.into();
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            if !is_valid_ipv6(inner) {
                return Err(UrlError::BadIpv6 {
                    host,
                    reason: "not a valid IPv6 address",
                });
            }
            inner.to_owned()
        } else if host.contains(':') {
            if !is_valid_ipv6(&host) {
                return Err(UrlError::BadIpv6 {
                    host,
                    reason: "not a valid IPv6 address (host names cannot contain ':')",
                });
            }
            host
        } else {
            if host.is_empty() {
                return Err(UrlError::InvalidHost {
                    host,
                    reason: "host is empty",
                });
            }
            if host.contains(['/', '?', '#', '@', ',', '[', ']']) {
                return Err(UrlError::InvalidHost {
                    host,
                    reason: "host names cannot contain '/', '?', '#', '@', ',', '[' or ']'",
                });
            }
            check_plain_host(&host)?;
            host
        };
        if port == 0 {
            return Err(UrlError::BadPort {
                host,
                reason: "port 0 is out of range 1-65535".to_owned(),
            });
        }
        Ok(Self {
            host,
            port,
            username: None,
            password: None,
        })
    }

    /// This host with a user name and no password (`user@host`).
    #[must_use]
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = None;
        self
    }

    /// This host with a user name and password (`user:pass@host`).
    #[must_use]
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Host name or address, IPv6 without brackets: ready for `(host, port)` socket APIs.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port; the scheme's default when the URL named none.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the host is an IPv6 address (written in brackets in URLs).
    pub fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }

    /// Percent-decoded user name; `None` when the URL gave no credentials for this host.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Percent-decoded password; `None` when the URL gave none for this host.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The user name the AMQP driver logs in with: this host's, or `guest` when it is
    /// missing or empty (the rabbit driver's `host.username or default`).
    pub fn username_or_default(&self) -> &str {
        self.username
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(DEFAULT_USERNAME)
    }

    /// The password the AMQP driver logs in with: this host's, or `guest` when it is
    /// missing or empty (the rabbit driver's `host.password or default`).
    pub fn password_or_default(&self) -> &str {
        self.password
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PASSWORD)
    }

    fn write_to(&self, out: &mut dyn fmt::Write, redact: bool) -> fmt::Result {
        if let Some(user) = &self.username {
            write!(out, "{}", utf8_percent_encode(user, COMPONENT))?;
            if let Some(password) = &self.password {
                if redact {
                    write!(out, ":{REDACTED}")?;
                } else {
                    write!(out, ":{}", utf8_percent_encode(password, COMPONENT))?;
                }
            }
            out.write_char('@')?;
        }
        if self.is_ipv6() {
            write!(out, "[{}]:{}", self.host, self.port)
        } else {
            write!(out, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for TransportHost {
    /// `user:***@host:port`; the password is always redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f, true)
    }
}

impl fmt::Debug for TransportHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TransportHost")
            .field(&format_args!("{self}"))
            .finish()
    }
}

/// A parsed transport URL: scheme, hosts (or memory broker name), virtual host and options.
///
/// Build one with [`TransportUrl::parse`] / [`str::parse`], or with [`TransportUrl::new`] /
/// [`TransportUrl::memory`] and the `with_*` methods. `Display` and `Debug` redact passwords
/// (and options whose name contains `pass`, `secret` or `token`); use
/// [`TransportUrl::to_url_string_unredacted`] to hand the real URL to a driver.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TransportUrl {
    scheme: Scheme,
    /// Non-empty for AMQP schemes, empty for `memory`.
    hosts: Vec<TransportHost>,
    /// `Some` exactly for `memory`; may be empty (the default broker).
    memory_name: Option<String>,
    virtual_host: Option<String>,
    /// Unique keys in first-seen order; values never empty.
    options: Vec<(String, String)>,
}

impl TransportUrl {
    /// Parses a transport URL (see the module docs for the grammar and oslo's rules).
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let text = input.trim_matches(|c: char| c.is_ascii_whitespace());
        if let Some(at) = text.find(char::is_control) {
            return Err(UrlError::ControlCharacter(at));
        }
        let (scheme_text, rest) = split_scheme(text)?;
        let scheme: Scheme = scheme_text.parse()?;

        // urlsplit: the netloc ends at the first '/', '?' or '#'; then the fragment is cut
        // off, then the query.
        let netloc_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (netloc, after) = rest.split_at(netloc_end);
        let without_fragment = after.split_once('#').map_or(after, |(before, _)| before);
        let (path, query) = match without_fragment.split_once('?') {
            Some((path, query)) => (path, query),
            None => (without_fragment, ""),
        };

        let (hosts, memory_name) = if scheme == Scheme::Memory {
            (Vec::new(), Some(parse_memory_name(netloc)?))
        } else {
            // A raw '/', '?' or '#' in a password ends the netloc early and leaves part of
            // the secret in the host list; say so without echoing any of it.
            let hosts = parse_hosts(scheme, netloc).map_err(|err| {
                if after.contains('@') {
                    UrlError::MisplacedCredentials
                } else {
                    err
                }
            })?;
            (hosts, None)
        };

        let virtual_host = match path.strip_prefix('/') {
            Some(vhost) => Some(decode(vhost, false, || "virtual host".to_owned())?),
            None => None,
        };
        let options = parse_query(query)?;

        Ok(Self {
            scheme,
            hosts,
            memory_name,
            virtual_host,
            options,
        })
    }

    /// An AMQP URL (`rabbit`, `amqp` or `amqps`) over `hosts`, with no virtual host and no
    /// options. Fails on an empty host list or the `memory` scheme (use
    /// [`TransportUrl::memory`]).
    pub fn new(scheme: Scheme, hosts: Vec<TransportHost>) -> Result<Self, UrlError> {
        if scheme == Scheme::Memory {
            return Err(UrlError::InvalidMemoryUrl(
                "a memory:// URL has a broker name, not hosts (use TransportUrl::memory)",
            ));
        }
        if hosts.is_empty() {
            return Err(UrlError::NoHosts(scheme));
        }
        Ok(Self {
            scheme,
            hosts,
            memory_name: None,
            virtual_host: None,
            options: Vec::new(),
        })
    }

    /// `memory://NAME`: the in-process broker `name` (empty for the default broker).
    pub fn memory(name: impl Into<String>) -> Self {
        Self {
            scheme: Scheme::Memory,
            hosts: Vec::new(),
            memory_name: Some(name.into()),
            virtual_host: None,
            options: Vec::new(),
        }
    }

    /// This URL with virtual host `vhost` (`""` is written `/`, `"/"` is written `/%2F`).
    #[must_use]
    pub fn with_virtual_host(mut self, vhost: impl Into<String>) -> Self {
        self.virtual_host = Some(vhost.into());
        self
    }

    /// This URL with option `key` set to `value`, replacing an earlier value. An empty
    /// `value` removes the option, since a parsed URL drops blank values as oslo does.
    #[must_use]
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        let existing = self.options.iter().position(|(k, _)| *k == key);
        match (existing, value.is_empty()) {
            (Some(at), true) => {
                self.options.remove(at);
            }
            (Some(at), false) => {
                if let Some(slot) = self.options.get_mut(at) {
                    slot.1 = value;
                }
            }
            (None, true) => {}
            (None, false) => self.options.push((key, value)),
        }
        self
    }

    /// Which driver the URL selects.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Broker addresses in the order written; never empty for AMQP schemes, empty for
    /// `memory`.
    pub fn hosts(&self) -> &[TransportHost] {
        &self.hosts
    }

    /// For `memory://NAME`, the percent-decoded NAME (`""` means the default broker);
    /// `None` for other schemes.
    pub fn memory_name(&self) -> Option<&str> {
        self.memory_name.as_deref()
    }

    /// The percent-decoded virtual host as written: `None` without a path, `Some("")` for
    /// `/`, `Some("/")` for `/%2F`, `Some("foo")` for `/foo`.
    pub fn virtual_host(&self) -> Option<&str> {
        self.virtual_host.as_deref()
    }

    /// The virtual host to open: `/` (the broker default) when none or empty was given.
    pub fn effective_vhost(&self) -> &str {
        match self.virtual_host.as_deref() {
            None | Some("") => "/",
            Some(vhost) => vhost,
        }
    }

    /// Query options as decoded `(key, value)` pairs in first-seen order; a key given
    /// several times has its values joined with `,`.
    pub fn options(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The decoded value of query option `key`, if present.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Query option `key` parsed as `T`: `Ok(None)` when absent, [`UrlError::BadOption`]
    /// naming the key and value when it does not parse.
    pub fn option_parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>, UrlError> {
        let Some(value) = self.option(key) else {
            return Ok(None);
        };
        value
            .parse()
            .map(Some)
            .map_err(|_| bad_option(key, value, std::any::type_name::<T>()))
    }

    /// Query option `key` as an oslo boolean (`1/t/true/on/y/yes` or `0/f/false/off/n/no`,
    /// case-insensitive, as `strutils.bool_from_string`), so `?ssl=1` reads as `true`.
    pub fn option_bool(&self, key: &str) -> Result<Option<bool>, UrlError> {
        let Some(value) = self.option(key) else {
            return Ok(None);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Ok(Some(true)),
            "0" | "f" | "false" | "off" | "n" | "no" => Ok(Some(false)),
            _ => Err(bad_option(
                key,
                value,
                "a boolean (1/0, true/false, yes/no, on/off)",
            )),
        }
    }

    /// The URL with real passwords (percent-encoded), for drivers; it parses back to an
    /// equal `TransportUrl`. Never log this; log the `Display` form instead.
    pub fn to_url_string_unredacted(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out, false);
        out
    }

    fn write_to(&self, out: &mut dyn fmt::Write, redact: bool) -> fmt::Result {
        write!(out, "{}://", self.scheme)?;
        if let Some(name) = &self.memory_name {
            write!(out, "{}", utf8_percent_encode(name, COMPONENT))?;
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            host.write_to(out, redact)?;
        }
        if let Some(vhost) = &self.virtual_host {
            write!(out, "/{}", utf8_percent_encode(vhost, COMPONENT))?;
        }
        for (i, (key, value)) in self.options.iter().enumerate() {
            out.write_char(if i == 0 { '?' } else { '&' })?;
            write!(out, "{}=", utf8_percent_encode(key, COMPONENT))?;
            if redact && is_secret_key(key) {
                out.write_str(REDACTED)?;
            } else {
                write!(out, "{}", utf8_percent_encode(value, COMPONENT))?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for TransportUrl {
    /// The URL with passwords (and secret-looking options) shown as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f, true)
    }
}

impl fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TransportUrl")
            .field(&format_args!("{self}"))
            .finish()
    }
}

impl FromStr for TransportUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits `scheme://rest`; the scheme must be `ALPHA *(ALPHA / DIGIT / "+" / "-" / ".")`.
fn split_scheme(text: &str) -> Result<(&str, &str), UrlError> {
    let (name, rest) = text.split_once(':').ok_or(UrlError::MissingScheme)?;
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    match rest.strip_prefix("//") {
        Some(rest) if well_formed => Ok((name, rest)),
        _ => Err(UrlError::MissingScheme),
    }
}

/// The `memory://` netloc: one percent-encoded name, no credentials, port or list.
fn parse_memory_name(netloc: &str) -> Result<String, UrlError> {
    if netloc.contains('@') {
        return Err(UrlError::InvalidMemoryUrl(
            "a memory:// URL takes a broker name, not credentials",
        ));
    }
    if netloc.contains(',') {
        return Err(UrlError::InvalidMemoryUrl(
            "a memory:// URL takes one broker name, not a host list",
        ));
    }
    if netloc.contains(':') {
        return Err(UrlError::InvalidMemoryUrl(
            "a memory:// URL takes a broker name, not a port",
        ));
    }
    decode(netloc, false, || "memory broker name".to_owned())
}

/// The AMQP netloc: `,`-separated `[user[:pass]@]host[:port]` items.
fn parse_hosts(scheme: Scheme, netloc: &str) -> Result<Vec<TransportHost>, UrlError> {
    if netloc.is_empty() {
        return Err(UrlError::NoHosts(scheme));
    }
    let default_port = scheme.default_port().unwrap_or(DEFAULT_AMQP_PORT);
    netloc
        .split(',')
        .enumerate()
        .map(|(i, item)| parse_host(item, i + 1, default_port))
        .collect()
}

/// One host item; `position` is 1-based, for messages.
fn parse_host(item: &str, position: usize, default_port: u16) -> Result<TransportHost, UrlError> {
    if item.is_empty() {
        return Err(UrlError::EmptyHost(position));
    }
    // oslo: credentials end at the last '@'; user and password split at the first ':'.
    let (credentials, host_port) = match item.rsplit_once('@') {
        Some((credentials, host_port)) => (Some(credentials), host_port),
        None => (None, item),
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(credentials) => {
            let (user, password) = match credentials.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (credentials, None),
            };
            let user = decode(user, false, || format!("user name of host #{position}"))?;
            let password = password
                .map(|p| decode(p, false, || format!("password of host #{position}")))
                .transpose()?;
            (Some(user), password)
        }
    };
    let (host, port_text) = split_host_port(host_port, position)?;
    let port = match port_text {
        None | Some("") => default_port,
        Some(text) => parse_port(host, text)?,
    };
    Ok(TransportHost {
        host: host.to_owned(),
        port,
        username,
        password,
    })
}

/// `host[:port]` or `[ipv6][:port]` into the host (without brackets) and the port text.
fn split_host_port(text: &str, position: usize) -> Result<(&str, Option<&str>), UrlError> {
    if text.is_empty() {
        return Err(UrlError::EmptyHost(position));
    }
    let bad_ipv6 = |reason| UrlError::BadIpv6 {
        host: text.to_owned(),
        reason,
    };
    if let Some(inner) = text.strip_prefix('[') {
        let (address, tail) = inner
            .split_once(']')
            .ok_or_else(|| bad_ipv6("missing closing ']'"))?;
        if !is_valid_ipv6(address) {
            return Err(bad_ipv6("not a valid IPv6 address"));
        }
        let port = match tail {
            "" => None,
            _ => Some(
                tail.strip_prefix(':')
                    .ok_or_else(|| bad_ipv6("expected ':PORT' or nothing after ']'"))?,
            ),
        };
        return Ok((address, port));
    }
    if text.contains(['[', ']']) {
        return Err(bad_ipv6(
            "IPv6 addresses must be written as [ADDRESS] or [ADDRESS]:PORT",
        ));
    }
    if text.matches(':').count() > 1 {
        return Err(bad_ipv6(
            "IPv6 addresses must be written in brackets, e.g. [::1]:5672",
        ));
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    if host.is_empty() {
        return Err(UrlError::EmptyHost(position));
    }
    check_plain_host(host)?;
    Ok((host, port))
}

fn check_plain_host(host: &str) -> Result<(), UrlError> {
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::InvalidHost {
            host: host.to_owned(),
            reason: "host names cannot contain whitespace or control characters",
        });
    }
    Ok(())
}

/// A decimal port in 1-65535. Only all-digit text is echoed in the error, so a password
/// that ended up in the port position (`user:secret` without `@host`) is never shown.
fn parse_port(host: &str, text: &str) -> Result<u16, UrlError> {
    let bad = |reason: String| UrlError::BadPort {
        host: host.to_owned(),
        reason,
    };
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("port must be a decimal number in 1-65535".to_owned()));
    }
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(bad(format!("port {text} is out of range 1-65535"))),
    }
}

/// An IPv6 address, optionally with a zone (`fe80::1%eth0` or `fe80::1%25eth0`).
fn is_valid_ipv6(text: &str) -> bool {
    let (address, zone) = match text.split_once('%') {
        Some((address, zone)) => (address, Some(zone)),
        None => (text, None),
    };
    address.parse::<Ipv6Addr>().is_ok()
        && zone.is_none_or(|zone| {
            !zone.is_empty()
                && zone
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        })
}

/// `parse_qs` semantics: `&`-separated, pieces without `=` or with a blank value dropped,
/// `+` is a space, repeated keys joined with `,`.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut options: Vec<(String, String)> = Vec::new();
    for piece in query.split('&') {
        let Some((raw_key, raw_value)) = piece.split_once('=') else {
            continue;
        };
        if raw_value.is_empty() {
            continue;
        }
        let key = decode(raw_key, true, || "query option name".to_owned())?;
        let value = decode(raw_value, true, || {
            if is_secret_key(&key) {
                "value of a query option".to_owned()
            } else {
                format!("value of query option {key:?}")
            }
        })?;
        match options.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => options.push((key, value)),
        }
    }
    Ok(options)
}

/// Strict percent-decoding: every `%` starts a two-hex-digit escape, and the result is UTF-8.
/// `what` names the part for error messages (never its text).
fn decode(raw: &str, plus_as_space: bool, what: impl Fn() -> String) -> Result<String, UrlError> {
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let escape_ok = bytes.next().is_some_and(|h| h.is_ascii_hexdigit())
                && bytes.next().is_some_and(|h| h.is_ascii_hexdigit());
            if !escape_ok {
                return Err(UrlError::InvalidPercentEncoding(what()));
            }
        }
    }
    let text: Cow<'_, str> = if plus_as_space && raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    percent_decode_str(&text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| UrlError::InvalidUtf8(what()))
}

/// Options whose value redacted output hides.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
}

pub(crate) fn bad_option(key: &str, value: &str, expected: &str) -> UrlError {
    UrlError::BadOption {
        key: key.to_owned(),
        value: if is_secret_key(key) {
            REDACTED.to_owned()
        } else {
            value.to_owned()
        },
        expected: expected.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(
        host: &str,
        port: u16,
        username: Option<&str>,
        password: Option<&str>,
    ) -> TransportHost {
        TransportHost {
            host: host.to_owned(),
            port,
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
        }
    }

    fn amqp(
        scheme: Scheme,
        hosts: Vec<TransportHost>,
        vhost: Option<&str>,
        options: &[(&str, &str)],
    ) -> TransportUrl {
        TransportUrl {
            scheme,
            hosts,
            memory_name: None,
            virtual_host: vhost.map(str::to_owned),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn memory(name: &str, vhost: Option<&str>, options: &[(&str, &str)]) -> TransportUrl {
        TransportUrl {
            scheme: Scheme::Memory,
            hosts: Vec::new(),
            memory_name: Some(name.to_owned()),
            virtual_host: vhost.map(str::to_owned),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn parses_every_form() {
        use Scheme::*;
        let cases: Vec<(&str, TransportUrl)> = vec![
            (
                "rabbit://guest:guest@localhost:5672/",
                amqp(
                    Rabbit,
                    vec![host("localhost", 5672, Some("guest"), Some("guest"))],
                    Some(""),
                    &[],
                ),
            ),
            // Default ports, no credentials, no path.
            (
                "rabbit://localhost",
                amqp(Rabbit, vec![host("localhost", 5672, None, None)], None, &[]),
            ),
            (
                "amqp://broker",
                amqp(Amqp, vec![host("broker", 5672, None, None)], None, &[]),
            ),
            (
                "amqps://broker",
                amqp(Amqps, vec![host("broker", 5671, None, None)], None, &[]),
            ),
            (
                "rabbit://h:",
                amqp(Rabbit, vec![host("h", 5672, None, None)], None, &[]),
            ),
            (
                "amqp://broker:1234/vh",
                amqp(
                    Amqp,
                    vec![host("broker", 1234, None, None)],
                    Some("vh"),
                    &[],
                ),
            ),
            (
                "RABBIT://Host:5672",
                amqp(Rabbit, vec![host("Host", 5672, None, None)], None, &[]),
            ),
            (
                "  rabbit://h/v \n",
                amqp(Rabbit, vec![host("h", 5672, None, None)], Some("v"), &[]),
            ),
            // Multi-host, per-host credentials.
            (
                "rabbit://u1:p1@h1:5672,u2:p2@h2:5673/vhost?opt=v",
                amqp(
                    Rabbit,
                    vec![
                        host("h1", 5672, Some("u1"), Some("p1")),
                        host("h2", 5673, Some("u2"), Some("p2")),
                    ],
                    Some("vhost"),
                    &[("opt", "v")],
                ),
            ),
            (
                "amqps://u1:p1@h1,h2:5673,u3@h3",
                amqp(
                    Amqps,
                    vec![
                        host("h1", 5671, Some("u1"), Some("p1")),
                        host("h2", 5673, None, None),
                        host("h3", 5671, Some("u3"), None),
                    ],
                    None,
                    &[],
                ),
            ),
            // Percent-decoded credentials; raw '@' and ':' in a password per oslo's splits.
            (
                "rabbit://user:p%40ss%3Aw%2Fd@host/",
                amqp(
                    Rabbit,
                    vec![host("host", 5672, Some("user"), Some("p@ss:w/d"))],
                    Some(""),
                    &[],
                ),
            ),
            (
                "rabbit://us%40er:p@ss:w@host",
                amqp(
                    Rabbit,
                    vec![host("host", 5672, Some("us@er"), Some("p@ss:w"))],
                    None,
                    &[],
                ),
            ),
            (
                "rabbit://:p@h",
                amqp(
                    Rabbit,
                    vec![host("h", 5672, Some(""), Some("p"))],
                    None,
                    &[],
                ),
            ),
            (
                "rabbit://u:@h",
                amqp(
                    Rabbit,
                    vec![host("h", 5672, Some("u"), Some(""))],
                    None,
                    &[],
                ),
            ),
            (
                "rabbit://p%C3%A4ss@h",
                amqp(Rabbit, vec![host("h", 5672, Some("päss"), None)], None, &[]),
            ),
            // Virtual hosts.
            (
                "rabbit://h/",
                amqp(Rabbit, vec![host("h", 5672, None, None)], Some(""), &[]),
            ),
            (
                "rabbit://h/%2F",
                amqp(Rabbit, vec![host("h", 5672, None, None)], Some("/"), &[]),
            ),
            (
                "rabbit://h/%2f",
                amqp(Rabbit, vec![host("h", 5672, None, None)], Some("/"), &[]),
            ),
            (
                "rabbit://h/foo",
                amqp(Rabbit, vec![host("h", 5672, None, None)], Some("foo"), &[]),
            ),
            (
                "rabbit://h/a/b%20c",
                amqp(
                    Rabbit,
                    vec![host("h", 5672, None, None)],
                    Some("a/b c"),
                    &[],
                ),
            ),
            (
                "rabbit://h//",
                amqp(Rabbit, vec![host("h", 5672, None, None)], Some("/"), &[]),
            ),
            // IPv6.
            (
                "rabbit://[::1]:5673/",
                amqp(Rabbit, vec![host("::1", 5673, None, None)], Some(""), &[]),
            ),
            (
                "amqps://[::1]",
                amqp(Amqps, vec![host("::1", 5671, None, None)], None, &[]),
            ),
            (
                "rabbit://[2001:db8::1]:",
                amqp(
                    Rabbit,
                    vec![host("2001:db8::1", 5672, None, None)],
                    None,
                    &[],
                ),
            ),
            (
                "rabbit://u:p@[fe80::1%25eth0]:5671,[::ffff:10.0.0.1]",
                amqp(
                    Rabbit,
                    vec![
                        host("fe80::1%25eth0", 5671, Some("u"), Some("p")),
                        host("::ffff:10.0.0.1", 5672, None, None),
                    ],
                    None,
                    &[],
                ),
            ),
            // Query options (parse_qs: blank dropped, '+' is space, repeats joined).
            (
                "rabbit://h?heartbeat=30&ssl=1",
                amqp(
                    Rabbit,
                    vec![host("h", 5672, None, None)],
                    None,
                    &[("heartbeat", "30"), ("ssl", "1")],
                ),
            ),
            (
                "rabbit://h/?a=1&a=2&b=x%20y&c=&d&&e=a+b%2B&k%3D=%26",
                amqp(
                    Rabbit,
                    vec![host("h", 5672, None, None)],
                    Some(""),
                    &[("a", "1,2"), ("b", "x y"), ("e", "a b+"), ("k=", "&")],
                ),
            ),
            // Fragments are ignored, as urlparse does.
            (
                "rabbit://h#frag",
                amqp(Rabbit, vec![host("h", 5672, None, None)], None, &[]),
            ),
            (
                "rabbit://h/v?x=1#f?y=2",
                amqp(
                    Rabbit,
                    vec![host("h", 5672, None, None)],
                    Some("v"),
                    &[("x", "1")],
                ),
            ),
            // Memory URLs.
            ("memory://bus1", memory("bus1", None, &[])),
            ("memory://", memory("", None, &[])),
            ("memory:///", memory("", Some(""), &[])),
            (
                "MEMORY://bus%201/v?x=1",
                memory("bus 1", Some("v"), &[("x", "1")]),
            ),
        ];
        for (input, expected) in cases {
            let parsed = TransportUrl::parse(input)
                .unwrap_or_else(|e| panic!("{input:?} failed to parse: {e}"));
            assert_eq!(parsed, expected, "{input:?}");
            assert_eq!(parsed.hosts, expected.hosts, "{input:?}");
            let reparsed = TransportUrl::parse(&parsed.to_url_string_unredacted()).unwrap();
            assert_eq!(reparsed, parsed, "{input:?} re-serialised");
            assert_eq!(input.parse::<TransportUrl>().unwrap(), parsed);
        }
    }

    #[test]
    fn rejects_malformed_urls() {
        use UrlError as E;
        type Check = fn(&UrlError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| *e == E::MissingScheme),
            ("   ", |e| *e == E::MissingScheme),
            ("localhost:5672", |e| *e == E::MissingScheme),
            ("localhost", |e| *e == E::MissingScheme),
            ("rabbit:/vhost", |e| *e == E::MissingScheme),
            ("rabbit:host", |e| *e == E::MissingScheme),
            ("://h", |e| *e == E::MissingScheme),
            ("1abc://h", |e| *e == E::MissingScheme),
            ("rab bit://h", |e| *e == E::MissingScheme),
            ("http://h", |e| *e == E::UnknownScheme("http".into())),
            ("kombu+rabbit://h", |e| {
                *e == E::UnknownScheme("kombu+rabbit".into())
            }),
            ("Fake://h", |e| *e == E::UnknownScheme("fake".into())),
            ("rabbit://", |e| *e == E::NoHosts(Scheme::Rabbit)),
            ("amqps:///vh", |e| *e == E::NoHosts(Scheme::Amqps)),
            ("amqp://?x=1", |e| *e == E::NoHosts(Scheme::Amqp)),
            ("rabbit://h1,,h2", |e| *e == E::EmptyHost(2)),
            ("rabbit://h1,", |e| *e == E::EmptyHost(2)),
            ("rabbit://,h", |e| *e == E::EmptyHost(1)),
            ("rabbit://,", |e| *e == E::EmptyHost(1)),
            ("rabbit://u:p@", |e| *e == E::EmptyHost(1)),
            ("rabbit://h,u:p@:5672", |e| *e == E::EmptyHost(2)),
            ("rabbit://:5672", |e| *e == E::EmptyHost(1)),
            ("rabbit://h:abc", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://h:0", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://h:65536", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://h:99999999999999999999999", |e| {
                matches!(e, E::BadPort { .. })
            }),
            ("rabbit://h:-1", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://h:+5", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://h: 5", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://[::1]:x", |e| matches!(e, E::BadPort { .. })),
            ("rabbit://[::1", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://[zz]:5672", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://[::1]x", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://[::1]]", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://::1", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://h]:1", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://[127.0.0.1]", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://[]", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://[::1%]", |e| matches!(e, E::BadIpv6 { .. })),
            ("rabbit://h 1", |e| matches!(e, E::InvalidHost { .. })),
            ("rabbit://h1, h2", |e| matches!(e, E::InvalidHost { .. })),
            ("rabbit://u:p%zz@h", |e| {
                *e == E::InvalidPercentEncoding("password of host #1".into())
            }),
            ("rabbit://h,u%2@h2", |e| {
                *e == E::InvalidPercentEncoding("user name of host #2".into())
            }),
            ("rabbit://h/%", |e| {
                *e == E::InvalidPercentEncoding("virtual host".into())
            }),
            ("rabbit://h/%2", |e| {
                *e == E::InvalidPercentEncoding("virtual host".into())
            }),
            ("rabbit://h?a=%G1", |e| {
                matches!(e, E::InvalidPercentEncoding(_))
            }),
            ("rabbit://h?%=1", |e| {
                matches!(e, E::InvalidPercentEncoding(_))
            }),
            ("memory://a%", |e| matches!(e, E::InvalidPercentEncoding(_))),
            ("rabbit://u:%FF@h", |e| {
                *e == E::InvalidUtf8("password of host #1".into())
            }),
            ("rabbit://h/%C3", |e| {
                *e == E::InvalidUtf8("virtual host".into())
            }),
            ("rabbit://h?x=%C3%28", |e| matches!(e, E::InvalidUtf8(_))),
            ("rabbit://h\u{7}x", |e| *e == E::ControlCharacter(10)),
            ("rabbit://h/\tv", |e| matches!(e, E::ControlCharacter(_))),
            ("rabbit://u:p\nw@h", |e| matches!(e, E::ControlCharacter(_))),
            ("rabbit://u:s3cr/et@h/", |e| *e == E::MisplacedCredentials),
            ("rabbit://u:p@h1,u2:s3cr?et@h2", |e| {
                *e == E::MisplacedCredentials
            }),
            ("memory://a@b", |e| matches!(e, E::InvalidMemoryUrl(_))),
            ("memory://a,b", |e| matches!(e, E::InvalidMemoryUrl(_))),
            ("memory://a:1", |e| matches!(e, E::InvalidMemoryUrl(_))),
        ];
        for (input, check) in cases {
            match TransportUrl::parse(input) {
                Ok(url) => panic!("{input:?} parsed as {url:?}, expected an error"),
                Err(e) => {
                    assert!(check(&e), "{input:?} gave unexpected error {e:?}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn errors_never_echo_secrets() {
        for input in [
            "rabbit://u:s3cret%zz@h",
            "rabbit://u:s3cret%FF@h",
            "rabbit://u:s3cret/x@h",
            "rabbit://u:s3cret#x@h",
            "rabbit://user:s3cret",
            "rabbit://h?password=s3cret%zz",
        ] {
            let err = TransportUrl::parse(input).unwrap_err();
            assert!(!err.to_string().contains("s3cret"), "{input:?}: {err}");
            assert!(!format!("{err:?}").contains("s3cret"), "{input:?}: {err:?}");
        }
        let url = TransportUrl::parse("rabbit://h?password=s3cret").unwrap();
        let err = url.option_parsed::<u32>("password").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn display_and_debug_redact_passwords() {
        let url = TransportUrl::parse(
            "rabbit://user:hunter2@host:5672,u2:hunter2%40x@[::1]/vhost?opt=v&sasl_password=hunter2",
        )
        .unwrap();
        let shown = [
            url.to_string(),
            format!("{url:?}"),
            format!("{url:#?}"),
            url.hosts()[0].to_string(),
            format!("{:?}", url.hosts()[1]),
            format!("{:?}", url.hosts()),
        ];
        for text in &shown {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert_eq!(
            url.to_string(),
            "rabbit://user:***@host:5672,u2:***@[::1]:5672/vhost?opt=v&sasl_password=***"
        );
        assert_eq!(url.hosts()[0].to_string(), "user:***@host:5672");
        assert_eq!(
            format!("{url:?}"),
            format!("TransportUrl({url})"),
            "Debug wraps the redacted form"
        );
        let real = url.to_url_string_unredacted();
        assert!(real.contains("user:hunter2@host"));
        assert!(real.contains("u2:hunter2%40x@[::1]"));
        assert_eq!(TransportUrl::parse(&real).unwrap(), url);
        assert_eq!(url.hosts()[1].password(), Some("hunter2@x"));
    }

    #[test]
    fn display_forms() {
        for (input, shown) in [
            ("rabbit://h", "rabbit://h:5672"),
            ("rabbit://h/", "rabbit://h:5672/"),
            ("rabbit://h/%2F", "rabbit://h:5672/%2F"),
            ("amqps://u@h?x=a%20b", "amqps://u@h:5671?x=a%20b"),
            ("rabbit://%3Au:p@h", "rabbit://%3Au:***@h:5672"),
            ("memory://bus1", "memory://bus1"),
            ("memory://", "memory://"),
        ] {
            assert_eq!(TransportUrl::parse(input).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn vhost_and_defaults() {
        let effective = |s: &str| TransportUrl::parse(s).unwrap().effective_vhost().to_owned();
        assert_eq!(effective("rabbit://h"), "/");
        assert_eq!(effective("rabbit://h/"), "/");
        assert_eq!(effective("rabbit://h/%2F"), "/");
        assert_eq!(effective("rabbit://h/foo"), "foo");

        let url = TransportUrl::parse("rabbit://h1,u@h2,u:p@h3,:@h4").unwrap();
        let creds: Vec<_> = url
            .hosts()
            .iter()
            .map(|h| (h.username_or_default(), h.password_or_default()))
            .collect();
        assert_eq!(
            creds,
            [
                ("guest", "guest"),
                ("u", "guest"),
                ("u", "p"),
                ("guest", "guest")
            ]
        );
        assert_eq!(url.hosts()[0].username(), None);
        assert_eq!(url.hosts()[0].password(), None);
        assert!(Scheme::Amqps.is_tls());
        assert!(!Scheme::Rabbit.is_tls() && !Scheme::Amqp.is_tls() && !Scheme::Memory.is_tls());
        assert_eq!(url.memory_name(), None);
        assert_eq!(
            TransportUrl::parse("memory://bus1").unwrap().memory_name(),
            Some("bus1")
        );
        assert!(TransportUrl::parse("[::1]").is_err());
        let v6 = TransportUrl::parse("rabbit://[::1]:1").unwrap();
        assert!(v6.hosts()[0].is_ipv6());
        assert_eq!((v6.hosts()[0].host(), v6.hosts()[0].port()), ("::1", 1));
    }

    #[test]
    fn options() {
        let url = TransportUrl::parse("rabbit://h?heartbeat=30&ssl=1&bad=x&flag=No").unwrap();
        assert_eq!(url.option("heartbeat"), Some("30"));
        assert_eq!(url.option("missing"), None);
        assert_eq!(url.option_parsed::<u32>("heartbeat").unwrap(), Some(30));
        assert_eq!(url.option_parsed::<u32>("missing").unwrap(), None);
        let err = url.option_parsed::<u32>("bad").unwrap_err();
        assert_eq!(
            err,
            UrlError::BadOption {
                key: "bad".into(),
                value: "x".into(),
                expected: "u32".into()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("\"bad\"") && message.contains("\"x\""),
            "{message}"
        );
        assert_eq!(url.option_bool("ssl").unwrap(), Some(true));
        assert_eq!(url.option_bool("flag").unwrap(), Some(false));
        assert_eq!(url.option_bool("missing").unwrap(), None);
        assert!(url.option_bool("bad").is_err());
        let keys: Vec<_> = url.options().map(|(k, _)| k).collect();
        assert_eq!(keys, ["heartbeat", "ssl", "bad", "flag"]);

        let built = url
            .with_option("ssl", "0")
            .with_option("bad", "")
            .with_option("new", "v");
        assert_eq!(
            built.options().collect::<Vec<_>>(),
            [
                ("heartbeat", "30"),
                ("ssl", "0"),
                ("flag", "No"),
                ("new", "v")
            ]
        );
    }

    #[test]
    fn constructors_validate() {
        assert!(TransportHost::new("h", 5672).is_ok());
        assert_eq!(TransportHost::new("[::1]", 1).unwrap().host(), "::1");
        assert_eq!(
            TransportHost::new("fe80::1%eth0", 1).unwrap().host(),
            "fe80::1%eth0"
        );
        for bad in ["", "a b", "a/b", "a@b", "a,b", "a]", "h:1", "[zz]", "a\n"] {
            assert!(TransportHost::new(bad, 5672).is_err(), "{bad:?}");
        }
        assert!(matches!(
            TransportHost::new("h", 0),
            Err(UrlError::BadPort { .. })
        ));
        assert_eq!(
            TransportUrl::new(Scheme::Rabbit, Vec::new()),
            Err(UrlError::NoHosts(Scheme::Rabbit))
        );
        assert!(
            TransportUrl::new(Scheme::Memory, vec![TransportHost::new("h", 1).unwrap()]).is_err()
        );
        let url = TransportUrl::new(
            Scheme::Amqps,
            vec![TransportHost::new("h", 5671)
                .unwrap()
                .with_credentials("u", "p/w")],
        )
        .unwrap()
        .with_virtual_host("/");
        assert_eq!(url.to_url_string_unredacted(), "amqps://u:p%2Fw@h:5671/%2F");
        assert_eq!(TransportUrl::memory("").to_string(), "memory://");
    }

    fn hostname() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9][a-zA-Z0-9.-]{0,20}",
            any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
            any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
        ]
    }

    fn transport_host() -> impl Strategy<Value = TransportHost> {
        (
            hostname(),
            1u16..=u16::MAX,
            proptest::option::of((any::<String>(), proptest::option::of(any::<String>()))),
        )
            .prop_map(|(name, port, credentials)| {
                let host = TransportHost::new(name, port).unwrap();
                match credentials {
                    None => host,
                    Some((user, None)) => host.with_username(user),
                    Some((user, Some(password))) => host.with_credentials(user, password),
                }
            })
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(input in any::<String>()) {
            let _ = TransportUrl::parse(&input);
        }

        #[test]
        fn url_like_strings_never_panic(
            input in "(rabbit|amqps?|memory|RABBIT|x)://[a-z0-9:@,\\[\\]%/?=&#.+ \t-]{0,40}"
        ) {
            if let Ok(url) = TransportUrl::parse(&input) {
                let again = TransportUrl::parse(&url.to_url_string_unredacted());
                prop_assert_eq!(again, Ok(url));
            }
        }

        #[test]
        fn built_urls_round_trip(
            scheme in prop_oneof![Just(Scheme::Rabbit), Just(Scheme::Amqp), Just(Scheme::Amqps)],
            hosts in proptest::collection::vec(transport_host(), 1..4),
            vhost in proptest::option::of(any::<String>()),
            options in proptest::collection::vec((".*", ".*"), 0..3),
        ) {
            let mut url = TransportUrl::new(scheme, hosts).unwrap();
            if let Some(vhost) = vhost {
                url = url.with_virtual_host(vhost);
            }
            for (key, value) in options {
                url = url.with_option(key, value);
            }
            let text = url.to_url_string_unredacted();
            prop_assert_eq!(TransportUrl::parse(&text), Ok(url.clone()));
        }

        #[test]
        fn redacted_forms_hide_passwords(
            hosts in proptest::collection::vec(
                (hostname(), "[a-z]{0,8}", "PW[0-9]{10}Z"), 1..4),
        ) {
            let hosts: Vec<_> = hosts
                .into_iter()
                .map(|(name, user, password)| {
                    TransportHost::new(name, 5672).unwrap().with_credentials(user, password)
                })
                .collect();
            let url = TransportUrl::new(Scheme::Rabbit, hosts).unwrap();
            let shown = format!("{url} {url:?} {:?}", url.hosts());
            for host in url.hosts() {
                let password = host.password().unwrap();
                prop_assert!(!shown.contains(password), "{}", shown);
                prop_assert!(url.to_url_string_unredacted().contains(password));
            }
        }

        #[test]
        fn memory_urls_round_trip(name in any::<String>(), vhost in proptest::option::of(any::<String>())) {
            let mut url = TransportUrl::memory(name.clone());
            if let Some(vhost) = vhost {
                url = url.with_virtual_host(vhost);
            }
            let parsed = TransportUrl::parse(&url.to_url_string_unredacted()).unwrap();
            prop_assert_eq!(parsed.memory_name(), Some(name.as_str()));
            prop_assert_eq!(parsed, url);
        }
    }
}
