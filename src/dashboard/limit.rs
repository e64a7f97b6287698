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

/// API requests that query MongoDB at once. A page asks for the node list and one chart per
/// node every few seconds, and a healthy query takes milliseconds, so this serves several
/// pages at once. It is below the driver's connection pool (10 by default), so that requests
/// beyond it wait here, briefly and then answered, rather than inside the driver until the
/// query timeout, piling up without bound.
pub const MAX_QUERYING: usize = 8;

/// How long a request waits for its turn to query before it is answered 503: a little longer
/// than a healthy query takes, well under the page's patience.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The turns at querying MongoDB, shared by the API's routes.
pub type Turns = Arc<Semaphore>;

/// A fresh set of [`MAX_QUERYING`] turns.
pub fn turns() -> Turns {
    Arc::new(Semaphore::new(MAX_QUERYING))
}

/// Middleware for the routes that query MongoDB: a request waits up to [`QUEUE_WAIT`] for one
/// of the turns, else it is answered 503 with the reason. The turn is held until the answer's
/// body is sent, since the CSV's body reads from its cursor as it goes.
pub async fn take_turn(State(turns): State<Turns>, req: Request, next: Next) -> Response {
    let permit = match tokio::time::timeout(QUEUE_WAIT, turns.acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            return ApiError::Busy(format!(
                "{MAX_QUERYING} requests are querying the database already; try again in a moment"
            ))
            .into_response()
        }
    };
    next.run(req).await.map(|body| {
        Body::new(Holding {
            body,
            _permit: permit,
        })
    })
}

/// A body that holds a turn until it is sent or dropped.
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
