//! Black-box tests of the `sender` binary against an in-process receiver on
//! 127.0.0.1:0, each in its own temporary folder.

// The receiver's own tests' in-process receiver.
#[path = "../../../receiver/tests/it/background.rs"]
mod background;
mod changes;
mod clock;
mod demo;
mod external;
mod faults;
mod harness;
mod install;
mod limits;
mod links;
mod output;
mod proxy;
mod refusals;
mod runs;
mod tls;
mod updates;
