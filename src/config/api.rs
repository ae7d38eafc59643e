//! The `api` section: the opt-in TCP listener for clients that cannot open the Unix socket
//! (an application in a container, one written against Ollama or OpenAI's base URL), and the
//! bearer token it asks for.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metrics::ListenAddress;

/// Where the API is served over TCP besides the Unix socket, and the token it asks for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// `ADDRESS:PORT`s to listen on, applied live; empty (the default) for none.
    pub listen: Vec<ListenAddress>,
    /// A file holding the token every request over TCP must carry (`Authorization: Bearer`);
    /// required for any address other than loopback.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` at load (never written out).
    #[serde(skip)]
    pub token: Option<Token>,
}

/// Shortest token accepted: 16 characters from a good source (`openssl rand -hex 16` gives
/// 32) cannot be guessed by trying over a network.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Longest token accepted: it travels in a header on every request.
pub const MAX_TOKEN_CHARS: usize = 4096;

/// A bearer token, kept only as its SHA-256: what is compared (in constant time) is the digest
/// of what a client sends against this, so neither the token's bytes nor its length show in
/// how long a refusal takes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; 32]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token for `secret` (its text as the file holds it, trailing newline removed).
    pub fn new(secret: &str) -> Token {
        Token(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.0).into()
    }
}

impl ApiSettings {
    /// The addresses to listen on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        super::metrics::addresses(&self.listen)
    }

    /// The rules serde cannot express: each address once, and none but loopback without a
    /// token (anyone on the network could embed with the device's CPU and read what it
    /// serves).
    pub fn validate(&self) -> Result<(), (String, String)> {
        super::metrics::listed_once("api.listen", &self.listen)?;
        if self.token_file.is_none()
            && let Some(open) = self.listen.iter().find(|a| !a.0.ip().is_loopback())
        {
            return Err(("api.token_file".into(), needs_token(&open.to_string())));
        }
        Ok(())
    }

    /// Reads `token_file` into `token` (or clears it when there is none).
    pub fn read_token(&mut self) -> Result<(), (String, String)> {
        self.token = match &self.token_file {
            None => None,
            Some(path) => Some(read_token(path).map_err(|r| ("api.token_file".to_string(), r))?),
        };
        Ok(())
    }
}

/// Why a listener on `address` needs a token, and what to do.
pub fn needs_token(address: &str) -> String {
    format!(
        "api.listen has {address}, which is not a loopback address, and no token is set: anyone who reaches it could use the API. Set api.token_file to a file holding a token (e.g. `openssl rand -hex 32 > /etc/caxton/api-token; chmod 0640 /etc/caxton/api-token; chown root:caxton /etc/caxton/api-token`), or listen on 127.0.0.1 or [::1] only"
    )
}

/// The token in `path`: a regular file, not readable by every user, owned by root or the
/// daemon's user, holding one token of [`MIN_TOKEN_CHARS`] to [`MAX_TOKEN_CHARS`] visible
/// ASCII characters (a trailing newline is ignored).
fn read_token(path: &Path) -> Result<Token, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.mode() & 0o007 != 0 {
        return Err(format!(
            "{shown} is open to every user (mode {:04o}); it holds a secret: chmod 0640 {shown} (and chown root:caxton {shown})",
            meta.mode() & 0o7777
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{shown} belongs to uid {}, neither root nor the daemon's user (uid {me}): chown root:caxton {shown}",
            meta.uid()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{shown} is not text; write the token as printable ASCII"))?;
    let secret = text.strip_suffix('\n').unwrap_or(text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if let Some(bad) = secret.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{shown} holds {bad:?}, which a bearer token cannot carry; write one line of printable ASCII without spaces (e.g. `openssl rand -hex 32`)"
        ));
    }
    let n = secret.len();
    if !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&n) {
        return Err(format!(
            "{shown} holds a token of {n} characters; use {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} (e.g. `openssl rand -hex 32`, 64)"
        ));
    }
    Ok(Token::new(secret))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings(listen: &[&str], token_file: Option<&Path>) -> ApiSettings {
        ApiSettings {
            listen: listen.iter().map(|a| a.parse().expect("address")).collect(),
            token_file: token_file.map(Path::to_path_buf),
            token: None,
        }
    }

    #[test]
    fn a_listener_off_loopback_needs_a_token_file() {
        assert_eq!(
            settings(&["127.0.0.1:11434", "[::1]:11434"], None).validate(),
            Ok(())
        );
        assert_eq!(
            settings(&["127.0.0.1:11434", "0.0.0.0:11434"], None).validate(),
            Err(("api.token_file".into(), needs_token("0.0.0.0:11434")))
        );
        assert_eq!(
            settings(&["10.0.0.5:11434"], None).validate().map_err(|e| e.1),
            Err("api.listen has 10.0.0.5:11434, which is not a loopback address, and no token is set: anyone who reaches it could use the API. Set api.token_file to a file holding a token (e.g. `openssl rand -hex 32 > /etc/caxton/api-token; chmod 0640 /etc/caxton/api-token; chown root:caxton /etc/caxton/api-token`), or listen on 127.0.0.1 or [::1] only".into())
        );
        assert!(settings(&["[::]:11434"], None).validate().is_err());
        assert_eq!(
            settings(&["10.0.0.5:11434"], Some(Path::new("/t"))).validate(),
            Ok(())
        );
        assert_eq!(
            settings(&["127.0.0.1:1", "127.0.0.1:1"], None).validate(),
            Err((
                "api.listen".into(),
                "127.0.0.1:1 is listed twice; list each address once".into()
            ))
        );
    }

    fn token_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("api-token");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn the_token_file_is_read_checked_and_kept_as_a_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = "0123456789abcdef0123456789abcdef";
        let path = token_file(dir.path(), &format!("{secret}\n"), 0o640);
        let mut s = settings(&["10.0.0.5:1"], Some(&path));
        s.read_token().expect("read");
        let token = s.token.clone().expect("a token");
        assert!(token.matches(secret.as_bytes()));
        assert!(!token.matches(b"0123456789abcdef0123456789abcdeX"));
        assert!(!token.matches(format!("{secret}\n").as_bytes()));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(!format!("{s:?}").contains(secret));
        assert!(!serde_json::to_string(&s).expect("json").contains(secret));

        let shown = path.display().to_string();
        let refused = |text: &str, mode: u32| {
            let path = token_file(dir.path(), text, mode);
            let mut s = settings(&[], Some(&path));
            let (key, reason) = s.read_token().expect_err("refused");
            assert_eq!(key, "api.token_file");
            reason
        };
        assert_eq!(
            refused(secret, 0o644),
            format!(
                "{shown} is open to every user (mode 0644); it holds a secret: chmod 0640 {shown} (and chown root:caxton {shown})"
            )
        );
        assert_eq!(
            refused("short\n", 0o600),
            format!(
                "{shown} holds a token of 5 characters; use 16 to 4096 (e.g. `openssl rand -hex 32`, 64)"
            )
        );
        assert_eq!(
            refused("0123456789 abcdef0123\n", 0o600),
            format!(
                "{shown} holds ' ', which a bearer token cannot carry; write one line of printable ASCII without spaces (e.g. `openssl rand -hex 32`)"
            )
        );
        assert_eq!(
            refused("", 0o600),
            format!(
                "{shown} holds a token of 0 characters; use 16 to 4096 (e.g. `openssl rand -hex 32`, 64)"
            )
        );
        let missing = dir.path().join("nothing");
        let mut s = settings(&[], Some(&missing));
        assert_eq!(
            s.read_token(),
            Err((
                "api.token_file".into(),
                format!(
                    "cannot read {}: No such file or directory (os error 2)",
                    missing.display()
                )
            ))
        );
        let mut s = settings(&[], Some(dir.path()));
        assert_eq!(
            s.read_token().map_err(|e| e.1),
            Err(format!("{} is not a regular file", dir.path().display()))
        );
    }
}
