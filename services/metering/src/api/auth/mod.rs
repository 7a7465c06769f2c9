//! Who is asking: requests carry a token in `X-Auth-Token`, as OpenStack services take them;
//! the token is looked up in the operator's token file ([`TokenTable`], re-read on SIGHUP
//! through the launcher's [`ConfigHandle`]) and then, if a Keystone-compatible identity service
//! is configured ([`KeystoneConfig`]), validated there. A request without a valid token gets
//! 401.
//!
//! What an identity may do ([`Access`]): a user sees and changes only its project's alarms and
//! statistics (the rest answer 404, as Aodh does), a user with the `admin` role sees all. Without
//! any authentication configured, every request is the operator's ([`Access::Operator`]), which
//! is why the API then listens only on loopback unless told otherwise (see `ApiConfig`); a
//! request naming `X-User-Id` and `X-Project-Id` then acts as that user, as in Aodh's no-auth
//! mode.

mod keystone;
mod tokens;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings_runtime::ConfigHandle;

pub use keystone::{Keystone, KeystoneConfig, KeystoneError, NEGATIVE_TTL};
pub use tokens::{TokenFileError, TokenTable, MAX_TOKEN_LEN};

use crate::model::Alarm;

/// The header a request's token travels in.
pub const TOKEN_HEADER: &str = "x-auth-token";

/// The role that sees every project.
pub const ADMIN_ROLE: &str = "admin";

/// A user, as a token names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user.
    pub user_id: String,
    /// The project the token is scoped to.
    pub project_id: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Identity {
    /// Whether the identity has the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.roles
            .iter()
            .any(|r| r.eq_ignore_ascii_case(ADMIN_ROLE))
    }
}

/// What a request may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// No authentication is configured: the operator, on loopback, reaches everything.
    Operator,
    /// An authenticated user.
    User(Identity),
}

impl Access {
    /// Whether every project is visible.
    pub fn sees_all(&self) -> bool {
        match self {
            Self::Operator => true,
            Self::User(identity) => identity.is_admin(),
        }
    }

    /// The only project visible, for a user who is not an admin.
    pub fn project_scope(&self) -> Option<&str> {
        match self {
            Self::User(identity) if !identity.is_admin() => Some(&identity.project_id),
            _ => None,
        }
    }

    /// Whether `alarm` is visible (and changeable).
    pub fn may_see(&self, alarm: &Alarm) -> bool {
        match self.project_scope() {
            None => true,
            Some(project) => alarm.project_id.as_deref() == Some(project),
        }
    }

    /// The identity, when authenticated.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Self::Operator => None,
            Self::User(identity) => Some(identity),
        }
    }
}

/// Where tokens are looked up. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    tokens: Option<ConfigHandle<TokenTable>>,
    keystone: Option<Arc<Keystone>>,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `X-Auth-Token`.
    #[error("Authentication required: send a token in X-Auth-Token")]
    Missing,
    /// A token no source knows.
    #[error("The request you have made requires authentication: invalid token")]
    Invalid,
    /// The identity service did not answer; the token may be valid.
    #[error(transparent)]
    Unavailable(#[from] KeystoneError),
}

impl Authenticator {
    /// Looks tokens up in the table `tokens` gives (the launcher's handle, so a reload is seen
    /// by the next request).
    #[must_use]
    pub fn with_token_table(mut self, tokens: ConfigHandle<TokenTable>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Validates tokens the table does not know with the identity service of `config`.
    pub fn with_keystone(mut self, config: KeystoneConfig) -> Result<Self, reqwest::Error> {
        self.keystone = Some(Arc::new(Keystone::new(config)?));
        Ok(self)
    }

    /// Whether any source of tokens is configured.
    pub fn is_configured(&self) -> bool {
        self.tokens.is_some() || self.keystone.is_some()
    }

    /// The identity service, when one is configured.
    pub fn keystone(&self) -> Option<&Keystone> {
        self.keystone.as_deref()
    }

    /// Who `token` is: the token file first, then the identity service.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid);
        }
        if let Some(tokens) = &self.tokens {
            if let Some(identity) = tokens.snapshot().lookup(token) {
                return Ok(identity.clone());
            }
        }
        if let Some(keystone) = &self.keystone {
            if let Some(identity) = keystone.validate(token).await? {
                return Ok(identity);
            }
        }
        Err(AuthError::Invalid)
    }

    fn challenge(&self) -> HeaderValue {
        let text = match &self.keystone {
            Some(keystone) => format!("Keystone uri=\"{}\"", keystone.shown_url()),
            None => "X-Auth-Token".to_owned(),
        };
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("X-Auth-Token"))
    }
}

/// The middleware that puts an [`Access`] on every request, or answers 401 (503 when the
/// identity service cannot say).
pub(crate) async fn authenticate(
    State(auth): State<Option<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = match &auth {
        None => noauth_identity(request.headers()).map_or(Access::Operator, Access::User),
        Some(auth) => {
            let token = request
                .headers()
                .get(TOKEN_HEADER)
                .map(|v| v.to_str().unwrap_or_default().trim())
                .unwrap_or_default();
            match auth.authenticate(token).await {
                Ok(identity) => Access::User(identity),
                Err(error) => return refusal(auth, &error),
            }
        }
    };
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// Without authentication, a request that names `X-User-Id` and `X-Project-Id` acts as that
/// user, with the roles of `X-Roles` (comma-separated), as in Aodh's no-auth mode; one that does
/// not is the operator's. Claiming an identity gains nothing then (the operator reaches all);
/// it lets a user's tools see their project as they would with tokens.
fn noauth_identity(headers: &axum::http::HeaderMap) -> Option<Identity> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= MAX_ID_LEN)
    };
    let user_id = header("x-user-id")?.to_owned();
    let project_id = header("x-project-id")?.to_owned();
    let roles = header("x-roles")
        .map(|roles| {
            roles
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .take(MAX_ROLES)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some(Identity {
        user_id,
        project_id,
        roles,
    })
}

/// Longest user or project id taken from a no-auth header.
const MAX_ID_LEN: usize = 255;

/// Most roles taken from `X-Roles`.
const MAX_ROLES: usize = 32;

fn refusal(auth: &Authenticator, error: &AuthError) -> Response {
    let status = match error {
        AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
        AuthError::Unavailable(_) => {
            tracing::warn!(%error, "cannot validate a token");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let body = Json(json!({"error_message": {"faultstring": error.to_string()}}));
    let mut response = (status, body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, auth.challenge());
    }
    response
}
