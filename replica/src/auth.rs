//! The token on the link: the sender sends `authorization: Bearer TOKEN` on every call
//! ([`Bearer`]); the receiver accepts a call only if its token is one of the site's
//! ([`Tokens`], compared in constant time through their BLAKE3 hashes).

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Shortest token accepted in a tokens file.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("tokens file {path}: {reason}")]
pub struct TokensError {
    pub path: String,
    pub reason: String,
}

/// The tokens a receiving site accepts (hashed; the tokens themselves are not kept).
#[derive(Clone)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.0.len())
    }
}

impl Tokens {
    /// One token per line; empty lines and lines starting with '#' are skipped.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut hashes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.len() < MIN_TOKEN_LEN || t.contains(char::is_whitespace) {
                return Err(format!(
                    "line {}: a token is at least {MIN_TOKEN_LEN} characters without spaces",
                    i + 1
                ));
            }
            hashes.push(*blake3::hash(t.as_bytes()).as_bytes());
        }
        if hashes.is_empty() {
            return Err("no token in it".into());
        }
        Ok(Tokens(hashes))
    }

    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let bad = |reason: String| TokensError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Tokens::parse(&text).map_err(bad)
    }

    /// Whether `token` is one of these; looks at every one, whatever matches.
    pub fn accepts(&self, token: &str) -> bool {
        let h = *blake3::hash(token.as_bytes()).as_bytes();
        self.0.iter().fold(false, |ok, t| {
            constant_time_eq::constant_time_eq_32(t, &h) | ok
        })
    }
}

impl Interceptor for Tokens {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(t) if self.accepts(t) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "this site does not accept the token sent (check the remote's --token-file)",
            )),
            None => Err(Status::unauthenticated(
                "this site needs a token: add the remote with --token-file",
            )),
        }
    }
}

/// Adds the bearer token to every call of a client.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| "the token has characters a header cannot carry".to_string())
            })
            .transpose()
            .map(Bearer)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_short_ones_refused() {
        let t = Tokens::parse("# site tokens\n\nabcdefghijklmnop\nqrstuvwxyz0123456789\n").unwrap();
        assert!(t.accepts("abcdefghijklmnop"));
        assert!(t.accepts("qrstuvwxyz0123456789"));
        assert!(!t.accepts("abcdefghijklmno"));
        assert!(!t.accepts(""));
        assert!(Tokens::parse("short\n").unwrap_err().contains("line 1"));
        assert!(Tokens::parse("# nothing\n").is_err());
    }

    #[test]
    fn the_interceptor_refuses_missing_and_wrong_tokens() {
        let mut t = Tokens::parse("abcdefghijklmnop").unwrap();
        let mut with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            t.call(r)
        };
        assert!(with(Some("Bearer abcdefghijklmnop")).is_ok());
        let e = with(Some("Bearer nope-nope-nope-nope")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("does not accept"), "{e}");
        assert!(with(None).unwrap_err().message().contains("needs a token"));
    }
}
