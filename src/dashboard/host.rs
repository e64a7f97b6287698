//! Which names the dashboard answers to: the defence against DNS rebinding. A page on another
//! site whose name the attacker's DNS then points at 127.0.0.1 is, to the browser, the same
//! origin as its own, and could read `/api/nodes` and `/api/csv` through a dashboard on this
//! machine or through `ssh -L`. Its requests still carry the attacker's name in `Host`, so
//! the dashboard answers only a `Host` that is an IP address (no DNS involved, nothing to
//! rebind), `localhost`, or a name given with `--allowed-host`; anything else is answered
//! 421 Misdirected Request, saying how to allow the name.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The names besides IP addresses and `localhost` that the dashboard answers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<Allowed>,
}

/// One `--allowed-host`: a name, and the only port it may come with, if it gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    name: String,
    port: Option<u16>,
}

/// A `Host` header, split.
#[derive(Debug, PartialEq, Eq)]
struct Authority<'a> {
    /// Without the brackets of an IPv6 address.
    host: &'a str,
    port: Option<u16>,
}

/// Split `host[:port]` (`[v6]` or `[v6]:port` for IPv6); `None` for anything else, such as
/// user information, a path or a port that is not a number.
fn split(s: &str) -> Option<Authority<'_>> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            (v6, port)
        }
        None => {
            let (host, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
            if host.is_empty() || !host.chars().all(name_char) {
                return None;
            }
            (host, port)
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some(Authority { host, port })
}

impl AllowedHosts {
    /// The `--allowed-host` values, each `NAME` (any port) or `NAME:PORT` (only that port, as
    /// the `Host` header gives it).
    pub fn new(names: &[String]) -> Result<AllowedHosts, String> {
        names
            .iter()
            .map(|n| {
                let a = split(n).ok_or_else(|| {
                    format!("--allowed-host {n:?}: give a host name, NAME or NAME:PORT")
                })?;
                Ok(Allowed {
                    name: a.host.to_ascii_lowercase(),
                    port: a.port,
                })
            })
            .collect::<Result<_, String>>()
            .map(|names| AllowedHosts { names })
    }

    /// Whether a request with this `Host` may be answered.
    pub fn allows(&self, host: &str) -> bool {
        let Some(a) = split(host) else {
            return false;
        };
        if a.host.parse::<IpAddr>().is_ok() || a.host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        self.names.iter().any(|n| {
            n.name.eq_ignore_ascii_case(a.host) && n.port.is_none_or(|p| a.port == Some(p))
        })
    }
}

/// As `check-config` says them: `localhost, IP addresses` and the names allowed.
impl std::fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("localhost, IP addresses")?;
        for n in &self.names {
            match n.port {
                Some(p) => write!(f, ", {}:{p}", n.name)?,
                None => write!(f, ", {}", n.name)?,
            }
        }
        Ok(())
    }
}

/// Middleware for every route: answer 421 unless each `Host` is allowed. A request without
/// one (HTTP/1.0) is answered: browsers always send it, so it is no browser's page.
pub async fn check(State(allowed): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let refused = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .find(|h| !h.to_str().is_ok_and(|h| allowed.allows(h)));
    match refused {
        Some(h) => misdirected(h),
        None => next.run(req).await,
    }
}

/// The 421 answer, naming the host and how to allow it.
fn misdirected(host: &HeaderValue) -> Response {
    let host = String::from_utf8_lossy(host.as_bytes());
    let name = split(&host).map_or(host.as_ref(), |a| a.host);
    let error = format!(
        "this dashboard answers to localhost, IP addresses and the names given with --allowed-host, \
         not {host:?} (a defence against DNS rebinding); if that is its name (a reverse proxy, a \
         LAN name), start it with --allowed-host {name} (DASHBOARD_ALLOWED_HOSTS)"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        Json(json!({ "error": error })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(names: &[&str]) -> AllowedHosts {
        AllowedHosts::new(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
    }

    // IP literals and localhost are answered on any port; other names only when allowed.
    #[test]
    fn ip_addresses_and_localhost_pass_names_must_be_allowed() {
        let none = allowed(&[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "192.168.1.20:8080",
            "[::1]:8080",
            "[::1]",
            "[fe80::1]:80",
            "localhost:8080",
            "LocalHost",
        ] {
            assert!(none.allows(ok), "{ok}");
        }
        for refused in [
            "rebind.example:8080",
            "rebind.example",
            "localhost.rebind.example:8080",
            "127.0.0.1.rebind.example",
            "user@127.0.0.1:8080",
            "127.0.0.1:8080/x",
            "127.0.0.1:port",
            "[::1",
            "[rebind.example]:80",
            "::1",
            "",
        ] {
            assert!(!none.allows(refused), "{refused}");
        }
        let some = allowed(&["Dash.Example", "pi.lan:8080"]);
        assert!(some.allows("dash.example"));
        assert!(some.allows("dash.example:443"));
        assert!(some.allows("pi.lan:8080"));
        assert!(!some.allows("pi.lan:9090"));
        assert!(!some.allows("pi.lan"));
        assert!(!some.allows("other.example"));
        assert!(AllowedHosts::new(&["a/b".into()]).is_err());
        assert!(AllowedHosts::new(&["a:b".into()]).is_err());
    }
}
