//! `conflist admin …`: calls the server's JSON admin API over plain HTTP/1.1 (the admin port
//! binds loopback by default; put TLS in front of it to reach it from elsewhere).

use crate::{AuthFailed, Unreachable};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The largest answer read.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// Sends `method path` to the admin base URL `http://host:port` with the token; the JSON body.
pub(crate) async fn call(base: &str, token: &str, method: &str, path: &str) -> Result<Value> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("--admin {base}: only http://host:port is supported"))?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("--admin {base}: expected http://host:port");
    }
    let mut stream = tokio::time::timeout(
        crate::sip_client::ANSWER_TIMEOUT,
        TcpStream::connect(authority),
    )
    .await
    .map_err(|_| anyhow!(Unreachable(format!("{base}: connect timed out"))))?
    .map_err(|e| anyhow!(Unreachable(format!("{base}: {e}"))))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Accept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        (&mut stream).take(MAX_RESPONSE).read_to_end(&mut raw).await
    };
    tokio::time::timeout(crate::sip_client::ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!(Unreachable(format!("{base}: no answer in time"))))?
        .map_err(|e| anyhow!(Unreachable(format!("{base}: {e}"))))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{base}: not an HTTP answer"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{base}: not an HTTP answer"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    match status {
        200..=299 => serde_json::from_str(&body).with_context(|| format!("{base}: not JSON")),
        401 => bail!(AuthFailed("the admin token was refused (401)".into())),
        404 => bail!(
            "{base}{path}: 404 (is the server started with --admin-token-file, and is this its admin port?)"
        ),
        _ => bail!("{base}{path}: HTTP {status}: {}", body.trim()),
    }
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The subscriptions answer as a table.
pub(crate) fn subscriptions_table(v: &Value) -> String {
    let header = [
        "ID",
        "USER",
        "PROXY",
        "SINCE",
        "EXPIRES",
        "VERSION",
        "DELIVERED",
    ];
    let subs = v["subscriptions"].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            [
                "id",
                "user",
                "proxy",
                "since",
                "expires",
                "version",
                "last_delivered",
            ]
            .iter()
            .map(|k| text(&s[*k]))
            .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let l: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(l.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out.push_str(&format!("({} subscriptions)", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
