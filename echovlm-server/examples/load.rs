//! A load generator for `echovlm-server`: throughput (requests/s, generated tokens/s) and
//! latency percentiles at several client concurrencies, against one or more servers.
//!
//! ```sh
//! cargo run --release -p echovlm-server --example load -- \
//!     --url http://127.0.0.1:8080 --concurrency 1,4,16 --requests 64
//! ```
//!
//! Give `--url` twice (a server with `--max-batch 8` and one with `--max-batch 1`, say) to
//! compare them in one run; each row then also shows its throughput relative to the first
//! URL's at the same concurrency. `--mixed` varies the requests: every second four stream,
//! and `max_tokens` cycles through a quarter, a half, three quarters and all of `--max-tokens`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use serde_json::json;

/// Measure an EchoVLM server's throughput and latency.
#[derive(Debug, Parser)]
struct Args {
    /// Server base URL (http only); repeat to compare servers.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Client concurrencies to measure, comma-separated.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// `max_tokens` of each request (greedy, `ignore_eos`, so every request generates this
    /// many tokens).
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// An image sent with every request (default: none, a text-only prompt).
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// The prompt.
    #[arg(long, default_value = "Describe the image.")]
    prompt: String,
    /// Requests sent before measuring, to warm the server up.
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    /// Mixed requests: streaming and not, with four different `max_tokens`.
    #[arg(long)]
    mixed: bool,
}

/// One kind of request the clients send.
struct Kind {
    body: Vec<u8>,
    stream: bool,
    /// Tokens a stream generates (`ignore_eos`): its `max_tokens`.
    tokens: u64,
}

struct Sample {
    latency: Duration,
    tokens: u64,
}

fn addr_of(url: &str) -> Result<SocketAddr, String> {
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?
        .trim_end_matches('/');
    host.to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

/// One POST over a fresh connection; the completion tokens of a 200 answer (for a stream, which
/// must end with `data: [DONE]`, its `max_tokens`).
fn post(addr: SocketAddr, kind: &Kind) -> Result<u64, String> {
    let body = &kind.body;
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).unwrap_or("");
    let body = &raw[split + 4..];
    if status != "200" {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(body).trim()
        ));
    }
    if kind.stream {
        return if String::from_utf8_lossy(body).contains("data: [DONE]") {
            Ok(kind.tokens)
        } else {
            Err("a stream did not end with data: [DONE]".into())
        };
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(v["usage"]["completion_tokens"].as_u64().unwrap_or(0))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

struct Row {
    rps: f64,
    tps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn run_level(
    addr: SocketAddr,
    kinds: &Arc<Vec<Kind>>,
    clients: usize,
    n: usize,
) -> Result<Row, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, kinds) = (next.clone(), kinds.clone());
            std::thread::spawn(move || -> Result<Vec<Sample>, String> {
                let mut out = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= n {
                        break;
                    }
                    let t = Instant::now();
                    let tokens = post(addr, &kinds[k % kinds.len()])?;
                    out.push(Sample {
                        latency: t.elapsed(),
                        tokens,
                    });
                }
                Ok(out)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.join().map_err(|_| "a client thread panicked")??);
    }
    let wall = start.elapsed().as_secs_f64();
    let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    lat.sort();
    let tokens: u64 = samples.iter().map(|s| s.tokens).sum();
    Ok(Row {
        rps: samples.len() as f64 / wall,
        tps: tokens as f64 / wall,
        p50: percentile(&lat, 50.0),
        p90: percentile(&lat, 90.0),
        p99: percentile(&lat, 99.0),
    })
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut content = vec![json!({"type": "text", "text": args.prompt})];
    if let Some(path) = &args.image {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let uri = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        content.insert(0, json!({"type": "image_url", "image_url": {"url": uri}}));
    }
    let kind = |max_tokens: usize, stream: bool| Kind {
        body: json!({
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
            "stream": stream,
        })
        .to_string()
        .into_bytes(),
        stream,
        tokens: max_tokens as u64,
    };
    let kinds: Vec<Kind> = if args.mixed {
        (0..8)
            .map(|k| kind((args.max_tokens * (1 + k % 4)).div_ceil(4), k >= 4))
            .collect()
    } else {
        vec![kind(args.max_tokens, false)]
    };
    let kinds = Arc::new(kinds);
    println!(
        "{} requests per level, max_tokens {}{}, {}",
        args.requests,
        args.max_tokens,
        if args.mixed {
            " (mixed: 1/4 to all of it, half of the requests streaming)"
        } else {
            ""
        },
        args.image
            .as_ref()
            .map_or("text only".to_string(), |p| format!(
                "image {}",
                p.display()
            ))
    );
    println!(
        "| server | clients | requests/s | tokens/s | p50 ms | p90 ms | p99 ms | vs first server |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut first: Vec<f64> = Vec::new();
    for (u, url) in args.url.iter().enumerate() {
        let addr = addr_of(url)?;
        for k in 0..args.warmup {
            post(addr, &kinds[k % kinds.len()])?;
        }
        for (i, &c) in args.concurrency.iter().enumerate() {
            let r = run_level(addr, &kinds, c.max(1), args.requests)?;
            if u == 0 {
                first.push(r.rps);
            }
            let rel = first
                .get(i)
                .map_or("".to_string(), |f| format!("{:.2}x", r.rps / f));
            println!(
                "| {url} | {c} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {rel} |",
                r.rps, r.tps, r.p50, r.p90, r.p99
            );
        }
    }
    Ok(())
}
