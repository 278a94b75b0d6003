//! A receiver serving on a thread of its own, for the tests of both
//! binaries (the sender's include this file): opened and served on that
//! thread's runtime, at the address its configuration names.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use logferry_receiver::Config;

pub type Failure = Box<dyn Error + Send + Sync>;

#[derive(Debug)]
pub struct BackgroundReceiver {
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<Result<(), Failure>>>,
}

impl BackgroundReceiver {
    /// Binds `config`'s address (port 0 picks a free one), then opens the
    /// receiver and serves; an error says why it could not start.
    pub fn start(config: Config) -> Result<Self, Failure> {
        let listener = TcpListener::bind(config.listen())?;
        let addr = listener.local_addr()?;
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<(), Failure> {
            actix_web::rt::System::new().block_on(async move {
                let ready = logferry_receiver::open(&config).await?;
                let server = logferry_receiver::run(listener, ready.state, ready.tls)?;
                let _ = handle_tx.send(server.handle());
                Ok(server.await?)
            })
        });
        match handle_rx.recv() {
            Ok(handle) => Ok(Self { addr, handle, thread: Some(thread) }),
            // The thread ended before serving: its result says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err("the receiver thread stopped before serving".into()),
            },
        }
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub fn stop(mut self) -> Result<(), Failure> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), Failure> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        // The stop command is sent when `stop` is called; its future only
        // reports completion, which joining the thread waits for anyway (and
        // awaiting it here would need a runtime, which tests already run in).
        drop(self.handle.stop(true));
        thread.join().map_err(|_| "the receiver thread panicked")?
    }
}

impl Drop for BackgroundReceiver {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}
