//! The route table and what every request goes through: the per-IP rate
//! limit, the key check of its route, then its handler. A route is one
//! line of [`ROUTES`].

use super::auth::Access;
use super::ctx::{Ctx, Req};
use super::reply::{self, Answer, ApiError, ErrorCode};
use super::{dashboard, health, listing, writes};
use hyper::header::{HeaderValue, ALLOW};
use hyper::Method;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

/// What a handler returns.
pub(super) type Handled<'a> = Pin<Box<dyn Future<Output = Result<Answer, ApiError>> + 'a>>;
/// A handler: an `async fn(&Ctx, Req) -> Result<Answer, ApiError>`.
pub(super) type Handler = for<'a> fn(&'a Ctx, Req) -> Handled<'a>;

/// One route: method, exact path, who may use it, handler.
pub(super) struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub handler: Handler,
}

/// A [`Route`] from an `async fn(&Ctx, Req) -> Result<Answer, ApiError>`.
macro_rules! route {
    ($method:literal, $path:literal, $access:ident, $f:path) => {
        Route {
            method: $method,
            path: $path,
            access: Access::$access,
            handler: {
                fn h(ctx: &Ctx, req: Req) -> Handled<'_> {
                    Box::pin($f(ctx, req))
                }
                h
            },
        }
    };
}

/// Every route. `GET` routes answer `HEAD` too.
pub(super) static ROUTES: &[Route] = &[
    route!("GET", "/", Open, dashboard::page),
    route!("GET", "/metrics", Open, health::metrics),
    route!("GET", "/healthz", Open, health::healthz),
    route!("GET", "/v1/stats", Read, listing::stats),
    route!("GET", "/v1/connections", Read, listing::connections),
    route!("GET", "/v1/channels", Read, listing::channels),
    route!("GET", "/v1/cluster", Read, listing::cluster),
    route!("POST", "/v1/publish", Write, writes::publish),
    route!("POST", "/v1/broadcast", Write, writes::broadcast),
    route!("POST", "/v1/disconnect", Write, writes::disconnect),
    route!("POST", "/v1/unsubscribe", Write, writes::unsubscribe),
];

/// Answers one request.
pub(super) async fn handle(ctx: &Ctx, peer: SocketAddr, req: Req) -> Answer {
    if !ctx.limiter.borrow_mut().allow(peer.ip(), Instant::now()) {
        return reply::error(&ApiError::new(
            ErrorCode::RateLimited,
            "too many requests from this address (http_rate_limit); retry in a second",
        ));
    }
    let path = req.uri().path();
    let method = match *req.method() {
        Method::HEAD => "GET",
        ref m => m.as_str(),
    };
    let Some(route) = ROUTES.iter().find(|r| r.path == path && r.method == method) else {
        return no_route(path);
    };
    if let Err(e) = ctx.keys.check(route.access, req.headers()) {
        return reply::error(&e);
    }
    match (route.handler)(ctx, req).await {
        Ok(a) => a,
        Err(e) => reply::error(&e),
    }
}

/// 405 (with `Allow`) for a path served with other methods, else 404.
/// Both close the connection, as the endpoint always did.
fn no_route(path: &str) -> Answer {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.path == path)
        .flat_map(|r| match r.method {
            "GET" => vec!["GET", "HEAD"],
            m => vec![m],
        })
        .collect();
    if methods.is_empty() {
        let e = ApiError::new(ErrorCode::NotFound, format!("no endpoint {path}"));
        return reply::closing(reply::error(&e));
    }
    let allow = methods.join(", ");
    let e = ApiError::new(ErrorCode::MethodNotAllowed, format!("{path} takes {allow}"));
    let mut r = reply::closing(reply::error(&e));
    if let Ok(v) = HeaderValue::from_str(&allow) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
}
