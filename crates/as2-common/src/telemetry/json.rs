//! JSON log lines that name the trace they belong to.
//!
//! [`TraceIdJson`] wraps `tracing_subscriber`'s JSON formatter and puts
//! `trace_id` and `span_id` (lowercase hex, as in `traceparent`) first in every
//! line written while an OpenTelemetry span is active, so a log search by trace
//! id finds the lines of one message across all services.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format with `trace_id` and `span_id` added.
pub struct TraceIdJson {
    inner: Format<Json, SystemTime>,
}

impl TraceIdJson {
    /// Wraps the JSON format `inner`.
    pub fn new(inner: Format<Json, SystemTime>) -> Self {
        Self { inner }
    }
}

impl<S, N> FormatEvent<S, N> for TraceIdJson
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The OpenTelemetry layer makes the entered span's context current.
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        let separator = if rest.starts_with('}') { "" } else { "," };
        write!(
            writer,
            "{{\"trace_id\":\"{}\",\"span_id\":\"{}\"{separator}{rest}",
            span_context.trace_id(),
            span_context.span_id(),
        )
    }
}
