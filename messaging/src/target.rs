//! Where a message goes: [`Target`] (exchange, topic, server, fanout, namespace, version) and
//! [`Version`] with oslo.messaging's compatibility rule.
//!
//! A client's target names the destination; a server's target names what it listens on. This
//! module owns the data and its rules; how targets map to queues belongs to the transports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An RPC API version, `major.minor` with an optional `.revision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible API generation.
    pub major: u32,
    /// Backwards-compatible additions.
    pub minor: u32,
    /// Optional third part; `None` prints as `major.minor`.
    pub revision: Option<u32>,
}

impl Version {
    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self {
            major,
            minor,
            revision: None,
        }
    }

    /// What a server assumes when a request carries no version.
    pub const DEFAULT: Version = Version::new(1, 0);

    /// oslo's `version_is_compatible(self, requested)`: an endpoint at `self` can serve a
    /// request for `requested` when the majors are equal, the requested minor is not newer, and
    /// at equal minors the requested revision is not newer.
    pub fn can_serve(&self, requested: &Version) -> bool {
        if self.major != requested.major || requested.minor > self.minor {
            return false;
        }
        !(requested.minor == self.minor
            && requested.revision.unwrap_or(0) > self.revision.unwrap_or(0))
    }
}

impl Default for Version {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.revision {
            Some(rev) => write!(f, "{}.{}.{}", self.major, self.minor, rev),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

/// A version string that is not `X.Y` or `X.Y.Z` with decimal parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RPC version {0:?}: expected MAJOR.MINOR or MAJOR.MINOR.REVISION")]
pub struct InvalidVersion(pub String);

impl FromStr for Version {
    type Err = InvalidVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidVersion(s.to_owned());
        let mut parts = s.split('.');
        let mut next = |required: bool| -> Result<Option<u32>, InvalidVersion> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map(Some).map_err(|_| invalid())
                }
                None if !required => Ok(None),
                _ => Err(invalid()),
            }
        };
        let major = next(true)?.ok_or_else(invalid)?;
        let minor = next(true)?.ok_or_else(invalid)?;
        let revision = next(false)?;
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self {
            major,
            minor,
            revision,
        })
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The destination of a message, or what a server listens on.
///
/// Only `topic` is required for sending; a server also needs `server`. `exchange: None` means the
/// transport's control exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// Exchange; `None` means the transport's control exchange (`openstack` by default).
    pub exchange: Option<String>,
    /// Topic, e.g. `compute` or `metering`.
    pub topic: String,
    /// A specific server listening on the topic.
    pub server: Option<String>,
    /// Deliver to every server on the topic (casts only).
    pub fanout: bool,
    /// Namespace of the endpoint's methods.
    pub namespace: Option<String>,
    /// API version requested (client) or offered (endpoint).
    pub version: Option<Version>,
}

impl Target {
    /// A target on `topic` with everything else default.
    pub fn topic(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }

    /// Sets the exchange.
    #[must_use]
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Sets the server.
    #[must_use]
    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Sets the fanout flag.
    #[must_use]
    pub fn with_fanout(mut self, fanout: bool) -> Self {
        self.fanout = fanout;
        self
    }

    /// Sets the namespace.
    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets the version.
    #[must_use]
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// The exchange, falling back to `control_exchange`.
    pub fn exchange_or<'a>(&'a self, control_exchange: &'a str) -> &'a str {
        self.exchange.as_deref().unwrap_or(control_exchange)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(exchange) = &self.exchange {
            write!(f, "{exchange}/")?;
        }
        f.write_str(&self.topic)?;
        if let Some(server) = &self.server {
            write!(f, ".{server}")?;
        }
        if self.fanout {
            f.write_str(" (fanout)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_two_and_three_part_versions() {
        assert_eq!(v("1.3"), Version::new(1, 3));
        assert_eq!(v("2.0.5").revision, Some(5));
        assert_eq!(v("2.0.5").to_string(), "2.0.5");
        for bad in ["", "1", "1.", "a.b", "1.2.3.4", "-1.0", "1.x", " 1.0"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn compatibility_follows_oslo() {
        let endpoint = v("1.3");
        assert!(endpoint.can_serve(&v("1.3")), "equal");
        assert!(endpoint.can_serve(&v("1.0")), "older minor");
        assert!(!endpoint.can_serve(&v("1.4")), "newer minor");
        assert!(!endpoint.can_serve(&v("2.0")), "other major");
        assert!(!endpoint.can_serve(&v("0.3")), "older major");
        assert!(
            !endpoint.can_serve(&v("1.3.1")),
            "newer revision at equal minor"
        );
        assert!(v("1.3.2").can_serve(&v("1.3.1")), "older revision");
        assert!(
            endpoint.can_serve(&v("1.2.9")),
            "revision ignored at older minor"
        );
    }
}
