//! Tokens validated by a Keystone-compatible identity service, the way keystonemiddleware does:
//! `GET {url}/v3/auth/tokens` with the service's own token in `X-Auth-Token` and the token to
//! check in `X-Subject-Token`; 200 gives the user, project and roles, 404 (or 401) means the
//! token is not valid.
//!
//! Answers are cached by the token's SHA-256: valid ones until the earlier of the cache's TTL
//! and the token's `expires_at`, invalid ones for at most [`NEGATIVE_TTL`], so a client that
//! retries a bad token does not hammer the identity service. The cache holds at most
//! `cache_size` entries; when full, expired entries go first, then those closest to expiry.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::time::Instant;

use super::tokens::{digest, TokenDigest};
use super::Identity;
use crate::secrets;

/// Longest time an invalid token's answer is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Longest wait for the identity service.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to validate tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct KeystoneConfig {
    /// The identity service's base URL (`http://keystone:5000`; `/v3/auth/tokens` is appended).
    pub url: String,
    /// The service's own token, sent in `X-Auth-Token` (Keystone lets only services validate
    /// tokens).
    pub service_token: String,
    /// How long a valid token's identity is cached (default 300 s).
    pub cache_ttl: Duration,
    /// How many tokens are cached at most (default 1000).
    pub cache_size: usize,
}

impl KeystoneConfig {
    /// Validation at `url` with `service_token`, default cache.
    pub fn new(url: impl Into<String>, service_token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            service_token: service_token.into(),
            cache_ttl: Duration::from_secs(300),
            cache_size: 1000,
        }
    }
}

impl fmt::Debug for KeystoneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoneConfig")
            .field("url", &secrets::mask_url(&self.url))
            .field("service_token", &secrets::MASK)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_size", &self.cache_size)
            .finish()
    }
}

/// The identity service could not answer.
#[derive(Debug, thiserror::Error)]
#[error("identity service unavailable: {0}")]
pub struct KeystoneError(String);

/// The parts of Keystone's token body read here.
#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    user: Named,
    project: Option<Named>,
    #[serde(default)]
    roles: Vec<Role>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct Named {
    id: String,
}

#[derive(Deserialize)]
struct Role {
    name: String,
}

struct Cached {
    until: Instant,
    identity: Option<Identity>,
}

/// A validator with its cache.
pub struct Keystone {
    config: KeystoneConfig,
    endpoint: String,
    client: reqwest::Client,
    cache: Mutex<HashMap<TokenDigest, Cached>>,
}

impl fmt::Debug for Keystone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystone")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Keystone {
    /// A validator for `config`.
    pub fn new(config: KeystoneConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()?;
        let endpoint = format!("{}/v3/auth/tokens", config.url.trim_end_matches('/'));
        Ok(Self {
            config,
            endpoint,
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The identity service's base URL, credentials masked (for `WWW-Authenticate`).
    pub fn shown_url(&self) -> String {
        secrets::mask_url(&self.config.url)
    }

    /// Who `token` is: `Ok(None)` when the service says it is not valid (or not scoped to a
    /// project, which alarms need).
    pub async fn validate(&self, token: &str) -> Result<Option<Identity>, KeystoneError> {
        let key = digest(token);
        let now = Instant::now();
        if let Some(cached) = self.lock().get(&key).filter(|c| c.until > now) {
            return Ok(cached.identity.clone());
        }
        let (identity, until) = self.ask(token, now).await?;
        self.remember(key, identity.clone(), until, now);
        Ok(identity)
    }

    async fn ask(
        &self,
        token: &str,
        now: Instant,
    ) -> Result<(Option<Identity>, Instant), KeystoneError> {
        let unavailable = |e: String| KeystoneError(secrets::mask_text(&e));
        let response = self
            .client
            .get(&self.endpoint)
            .header("X-Auth-Token", &self.config.service_token)
            .header("X-Subject-Token", token)
            .send()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let negative = now + NEGATIVE_TTL.min(self.config.cache_ttl);
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::UNAUTHORIZED {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                tracing::warn!("the identity service refused the service token; no token validates until it is fixed");
            }
            return Ok((None, negative));
        }
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let body: TokenBody = response
            .json()
            .await
            .map_err(|e| unavailable(format!("unreadable token body: {}", e.without_url())))?;
        let info = body.token;
        let Some(project) = info.project else {
            return Ok((None, negative));
        };
        let mut until = now + self.config.cache_ttl;
        if let Some(expires) = info.expires_at {
            let left = (expires - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return Ok((None, negative));
            }
            until = until.min(now + left);
        }
        let identity = Identity {
            user_id: info.user.id,
            project_id: project.id,
            roles: info.roles.into_iter().map(|r| r.name).collect(),
        };
        Ok((Some(identity), until))
    }

    fn remember(&self, key: TokenDigest, identity: Option<Identity>, until: Instant, now: Instant) {
        let bound = self.config.cache_size;
        if bound == 0 {
            return;
        }
        let mut cache = self.lock();
        if cache.len() >= bound && !cache.contains_key(&key) {
            cache.retain(|_, c| c.until > now);
            while cache.len() >= bound {
                let Some(soonest) = cache.iter().min_by_key(|(_, c)| c.until).map(|(k, _)| *k)
                else {
                    break;
                };
                cache.remove(&soonest);
            }
        }
        cache.insert(key, Cached { until, identity });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tokens cached now (for tests and reports).
    pub fn cached(&self) -> usize {
        self.lock().len()
    }
}
