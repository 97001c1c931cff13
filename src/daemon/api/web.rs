//! The API and web dashboard on loopback TCP, for browsers: opened when
//! `banger dashboard` first asks (or at start with `[api] listen`).
//!
//! A loopback port is reachable by every uid on the host, so each request
//! must carry the daemon's token — `Authorization: Bearer`, or the
//! `banger_token` cookie that `GET /login?token=` sets (HttpOnly,
//! SameSite=Strict). The `Host` header must name the port itself (a page
//! on another name that resolves to 127.0.0.1 — DNS rebinding — is
//! refused), a cross-origin `Origin` is refused, and a state-changing
//! call signed in by cookie alone must also carry `X-Banger: 1`, which no
//! form can send and no other origin may without a preflight we never
//! grant. The token is made at daemon start and handed out only on the
//! owner's socket.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Api;
use crate::daemon::handler::DaemonHandler;
use crate::protocol::RpcError;

const COOKIE: &str = "banger_token";
const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const XTERM_JS: &str = include_str!("dashboard/vendor/xterm-6.0.0/xterm.js");
const XTERM_CSS: &str = include_str!("dashboard/vendor/xterm-6.0.0/xterm.css");
// xterm.js sizes its rows with a <style> element of its own: inline
// styles are allowed, inline scripts are not.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The loopback listener: where it binds and, once bound, where it is.
pub struct Web {
    token: String,
    listen: SocketAddr,
    bound: tokio::sync::Mutex<Option<SocketAddr>>,
}

impl Web {
    /// A fresh token; `listen` from `[api] listen`, else any free port.
    pub fn new(listen: Option<SocketAddr>) -> Web {
        let bytes: [u8; 32] = rand::random();
        Web {
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            bound: Default::default(),
        }
    }

    /// Binds and serves the port if it is not served yet; its address.
    pub async fn ensure(&self, h: &DaemonHandler) -> Result<SocketAddr, RpcError> {
        let mut bound = self.bound.lock().await;
        if let Some(a) = *bound {
            return Ok(a);
        }
        let l = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| {
                RpcError::failed(format!(
                    "cannot listen on {} for the dashboard: {e}; set [api] listen in the config to a free loopback ADDRESS:PORT",
                    self.listen
                ))
            })?;
        let a = l
            .local_addr()
            .map_err(|e| RpcError::failed(format!("the dashboard's address: {e}")))?;
        tracing::info!(address = %a, "HTTP API and dashboard on loopback TCP");
        tokio::spawn(serve(l, a, self.token.clone(), h.clone()));
        *bound = Some(a);
        Ok(a)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The URL that signs a browser in.
    pub fn url(&self, a: SocketAddr) -> String {
        format!("http://{a}/login?token={}", self.token)
    }
}

#[derive(Clone)]
struct Guard {
    token: String,
    /// The `Host` values that name this port.
    hosts: Vec<String>,
    origins: Vec<String>,
}

async fn serve(l: tokio::net::TcpListener, a: SocketAddr, token: String, h: DaemonHandler) {
    let port = a.port();
    let hosts: Vec<String> = [a.ip().to_string(), "localhost".into(), "[::1]".into()]
        .iter()
        .map(|n| match a.ip() {
            std::net::IpAddr::V6(ip) if n == &ip.to_string() => format!("[{n}]:{port}"),
            _ => format!("{n}:{port}"),
        })
        .collect();
    let guard = Guard {
        token,
        origins: hosts.iter().map(|h| format!("http://{h}")).collect(),
        hosts,
    };
    let app = super::router(Api::new(h))
        .merge(pages())
        .layer(axum::middleware::from_fn_with_state(guard, check));
    if let Err(e) = axum::serve(l, app).await {
        tracing::warn!("the dashboard's port stopped: {e}");
    }
}

fn pages() -> Router {
    let page = |body: &'static str, kind: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-store"),
                    (header::CONTENT_SECURITY_POLICY, CSP),
                    (header::X_FRAME_OPTIONS, "DENY"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
        }
    };
    Router::new()
        .route("/", get(page(INDEX, "text/html; charset=utf-8")))
        .route(
            "/app.js",
            get(page(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route("/app.css", get(page(APP_CSS, "text/css; charset=utf-8")))
        .route(
            "/vendor/xterm.js",
            get(page(XTERM_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/vendor/xterm.css",
            get(page(XTERM_CSS, "text/css; charset=utf-8")),
        )
}

#[derive(serde::Deserialize)]
struct Login {
    token: Option<String>,
}

/// Every request on the port passes here first.
async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    if !host.is_some_and(|v| g.hosts.iter().any(|a| a == v)) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the Host header does not name this port; open the URL banger dashboard prints",
        );
    }
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if origin.is_some_and(|o| !g.origins.iter().any(|a| a == o)) {
        return refuse(StatusCode::FORBIDDEN, "a request from another origin");
    }
    if req.uri().path() == "/login" {
        let q: Login = Query::try_from_uri(req.uri())
            .map(|q| q.0)
            .unwrap_or(Login { token: None });
        return login(&g, q.token.as_deref());
    }
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let by_bearer = bearer.is_some_and(|t| same(t, &g.token));
    let by_cookie = cookie(h).is_some_and(|t| same(t, &g.token));
    if !by_bearer && !by_cookie {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no valid token: open the URL banger dashboard prints, or send Authorization: Bearer TOKEN",
        );
    }
    let changes = ![Method::GET, Method::HEAD].contains(req.method());
    if changes && !by_bearer && h.get("x-banger").is_none_or(|v| v != "1") {
        return refuse(
            StatusCode::FORBIDDEN,
            "a state-changing call signed in by cookie needs the header X-Banger: 1",
        );
    }
    next.run(req).await
}

fn login(g: &Guard, token: Option<&str>) -> Response {
    if !token.is_some_and(|t| same(t, &g.token)) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this sign-in link is not (or no longer) valid: run banger dashboard for the current one",
        );
    }
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/")
        .header(
            header::SET_COOKIE,
            format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", g.token),
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn cookie(h: &HeaderMap) -> Option<&str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Compares in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else {
        "forbidden"
    };
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_compared_whole() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; banger_token=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "banger_tokenx=abc".parse().unwrap());
        assert_eq!(cookie(&h), None);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "a"));
    }
}
