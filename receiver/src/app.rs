//! Building the HTTP application and running it on a bound listener.

use std::io;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};
use logferry_common::wire::endpoint;
use rustls::ServerConfig;

use crate::state::AppState;
use crate::store::{AnyStore, Store};
use crate::{handlers, status};

/// Registers every route; the binary and the tests share it.
pub fn configure<S: Store>(cfg: &mut web::ServiceConfig, state: web::Data<AppState<S>>) {
    let wrong_method = || web::to(handlers::method_not_allowed);
    cfg.app_data(state)
        .service(web::resource(endpoint::HEALTH).route(web::get().to(handlers::health)).default_service(wrong_method()))
        .service(
            web::resource(endpoint::AUTH_CHECK)
                .route(web::get().to(handlers::auth_check::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::UPLOAD)
                .route(web::post().to(handlers::upload::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::UPLOAD_BATCH)
                .route(web::post().to(handlers::upload_batch::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::UPLOAD_OFFSET)
                .route(web::post().to(handlers::upload_offset::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::UPDATE_MANIFEST)
                .route(web::post().to(handlers::update_manifest::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(format!("{}/{{sha256}}", endpoint::UPDATE_CONTENT))
                .route(web::get().to(handlers::update_content::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::UPDATE_REPORT)
                .route(web::post().to(handlers::update_report::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::STATUS_PAGE)
                .route(web::get().to(status::page::<S>))
                .default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::DEVICES).route(web::get().to(status::devices::<S>)).default_service(wrong_method()),
        )
        .service(
            web::resource(endpoint::METRICS).route(web::get().to(status::metrics::<S>)).default_service(wrong_method()),
        )
        .default_service(web::to(handlers::not_found));
}

/// Serves on an already-bound listener, so callers (and tests binding port 0)
/// know the address before the first request; HTTPS when `tls` is given.
pub fn run(listener: TcpListener, state: AppState<AnyStore>, tls: Option<ServerConfig>) -> io::Result<Serving> {
    let head_timeout = state.limits.head_timeout;
    let fleet_refresh = state.fleet_refresh;
    let state = web::Data::new(state);
    actix_web::rt::spawn(refresh_summary(state.clone(), fleet_refresh.is_some()));
    actix_web::rt::spawn(every_second(state.clone(), |state| state.ids.refresh(), "checking the ids file for edits"));
    if state.publish.is_some() {
        let scan = |state: &AppState<AnyStore>| state.publish.iter().for_each(|publish| publish.scan());
        actix_web::rt::spawn(every_second(state.clone(), scan, "scanning the publish folder"));
    }
    if state.store.keeps_partials() {
        actix_web::rt::spawn(expire_partials(state.clone()));
    }
    let served = state.clone();
    let server = HttpServer::new(move || {
        let state = served.clone();
        App::new().wrap(from_fn(timed::<AnyStore>)).configure(move |cfg| configure(cfg, state))
    })
    .client_request_timeout(head_timeout);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    Ok(Serving { server: server.run(), state })
}

/// A running server; awaiting it waits for it to stop, then closes this
/// receiver's record in the fleet summary (so no other receiver takes it
/// for a crashed one's).
pub struct Serving {
    server: Server,
    state: web::Data<AppState<AnyStore>>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl Serving {
    /// Stops it (see [`Server::handle`]).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }
}

impl IntoFuture for Serving {
    type Output = io::Result<()>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = io::Result<()>>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.server.await?;
            // Not closed, the record is taken for a crashed receiver's in a
            // few refreshes, and the summary rebuilt: nothing is lost.
            if let Err(err) = self.state.summary.close(&self.state.fleet).await {
                tracing::warn!("cannot close this receiver's part of the fleet summary: {err}");
            }
            Ok(())
        })
    }
}

/// Times every request for the latency histogram, labelled by its route
/// pattern (never the client's path, which would let clients grow the
/// label set).
async fn timed<S: Store>(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let response = next.call(request).await?;
    if let Some(state) = response.request().app_data::<web::Data<AppState<S>>>() {
        let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
        state.metrics.request_done(&route, started.elapsed());
    }
    Ok(response)
}

/// How often the ids file and the publish folder are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Runs `step` (applying edits of the ids file, deriving new devices' keys;
/// scanning the publish folder, hashing what changed) every second on a
/// blocking thread, so that no request ever waits for it; it ends with the
/// server's runtime.
async fn every_second<S: Store>(state: web::Data<AppState<S>>, step: fn(&AppState<S>), what: &'static str) {
    loop {
        actix_web::rt::time::sleep(WATCH_EVERY).await;
        let state = state.clone();
        if web::block(move || step(&state)).await.is_err() {
            tracing::error!("{what} failed; changes apply after a restart");
            return;
        }
    }
}

/// Rewrites this receiver's record in the fleet summary now and then and,
/// with `take_others`, re-reads the others', so that receivers sharing one
/// store all show every device's uploads; it ends with the server's runtime.
async fn refresh_summary(state: web::Data<AppState<AnyStore>>, take_others: bool) {
    let every = state.summary_every;
    loop {
        actix_web::rt::time::sleep(every).await;
        if let Err(err) = state.summary.refresh(&state.store, &state.fleet, take_others).await {
            tracing::warn!("cannot refresh the fleet status: {err}");
        }
    }
}

/// Removes what cut-off uploads left once it is older than the partial
/// TTL, looking a few times per TTL (at most hourly); it ends with the
/// server's runtime.
async fn expire_partials<S: Store>(state: web::Data<AppState<S>>) {
    let ttl = state.limits.partial_ttl;
    let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600));
    loop {
        match state.store.expire_partials(ttl).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed partial uploads older than --partial-ttl"),
            Err(err) => tracing::warn!("cannot remove expired partial uploads: {err}"),
        }
        actix_web::rt::time::sleep(every).await;
    }
}
