//! `GET /`: the live dashboard, one self-contained page built into the
//! binary (markup, style and script under `dashboard/`, joined at compile
//! time). It loads nothing from elsewhere, so it works on a machine with no
//! network, and it reads only the JSON API and `/metrics` (see
//! docs/OPERATIONS.md, *The dashboard*).

use super::ctx::{Ctx, Req};
use super::reply::{self, Answer, ApiError};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;

/// `GET /`: the page, with its content security policy. Open: the page
/// holds no figure; what it reads asks for the key itself.
pub(super) async fn page(_ctx: &Ctx, _req: Req) -> Result<Answer, ApiError> {
    let mut r = reply::with_type(
        StatusCode::OK,
        CONTENT_TYPE,
        bytes::Bytes::from_static(PAGE.as_bytes()),
    );
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // A new binary may serve a new page: never keep a stale one.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// The page, served as is.
const PAGE: &str = concat!(
    include_str!("dashboard/head.html"),
    "<style>\n",
    include_str!("dashboard/style.css"),
    "</style>\n",
    include_str!("dashboard/body.html"),
    "<script>\n",
    include_str!("dashboard/app.js"),
    "</script>\n</body>\n</html>\n",
);

/// Its content type.
const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Sent with the page: the browser itself refuses anything from another
/// origin (scripts, styles, images, fetches), so "no external resources"
/// holds even if a later edit slips one in. The script and style are
/// inline, hence `'unsafe-inline'` for those two only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_one_document_that_loads_nothing_from_elsewhere() {
        assert!(PAGE.starts_with("<!doctype html>"));
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert!(PAGE.trim_end().ends_with("</html>"));
        for needle in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "@import",
            "<link",
            "src=\"//",
        ] {
            assert!(
                !PAGE.contains(needle),
                "the page refers elsewhere: {needle}"
            );
        }
        // Every fetch goes to this server, by an absolute path.
        for (i, _) in PAGE.match_indices("fetch(") {
            assert!(PAGE[i..].starts_with("fetch(path"), "{}", &PAGE[i..i + 40]);
        }
    }

    #[test]
    fn every_figure_the_tests_read_has_its_id() {
        for id in [
            "clients",
            "msgs-in-rate",
            "msgs-out-rate",
            "deliveries-rate",
            "bytes-in-rate",
            "bytes-out-rate",
            "p50",
            "p99",
            "slow-consumers",
            "errors",
            "channels",
            "cluster",
            "backplane",
            "connections",
            "chart-clients",
            "chart-msgs",
            "key-form",
        ] {
            assert!(
                PAGE.contains(&format!("id=\"{id}\"")),
                "no element with id {id}"
            );
        }
    }
}
