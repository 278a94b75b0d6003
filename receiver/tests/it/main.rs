//! Integration tests of the receiver: the HTTP API against an in-process
//! server on 127.0.0.1:0 with a temporary store, and the `receiver` binary
//! as a black box. The storage rules run on both backends (see `store`).

mod api;
mod attacks;
mod background;
mod batch;
mod binary;
mod browser;
mod harness;
mod install;
mod limits;
mod links;
mod prometheus;
mod proxies;
mod status;
mod store;
mod summary;
mod trailer;
mod updates;
