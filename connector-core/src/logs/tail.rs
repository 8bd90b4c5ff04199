//! The in-memory tail of the log: the last lines, and a broadcast of each new one, for the
//! GUI's live log view.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Capacity of the live feed; a view that falls behind gets `Lagged` and re-reads the tail.
const FEED_CAPACITY: usize = 512;
/// Longest line kept; longer ones are cut (a log line is no place for a body).
const MAX_LINE: usize = 4096;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// When, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The spans it happened in, `tunnel{endpoint=shop}`, outermost first; may be empty.
    pub context: String,
    /// The message and its fields, `tunnel lost; reconnecting error=...`.
    pub message: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:>5} ", self.time, self.level)?;
        if !self.context.is_empty() {
            write!(f, "{}: ", self.context)?;
        }
        write!(f, "{}: {}", self.target, self.message)
    }
}

/// The last lines and their live feed. Cheap to clone; clones share the lines.
#[derive(Clone)]
pub struct LogTail {
    inner: Arc<TailInner>,
}

struct TailInner {
    capacity: usize,
    lines: Mutex<VecDeque<LogLine>>,
    feed: broadcast::Sender<LogLine>,
}

impl LogTail {
    /// A tail keeping the last `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Self {
            inner: Arc::new(TailInner {
                capacity: capacity.max(1),
                lines: Mutex::new(VecDeque::new()),
                feed,
            }),
        }
    }

    /// The kept lines, oldest first.
    pub fn recent(&self) -> Vec<LogLine> {
        self.lock().iter().cloned().collect()
    }

    /// Every line from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.inner.feed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LogLine>> {
        self.inner.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: LogLine) {
        {
            let mut lines = self.lock();
            if lines.len() == self.inner.capacity {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        let _ = self.inner.feed.send(line);
    }
}

/// A `tracing` layer feeding a [`LogTail`].
pub struct TailLayer {
    tail: LogTail,
}

impl TailLayer {
    /// A layer feeding `tail`.
    pub fn new(tail: LogTail) -> Self {
        Self { tail }
    }
}

/// A span's fields as text, kept in the span's extensions.
struct SpanFields(String);

/// Writes fields as `name=value`, the message first and bare.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.0.len() >= MAX_LINE {
            return;
        }
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl<S> Layer<S> for TailLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut text = String::new();
        attrs.record(&mut Fields(&mut text));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(text));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(SpanFields(text)) = ext.get_mut::<SpanFields>() {
                values.record(&mut Fields(text));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut message = String::new();
        event.record(&mut Fields(&mut message));
        let mut context = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if !context.is_empty() {
                    context.push(':');
                }
                context.push_str(span.name());
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    if !f.is_empty() {
                        let _ = write!(context, "{{{f}}}");
                    }
                }
            }
        }
        let meta = event.metadata();
        self.tail.push(LogLine {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            level: meta.level().to_string(),
            target: meta.target().to_string(),
            context: cut(context),
            message: cut(message),
        });
    }
}
