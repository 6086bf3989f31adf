//! Forwards the plugin's `tracing` events to the host.
//!
//! A `cdylib` links its own copy of `tracing`, whose global dispatcher is not the host's. Without
//! this layer, every event of the plugin would go nowhere. It is installed once per library.

use crate::{
    ffi::{TraceEvent, TraceLevel, TracingSinkBox},
    KeyValue,
};
use abi_stable::std_types::RVec;
use std::fmt::Write as _;
use std::sync::OnceLock;
use tracing::{field::Field, span, Event, Level, Subscriber};
use tracing_subscriber::{filter::LevelFilter, layer::Context, prelude::*, registry::LookupSpan, Layer};

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the forwarding subscriber, and a panic hook that reports panics as error events.
pub(super) fn install(sink: TracingSinkBox, max_level: TraceLevel) {
    INSTALLED.get_or_init(|| {
        let filter = match max_level {
            TraceLevel::Trace => LevelFilter::TRACE,
            TraceLevel::Debug => LevelFilter::DEBUG,
            TraceLevel::Info => LevelFilter::INFO,
            TraceLevel::Warn => LevelFilter::WARN,
            TraceLevel::Error => LevelFilter::ERROR,
        };
        let subscriber = tracing_subscriber::registry().with(ForwardLayer { sink }.with_filter(filter));
        if tracing::subscriber::set_global_default(subscriber).is_ok() {
            std::panic::set_hook(Box::new(|info| {
                let location = info.location().map(|at| format!("{}:{}", at.file(), at.line())).unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic.location = %location, "plugin panicked: {message}");
            }));
        }
    });
}

struct ForwardLayer {
    sink: TracingSinkBox,
}

/// Fields recorded on a span, kept in the span's extensions.
struct SpanFields(Vec<KeyValue>);

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: Vec<KeyValue>,
}

impl tracing::field::Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push(KeyValue::new(field.name(), value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push(KeyValue::new(field.name(), format!("{value:?}")));
        }
    }
}

impl<S> Layer<S> for ForwardLayer
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut collector = FieldCollector::default();
        attrs.record(&mut collector);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collector.fields));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let mut collector = FieldCollector::default();
        values.record(&mut collector);
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                fields.0.extend(collector.fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut collector = FieldCollector::default();
        event.record(&mut collector);
        let mut fields = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.0.iter().cloned());
                }
            }
        }
        fields.extend(collector.fields);
        let metadata = event.metadata();
        self.sink.event(TraceEvent {
            level: level_of(*metadata.level()),
            target: metadata.target().into(),
            message: collector.message.into(),
            fields: RVec::from(fields),
        });
    }
}

fn level_of(level: Level) -> TraceLevel {
    match level {
        Level::TRACE => TraceLevel::Trace,
        Level::DEBUG => TraceLevel::Debug,
        Level::INFO => TraceLevel::Info,
        Level::WARN => TraceLevel::Warn,
        Level::ERROR => TraceLevel::Error,
    }
}
