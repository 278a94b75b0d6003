//! The fields of the human log format, written so that no value can pass
//! for more fields or another line. Values come from clients (paths, field
//! names, addresses forwarded by a proxy), and a device uploading a file
//! named `x outcome=stored device=************0000` must not forge fields of
//! its own upload line. (The JSON format escapes strings already.)
//!
//! - A string value is always Debug-quoted: `path="x outcome=stored"`, with
//!   `"`, `\` and control characters escaped.
//! - Any other value (a number, a `%display` or `?debug` one) is written
//!   bare only when it is a plain token, `[A-Za-z0-9]` and `-_.:/*+@[]`
//!   (`size=25`, `address=127.0.0.1:3500`, `code=ChecksumMismatch`), and
//!   Debug-quoted otherwise.
//! - The message is free text, but its control characters are escaped, so
//!   one event is one line whatever an error message quotes.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The human format's field formatter (`fmt().fmt_fields(QuotedFields)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct QuotedFields;

impl<'w> MakeVisitor<Writer<'w>> for QuotedFields {
    type Visitor = QuotedVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> Self::Visitor {
        QuotedVisitor { writer, first: true, result: Ok(()) }
    }
}

/// Writes one event's (or span's) fields.
#[derive(Debug)]
pub struct QuotedVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for QuotedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"), false);
    }
}

impl QuotedVisitor<'_> {
    fn write(&mut self, field: &Field, text: &str, is_string: bool) {
        let name = field.name();
        // Events from the `log` crate carry their metadata as `log.*`
        // fields, which the line shows already as its target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        self.result = self.result.and_then(|()| match name {
            "message" => text.chars().try_for_each(|c| {
                if c.is_control() { write!(self.writer, "{}", c.escape_default()) } else { self.writer.write_char(c) }
            }),
            _ if is_string || !is_plain(text) => write!(self.writer, "{name}={text:?}"),
            _ => write!(self.writer, "{name}={text}"),
        });
    }
}

/// Whether `text` reads as one value without quotes.
fn is_plain(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/*+@[]".contains(&b))
}

impl VisitOutput<fmt::Result> for QuotedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for QuotedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The fields part of the line `event` logs.
    fn logged(event: fn()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(QuotedFields)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = captured.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn values_are_quoted_unless_plain_and_messages_stay_on_one_line() {
        let cases: &[(fn(), &str)] = &[
            (|| tracing::info!(path = "2026/day.csv", "upload"), "upload path=\"2026/day.csv\"\n"),
            (
                || tracing::info!(path = "x outcome=stored device=************0000", outcome = "stored", "upload"),
                "upload path=\"x outcome=stored device=************0000\" outcome=\"stored\"\n",
            ),
            (|| tracing::info!(path = "a\"b\\c\nd", "m"), "m path=\"a\\\"b\\\\c\\nd\"\n"),
            (
                || tracing::info!(size = 25_u64, ok = true, code = ?std::cmp::Ordering::Less, "m"),
                "m size=25 ok=true code=Less\n",
            ),
            (
                || tracing::info!(address = %"127.0.0.1:3500", ids = %"/etc/logferry/ids.txt", "listening"),
                "listening address=127.0.0.1:3500 ids=/etc/logferry/ids.txt\n",
            ),
            (
                || tracing::info!(stored_as = %"x outcome=stored", file = %"", "m"),
                "m stored_as=\"x outcome=stored\" file=\"\"\n",
            ),
            (|| tracing::warn!("cannot: {}", "a\nb\u{1b}[31m"), "cannot: a\\nb\\u{1b}[31m\n"),
        ];
        for (event, expected) in cases {
            assert_eq!(logged(*event), *expected);
        }
    }
}
