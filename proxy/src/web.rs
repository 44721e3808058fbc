//! The web page on the WebSocket port (`--web-page`): a plain `GET /` gets a sign-in page that
//! subscribes to the user's conference list over this same port; an upgrade on any path still
//! gets SIP ([`crate::transport::ws`] decides, and asks [`WebPage::response`] only for requests
//! that are not upgrades).
//!
//! Everything is compiled in from the repository's `web/` folder (no build step, no CDN):
//! the HTML, the CSS, the page's script, the module `conflist.js` and a vendored JsSIP.
//! The page reads its settings (`--web-title`, `--web-ws-url`, `--web-sip-domain`) from a JSON
//! block rendered into the HTML once at startup. Every answer carries an `ETag` (and gets
//! `304` on `If-None-Match`), `Cache-Control: no-cache` (so a new proxy version is picked up
//! at once), `nosniff`, and the HTML a strict Content-Security-Policy (scripts and styles from
//! this origin only, WebSockets anywhere, no framing).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The HTML template; `{{title}}` and `{{config}}` are filled in by [`WebPage::new`].
const INDEX_HTML: &str = include_str!("../../web/index.html");

/// The Content-Security-Policy of the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file the page is made of.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The static files, by request path.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/conflist.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/conflist.js"),
    },
    Asset {
        path: "/vendor/jssip.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/vendor/jssip-3.13.8.min.js"),
    },
    Asset {
        path: "/vendor/LICENSES.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../web/vendor/LICENSES.txt"),
    },
];

/// What the operator set for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// The page's title and heading (`--web-title`).
    pub title: String,
    /// The WebSocket URL the page connects to (`--web-ws-url`); `None`: the page's own host,
    /// `ws:` or `wss:` as the page's scheme.
    pub ws_url: Option<String>,
    /// The domain a bare user name is completed with (`--web-sip-domain`).
    pub sip_domain: String,
}

/// The rendered page and its assets, ready to serve.
#[derive(Debug)]
pub struct WebPage {
    index: Vec<u8>,
    index_etag: String,
    etags: Vec<String>,
}

impl WebPage {
    /// Renders the HTML with `settings` (escaped for where each value goes).
    pub fn new(settings: &WebSettings) -> Self {
        let mut config = String::from("{\"title\":");
        json_string(&mut config, &settings.title);
        config.push_str(",\"wsUrl\":");
        match &settings.ws_url {
            Some(url) => json_string(&mut config, url),
            None => config.push_str("null"),
        }
        config.push_str(",\"sipDomain\":");
        json_string(&mut config, &settings.sip_domain);
        config.push('}');
        let index = INDEX_HTML
            .replace("{{title}}", &html_escape(&settings.title))
            .replace("{{config}}", &config)
            .into_bytes();
        Self {
            index_etag: etag(&index),
            index,
            etags: ASSETS.iter().map(|a| etag(a.body)).collect(),
        }
    }

    /// The answer for `path`, or `None` when the page has no such file.
    pub fn response(&self, path: &str, request: &HeaderMap) -> Option<Response> {
        if path == "/" || path == "/index.html" {
            let mut resp = answer(
                request,
                "text/html; charset=utf-8",
                &self.index_etag,
                &self.index,
            );
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            return Some(resp);
        }
        let i = ASSETS.iter().position(|a| a.path == path)?;
        let asset = &ASSETS[i];
        Some(answer(
            request,
            asset.content_type,
            &self.etags[i],
            asset.body,
        ))
    }
}

/// `200` with the body, or `304` when the client already holds this version.
fn answer(request: &HeaderMap, content_type: &'static str, etag: &str, body: &[u8]) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(body.to_vec()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A strong ETag from the bytes (FNV-1a, 64 bits: stable across builds and processes).
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// Text for HTML element content.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal safe inside an HTML `<script>` block: `<`, `>` and `&` are written as
/// `\u` escapes, so no value can close the block or open a comment; U+2028/U+2029 too.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(title: &str, ws_url: Option<&str>) -> WebPage {
        WebPage::new(&WebSettings {
            title: title.into(),
            ws_url: ws_url.map(str::to_owned),
            sip_domain: "example.com".into(),
        })
    }

    async fn body(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_settings_are_escaped_where_they_go() {
        let p = page("</script><b>&\"Team\"", Some("wss://sip.example.com/ws"));
        let resp = p.response("/", &HeaderMap::new()).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            resp.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        let html = body(resp).await;
        assert!(
            html.contains("<title>&lt;/script&gt;&lt;b&gt;&amp;&quot;Team&quot;</title>"),
            "{html}"
        );
        assert!(
            html.contains(r#"{"title":"\u003c/script\u003e\u003cb\u003e\u0026\"Team\"","wsUrl":"wss://sip.example.com/ws","sipDomain":"example.com"}"#),
            "{html}"
        );
        assert!(!html.contains("{{"), "every placeholder is filled");
        assert_eq!(
            html.matches("</script>").count(),
            3,
            "only the page's own script ends"
        );
    }

    #[tokio::test]
    async fn assets_have_types_etags_and_304() {
        let p = page("Conference list", None);
        for (path, ty) in [
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/conflist.js", "text/javascript; charset=utf-8"),
            ("/vendor/jssip.min.js", "text/javascript; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/vendor/LICENSES.txt", "text/plain; charset=utf-8"),
            ("/index.html", "text/html; charset=utf-8"),
        ] {
            let resp = p.response(path, &HeaderMap::new()).unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
            assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            let tag = resp.headers()[header::ETAG].clone();
            let mut again = HeaderMap::new();
            again.insert(header::IF_NONE_MATCH, tag.clone());
            let resp = p.response(path, &again).unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{path}");
            assert_eq!(resp.headers()[header::ETAG], tag);
            assert!(body(resp).await.is_empty());
        }
        assert!(p.response("/favicon.ico", &HeaderMap::new()).is_none());
        assert!(p.response("/vendor/", &HeaderMap::new()).is_none());
        let js = body(
            p.response("/vendor/jssip.min.js", &HeaderMap::new())
                .unwrap(),
        )
        .await;
        assert!(js.contains("JsSIP 3.13.8"));
    }
}
