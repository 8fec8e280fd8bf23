//! A webhook receiver that does nothing: it reads each request's body and answers `200` with
//! a made-up sequence, storing nothing.
//!
//! Why it exists: the ingest benchmark runs the load generator and the server under test on
//! the same cores, so the load generator's own cost caps every system's rate. Measured like
//! qistatus, on the same HTTP stack (hyper's HTTP/1.1 server on a multi-threaded tokio
//! runtime), this receiver is the ceiling: no webhook receiver that answers over HTTP can
//! acknowledge more per second on this machine with this load generator.
//!
//!     qistatus-null-receiver --http-addr 127.0.0.1:PORT
//!
//! It prints `listening on ADDRESS` once bound (port 0 picks a free one).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The "sequence" of the next answer.
static NEXT: AtomicU64 = AtomicU64::new(1);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = match (args.next().as_deref(), args.next()) {
        (Some("--http-addr"), Some(addr)) => addr,
        _ => {
            eprintln!("usage: qistatus-null-receiver --http-addr HOST:PORT");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("qistatus-null-receiver: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(bound) => println!("listening on {bound}"),
        Err(e) => {
            eprintln!("qistatus-null-receiver: cannot read its own address: {e}");
            std::process::exit(1);
        }
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

/// Reads the whole body, then answers as qistatus does for a stored webhook.
async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    request.into_body().collect().await?;
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    let body = format!(r#"{{"status":"stored","sequence":{sequence}}}"#);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
