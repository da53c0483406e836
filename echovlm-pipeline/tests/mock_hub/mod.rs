//! A local stand-in for the Hugging Face Hub's HTTP API, as much of it as `hf-hub` 0.4's
//! blocking client uses: `GET /api/models/{repo}/revision/{rev}` (the commit and the file list)
//! and `GET /{repo}/resolve/{rev}/{file}` with `Range`, answered with `ETag`,
//! `X-Repo-Commit`, `Content-Range` and `Content-Length`. Repositories are local directories.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One repository: its files come from `dir`, its revisions all name `commit`.
#[derive(Clone)]
pub struct MockRepo {
    pub dir: PathBuf,
    pub commit: String,
    pub revisions: Vec<String>,
}

#[derive(Default)]
pub struct Counters {
    /// `/api/...` requests.
    pub info: AtomicUsize,
    /// `/resolve/` requests.
    pub files: AtomicUsize,
    /// The files served (paths after `resolve/{rev}/`), in order.
    pub served: Mutex<Vec<String>>,
    /// The `Range` headers of file requests that had one, with the file.
    pub ranges: Mutex<Vec<(String, String)>>,
}

pub struct MockHub {
    pub url: String,
    pub counters: Arc<Counters>,
}

/// The ETag the mock serves `bytes` with (the name of their blob in the cache).
pub fn etag(bytes: &[u8]) -> String {
    // FNV-1a, 64-bit: a stable content tag, as the hub's (sha256 or git) ETags are
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

fn decode(s: &str) -> String {
    s.replace("%2F", "/").replace("%2f", "/")
}

impl MockHub {
    /// Serves `repos` (`org/name` → repository) on an ephemeral port until the process ends.
    pub fn start(repos: BTreeMap<String, MockRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let repos = Arc::new(repos);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (repos, c) = (repos.clone(), c.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &repos, &c);
                });
            }
        });
        Self { url, counters }
    }
}

fn respond(
    mut s: &TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(out.as_bytes())?;
    if !head_only {
        s.write_all(body)?;
    }
    s.flush()
}

fn not_found(s: &TcpStream, what: &str) -> std::io::Result<()> {
    let body = serde_json::json!({ "error": what }).to_string();
    respond(
        s,
        "404 Not Found",
        &[
            ("Content-Type", "application/json".into()),
            ("X-Error-Code", "RepoNotFound".into()),
        ],
        body.as_bytes(),
        false,
    )
}

fn handle(
    conn: TcpStream,
    repos: &BTreeMap<String, MockRepo>,
    c: &Counters,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";

    if let Some(rest) = path.strip_prefix("/api/models/") {
        c.info.fetch_add(1, Ordering::SeqCst);
        // {org}/{name}/revision/{rev}
        let Some((repo, rev)) = rest.split_once("/revision/") else {
            return not_found(&conn, "bad api path");
        };
        let rev = decode(rev);
        let Some(r) = repos.get(repo).filter(|r| r.revisions.contains(&rev)) else {
            return not_found(&conn, "Repository not found");
        };
        let mut siblings = Vec::new();
        for e in std::fs::read_dir(&r.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            siblings.push(serde_json::json!({ "rfilename": name }));
        }
        let body = serde_json::json!({
            "id": repo, "modelId": repo, "sha": r.commit, "siblings": siblings,
        })
        .to_string();
        return respond(
            &conn,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
            head_only,
        );
    }

    // /{org}/{name}/resolve/{rev}/{file}
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return not_found(&conn, "no such route");
    };
    c.files.fetch_add(1, Ordering::SeqCst);
    let Some((rev, file)) = rest.split_once('/') else {
        return not_found(&conn, "no file");
    };
    let rev = decode(rev);
    let Some(r) = repos.get(repo).filter(|r| r.revisions.contains(&rev)) else {
        return not_found(&conn, "Repository not found");
    };
    if file.contains("..") {
        return not_found(&conn, "Entry not found");
    }
    let Ok(bytes) = std::fs::read(r.dir.join(file)) else {
        return not_found(&conn, "Entry not found");
    };
    c.served.lock().unwrap().push(file.to_string());
    if let Some(r) = &range {
        c.ranges.lock().unwrap().push((file.to_string(), r.clone()));
    }
    let size = bytes.len();
    let mut headers = vec![
        ("ETag", format!("\"{}\"", etag(&bytes))),
        ("X-Repo-Commit", r.commit.clone()),
        ("Accept-Ranges", "bytes".into()),
        ("Content-Type", "application/octet-stream".into()),
    ];
    let Some(spec) = range.as_deref().and_then(|r| r.strip_prefix("bytes=")) else {
        return respond(&conn, "200 OK", &headers, &bytes, head_only);
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        b.parse::<usize>()
            .unwrap_or(size)
            .min(size.saturating_sub(1))
    };
    if start >= size {
        headers.push(("Content-Range", format!("bytes */{size}")));
        return respond(&conn, "416 Range Not Satisfiable", &headers, b"", head_only);
    }
    headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
    respond(
        &conn,
        "206 Partial Content",
        &headers,
        &bytes[start..=end],
        head_only,
    )
}
