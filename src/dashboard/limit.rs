//! What the dashboard allows its clients: connections served at once, and API requests that
//! query MongoDB at once. The listener's own protections (header timeout, connection cap) are
//! [`crate::listener`]'s; this adds the bound on database work.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::api::ApiError;

/// Connections served at once; more wait in the kernel's backlog. A browser opens up to six
/// to one server, so this serves dozens of viewers, while a client that opens hundreds of
/// connections cannot take every file descriptor: it stays well under the 1024 a process gets
/// by default, beside the driver's connections to MongoDB.
pub const MAX_CONNECTIONS: usize = 512;

/// API requests that query MongoDB at once. A page asks for one chart per node every few
/// seconds, and a healthy query takes milliseconds, so this serves several pages at once. Each
/// request runs one query at a time. The node list takes no turn: one shared sweep reads it for
/// every page, [`super::store::NODE_QUERIES`] queries at once. So at most 10 queries, the
/// driver's pool by default, and requests beyond these wait here, briefly and then answered,
/// rather than inside the driver until the query timeout, piling up without bound. The health
/// check takes none either, so that a probe says whether the database answers, not whether
/// pages are busy: one check runs at a time, for every probe that comes meanwhile.
pub const MAX_QUERYING: usize = 8;

/// CSV downloads sent at once. A download's body reads from its cursor as the client takes
/// it, for as long as the client takes: its slot is held until the body is sent, and only
/// other downloads wait for it, not the API's other requests.
pub const MAX_DOWNLOADS: usize = 2;

/// How long a request waits for its turn to query before it is answered 503: a little longer
/// than a healthy query takes, well under the page's patience.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The route whose answer streams from the database: [`MAX_DOWNLOADS`] apply to it.
pub const CSV_PATH: &str = "/api/csv";

/// The turns at querying MongoDB, shared by the API's routes, and the download slots.
#[derive(Debug, Clone)]
pub struct Turns {
    querying: Arc<Semaphore>,
    downloading: Arc<Semaphore>,
}

/// A fresh set of [`MAX_QUERYING`] turns and [`MAX_DOWNLOADS`] download slots.
pub fn turns() -> Turns {
    Turns {
        querying: Arc::new(Semaphore::new(MAX_QUERYING)),
        downloading: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
    }
}

/// One of `slots`, waiting up to [`QUEUE_WAIT`] for it.
async fn wait_for(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    match tokio::time::timeout(QUEUE_WAIT, slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => Some(p),
        _ => None,
    }
}

/// Middleware for the routes that query MongoDB: a request waits up to [`QUEUE_WAIT`] for one
/// of the turns, else it is answered 503 with the reason, and gives the turn back once its
/// handler has answered: a client slow to read the answer holds no turn. A CSV download first
/// takes one of the download slots, the same way, and holds that until its body is sent or
/// dropped, since the body reads from its cursor as it goes.
pub async fn take_turn(State(turns): State<Turns>, req: Request, next: Next) -> Response {
    let download = if req.uri().path() == CSV_PATH {
        match wait_for(&turns.downloading).await {
            Some(p) => Some(p),
            None => {
                return ApiError::Busy(format!(
                    "{MAX_DOWNLOADS} CSV downloads are under way already; try again when one has finished"
                ))
                .into_response()
            }
        }
    } else {
        None
    };
    let Some(turn) = wait_for(&turns.querying).await else {
        return ApiError::Busy(format!(
            "{MAX_QUERYING} requests are querying the database already; try again in a moment"
        ))
        .into_response();
    };
    let response = next.run(req).await;
    drop(turn);
    match download {
        Some(permit) => response.map(|body| {
            Body::new(Holding {
                body,
                _permit: permit,
            })
        }),
        None => response,
    }
}

/// A body that holds a download slot until it is sent or dropped.
struct Holding {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// An answer whose body sends one chunk and then never ends, as a download to a client
    /// that stopped reading does.
    async fn endless() -> Body {
        let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("a")) });
        Body::from_stream(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ))
    }

    /// Serve `/api/series` and the CSV route (endless bodies) and `/api/nodes` ("ok") behind
    /// the turns, over a real socket; its address.
    async fn serve() -> std::net::SocketAddr {
        let app = Router::new()
            .route("/api/series", get(endless))
            .route(CSV_PATH, get(endless))
            .route("/api/nodes", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(turns(), take_turn));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::listener::serve(
            listener,
            hyper_util::service::TowerToHyperService::new(app),
            crate::listener::Limits::new(64),
            std::future::pending(),
        ));
        addr
    }

    /// Send a GET and read until its status line has come; the connection stays open.
    async fn get_status(addr: std::net::SocketAddr, path: &str) -> (u16, TcpStream) {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .unwrap();
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        let status = String::from_utf8_lossy(&got[9..12]).parse().unwrap();
        (status, c)
    }

    // Answers still being sent hold no turn at querying: twice as many requests as there are
    // turns, each with a client that never reads its endless answer, leave the node list
    // answering. (Held until the body was sent, they took every turn, and it was 503.)
    #[tokio::test]
    async fn a_client_slow_to_read_holds_no_turn() {
        let addr = serve().await;
        let mut open = Vec::new();
        for _ in 0..MAX_QUERYING * 2 {
            let (status, c) = get_status(addr, "/api/series").await;
            assert_eq!(status, 200);
            open.push(c);
        }
        assert_eq!(get_status(addr, "/api/nodes").await.0, 200);
    }

    // CSV downloads, which read the database as they are sent, hold a download slot until
    // they end: the one past MAX_DOWNLOADS waits, then is answered 503, and the other routes
    // go on.
    #[tokio::test]
    async fn downloads_beyond_their_slots_are_answered_busy() {
        let addr = serve().await;
        let mut open = Vec::new();
        for _ in 0..MAX_DOWNLOADS {
            let (status, c) = get_status(addr, CSV_PATH).await;
            assert_eq!(status, 200);
            open.push(c);
        }
        let asked = std::time::Instant::now();
        assert_eq!(get_status(addr, CSV_PATH).await.0, 503);
        assert!(asked.elapsed() >= QUEUE_WAIT - Duration::from_millis(100));
        assert_eq!(get_status(addr, "/api/nodes").await.0, 200);
        drop(open);
    }
}
