//! The token file: who a token is, as the operator wrote it.
//!
//! **Contract** (tools write this file): one JSON object mapping each token to its identity,
//!
//! ```json
//! {"<token>": {"user_id": "…", "project_id": "…", "roles": ["admin"]}}
//! ```
//!
//! `user_id` and `project_id` are required non-empty strings; `roles` is a list of role names
//! (absent means none), and the role `admin` sees every project. Other keys in an entry are
//! ignored, so that tools may add their own.
//!
//! The table keeps the SHA-256 of each token, never the token, and never prints one: errors
//! name entries by their position in the file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Identity;

/// Longest token accepted (Keystone's Fernet tokens are under 300 bytes).
pub const MAX_TOKEN_LEN: usize = 4096;

/// The SHA-256 of a token: what tables and caches key on.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JSON object of token entries.
    #[error("the token file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a token).
        reason: String,
    },
}

/// One entry as written.
#[derive(Deserialize)]
struct Entry {
    user_id: String,
    project_id: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// Tokens and who they are. `Debug` shows how many, never which.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenTable {
    by_digest: HashMap<TokenDigest, Identity>,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenTable")
            .field("tokens", &self.by_digest.len())
            .finish()
    }
}

impl TokenTable {
    /// Reads and checks the file at `path`. Warns (once per load) when other users may read
    /// it.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        warn_if_readable_by_others(path);
        Self::parse(&text).map_err(|reason| TokenFileError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the file's text; the error says what is wrong without quoting any token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| format!("expected a JSON object of tokens: {}", describe(&e)))?;
        let mut by_digest = HashMap::with_capacity(entries.len());
        for (position, (token, value)) in entries.into_iter().enumerate() {
            let number = position + 1;
            if token.is_empty() || token.len() > MAX_TOKEN_LEN || !is_header_safe(&token) {
                return Err(format!(
                    "token #{number} (in key order) is empty, longer than {MAX_TOKEN_LEN} bytes, or not printable ASCII"
                ));
            }
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| format!("token #{number} (in key order): {}", describe(&e)))?;
            if entry.user_id.is_empty() || entry.project_id.is_empty() {
                return Err(format!(
                    "token #{number} (in key order): user_id and project_id must not be empty"
                ));
            }
            by_digest.insert(
                digest(&token),
                Identity {
                    user_id: entry.user_id,
                    project_id: entry.project_id,
                    roles: entry.roles,
                },
            );
        }
        Ok(Self { by_digest })
    }

    /// Who `token` is, if the file names it.
    pub fn lookup(&self, token: &str) -> Option<&Identity> {
        self.by_digest.get(&digest(token))
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// serde_json's message without the input it quotes when a value has the wrong type (which
/// could be a token pasted in the wrong place); field names are kept.
fn describe(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    };
    // "invalid type: string \"…\", expected a sequence": keep the kind and the expectation.
    let text = match (text.split_once(':'), text.find(", expected")) {
        (Some((kind, _)), Some(expected)) if kind.starts_with("invalid") => {
            format!("{kind}{}", &text[expected..])
        }
        _ => text,
    };
    if error.line() == 0 {
        text
    } else {
        format!("{text} (line {}, column {})", error.line(), error.column())
    }
}

/// Whether a token can travel in an HTTP header as it is.
pub(crate) fn is_header_safe(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the token file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_format_parses() {
        let table = TokenTable::parse(
            r#"{"tok-a": {"user_id": "u1", "project_id": "p1", "roles": ["member"]},
                "tok-admin": {"user_id": "root", "project_id": "ops", "roles": ["admin"], "note": "x"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.len(), 2);
        let a = table.lookup("tok-a").unwrap_or_else(|| panic!("tok-a"));
        assert_eq!((a.user_id.as_str(), a.project_id.as_str()), ("u1", "p1"));
        assert!(!a.is_admin());
        assert!(table.lookup("tok-admin").is_some_and(Identity::is_admin));
        assert!(table.lookup("tok-b").is_none());
    }

    #[test]
    fn errors_never_quote_a_token() {
        for text in [
            r#"{"sekrit-1": {"user_id": "u"}}"#,
            r#"{"sekrit-1": {"user_id": "u", "project_id": ""}}"#,
            r#"{"sekrit-1": 5}"#,
            r#"{"t": {"user_id": "u", "project_id": "p", "roles": "sekrit-1"}}"#,
            r#"{"t": {"user_id": "u", "project_id": "p", "roles": ["a", 5, "sekrit-1"]}}"#,
            r#"{"sekrit 1": {"user_id": "u", "project_id": "p"}}"#,
            r#"["sekrit-1"]"#,
        ] {
            let error = TokenTable::parse(text).unwrap_err();
            assert!(!error.contains("sekrit"), "{error}");
        }
        let error = TokenTable::parse(r#"{"t": {"user_id": "u"}}"#).unwrap_err();
        assert!(error.contains("missing field `project_id`"), "{error}");
        assert!(!format!(
            "{:?}",
            TokenTable::parse(r#"{"sekrit-1": {"user_id": "u", "project_id": "p"}}"#)
        )
        .contains("sekrit"));
    }
}
