//! The ingest rules of `service/convert.py` (delivery modes) and `cluster_client/validation.py`
//! (batch size, every event field), in the same order and with the same field paths and
//! descriptions. A description quoting user text holds it as a `Piece::Repr`, which the Python
//! boundary renders with `repr()`: Python's quoting and escaping rules then hold exactly.

/// The limits of `cluster_client/validation.py`.
pub const MAX_BATCH_EVENTS: usize = 10_000;
pub const MAX_EVENT_ID_BYTES: usize = 128;
pub const MAX_PROPERTIES: usize = 32;
pub const MAX_PROPERTY_KEY_CHARS: usize = 64;
pub const MAX_PROPERTY_VALUE_CHARS: usize = 256;
/// Quoted user text is cut to this many characters.
const QUOTED_CHARS: usize = 80;

const OPERATION_ADD: i32 = 1;
const OPERATION_REMOVE: i32 = 2;
const DELIVERY_UNSPECIFIED: i32 = 0;
const DELIVERY_ASYNC: i32 = 1;
const DELIVERY_SYNC: i32 = 2;
const AGG_MAX: i64 = 3;
const AGG_LATEST: i64 = 4;
const AGG_COUNT_UNIQUE: i64 = 5;

use crate::ingest_request::{Event, IngestRequest};

/// What validation needs of a registered metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRules {
    /// The `AggType` number (never 0: the registry holds normalised metrics).
    pub agg_type: i64,
    /// Declared dimensions: key and allowed values.
    pub dimensions: Vec<(String, Vec<String>)>,
}

/// Part of a message: plain text, or user text to be shown as Python's `repr()` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(String),
    Repr(&'a str),
}

pub type Description<'a> = Vec<Piece<'a>>;

fn text<'a>(s: impl Into<String>) -> Description<'a> {
    vec![Piece::Text(s.into())]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation<'a> {
    pub field: String,
    pub description: Description<'a>,
}

/// Why a request is refused: the error message and one violation per bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<'a> {
    pub message: Description<'a>,
    pub violations: Vec<Violation<'a>>,
}

/// Whether the batch is SYNC, or why the request is refused. `metric_of(i, event)` gives the rules
/// of the metric of event `i` (None: not registered).
pub fn check_request<'a, 'm>(
    request: &IngestRequest<'a>,
    metric_of: impl Fn(usize, &Event<'a>) -> Option<&'m MetricRules>,
) -> Result<bool, Rejection<'a>> {
    let sync = check_delivery(request)?;
    let n = request.events.len();
    if n == 0 {
        return Err(Rejection {
            message: text("a batch needs at least one event"),
            violations: vec![Violation { field: "events".into(), description: text("must not be empty") }],
        });
    }
    if n > MAX_BATCH_EVENTS {
        return Err(Rejection {
            message: text(format!("a batch holds at most {MAX_BATCH_EVENTS} events")),
            violations: vec![Violation {
                field: "events".into(),
                description: text(format!("at most {MAX_BATCH_EVENTS} events, got {n}")),
            }],
        });
    }
    let violations: Vec<Violation<'a>> = request
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, event)| event_violation(event, metric_of(i, event), i))
        .collect();
    if let Some(first) = violations.first() {
        let mut message = text(format!("invalid event: {}: ", first.field));
        message.extend(first.description.iter().cloned());
        if violations.len() > 1 {
            message.push(Piece::Text(format!(" (and {} more)", violations.len() - 1)));
        }
        return Err(Rejection { message, violations });
    }
    Ok(sync)
}

/// SYNC on the request or any event makes the batch SYNC; an unknown mode anywhere is refused.
fn check_delivery<'a>(request: &IngestRequest<'a>) -> Result<bool, Rejection<'a>> {
    let known = |d: i32| matches!(d, DELIVERY_UNSPECIFIED | DELIVERY_ASYNC | DELIVERY_SYNC);
    if !known(request.delivery) {
        let what = format!("unknown delivery mode {}", request.delivery);
        return Err(Rejection {
            message: text(what.clone()),
            violations: vec![Violation { field: "delivery".into(), description: text(what) }],
        });
    }
    let odd: Vec<Violation<'a>> = request
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| !known(e.delivery))
        .map(|(i, _)| Violation {
            field: format!("events[{i}].delivery"),
            description: text("unknown delivery mode"),
        })
        .collect();
    if !odd.is_empty() {
        return Err(Rejection { message: text("unknown delivery mode"), violations: odd });
    }
    Ok(request.delivery == DELIVERY_SYNC || request.events.iter().any(|e| e.delivery == DELIVERY_SYNC))
}

/// Python's `len(s)`: code points, counted only when the byte length could exceed `limit`.
fn chars_over(s: &str, limit: usize) -> bool {
    s.len() > limit && s.chars().count() > limit
}

/// Python's `s[:80]`.
fn quoted(s: &str) -> Piece<'_> {
    let end = s.char_indices().nth(QUOTED_CHARS).map_or(s.len(), |(i, _)| i);
    Piece::Repr(&s[..end])
}

/// The first rule event `index` breaks, in the order of `_event_violation` in validation.py.
fn event_violation<'a>(
    event: &Event<'a>,
    metric: Option<&MetricRules>,
    index: usize,
) -> Option<Violation<'a>> {
    // The path is formatted only for a violation: valid events allocate nothing here.
    let violation = |field: &str, description: Description<'a>| {
        Some(Violation { field: format!("events[{index}].{field}"), description })
    };
    if event.account_id == 0 {
        return violation("account_id", text("must be a non-zero uint64"));
    }
    if event.metric_code.is_empty() {
        return violation("metric_code", text("must not be empty"));
    }
    let Some(metric) = metric else {
        return violation(
            "metric_code",
            vec![Piece::Text("unknown metric ".into()), Piece::Repr(event.metric_code)],
        );
    };
    let op = if event.operation == 0 { OPERATION_ADD } else { event.operation };
    if op != OPERATION_ADD && op != OPERATION_REMOVE {
        return violation("operation", text(format!("unknown operation {op}")));
    }
    if op == OPERATION_REMOVE && (metric.agg_type == AGG_MAX || metric.agg_type == AGG_LATEST) {
        let name = if metric.agg_type == AGG_MAX { "MAX" } else { "LATEST" };
        return violation("operation", text(format!("REMOVE is not allowed for {name} metrics")));
    }
    if metric.agg_type != AGG_COUNT_UNIQUE && event.value >= 1 << 63 {
        return violation("value", text("must be below 2^63 (COUNT_UNIQUE member ids: 2^64)"));
    }
    if event.time_unix_nano < 0 {
        return violation("time_unix_nano", text("must be a non-negative int64 (0: server time)"));
    }
    if event.event_id.len() > MAX_EVENT_ID_BYTES {
        return violation("event_id", text(format!("must be at most {MAX_EVENT_ID_BYTES} bytes")));
    }
    let props = &event.properties;
    if props.is_empty() {
        return None;
    }
    if props.len() > MAX_PROPERTIES {
        return violation("properties", text(format!("at most {MAX_PROPERTIES} properties")));
    }
    // Properties are sorted by key: the first bad one is the smallest bad key, as validation.py picks.
    let bad_key = |k: &str| k.is_empty() || chars_over(k, MAX_PROPERTY_KEY_CHARS);
    if let Some(&(key, _)) = props.iter().find(|(k, v)| bad_key(k) || chars_over(v, MAX_PROPERTY_VALUE_CHARS))
    {
        if bad_key(key) {
            return violation(
                "properties",
                vec![Piece::Text("key ".into()), quoted(key), Piece::Text(" must be 1-64 characters".into())],
            );
        }
        return violation(
            &format!("properties[{key}]"),
            text(format!("must be at most {MAX_PROPERTY_VALUE_CHARS} characters")),
        );
    }
    for (key, allowed) in &metric.dimensions {
        let Ok(at) = props.binary_search_by(|(k, _)| (*k).cmp(key.as_str())) else { continue };
        let got = props[at].1;
        if !allowed.iter().any(|a| a == got) {
            // The dimension key is the metric's, not the request's: quote the event's copy of it.
            let key_in_request = props[at].0;
            return violation(
                &format!("properties[{key}]"),
                vec![
                    quoted(got),
                    Piece::Text(" is not an allowed value of dimension ".into()),
                    Piece::Repr(key_in_request),
                ],
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(account_id: u64, metric_code: &'static str) -> Event<'static> {
        Event { account_id, metric_code, ..Event::default() }
    }

    fn sum_metric() -> MetricRules {
        MetricRules { agg_type: 2, dimensions: vec![("region".into(), vec!["eu".into(), "us".into()])] }
    }

    fn fields(rejection: &Rejection<'_>) -> Vec<String> {
        rejection.violations.iter().map(|v| v.field.clone()).collect()
    }

    #[test]
    fn one_violation_per_bad_event_in_rule_order() {
        let metric = sum_metric();
        let mut bad_value = event(1, "m");
        bad_value.value = 1 << 63;
        let mut bad_op = event(1, "m");
        bad_op.operation = 9;
        let mut bad_dim = event(1, "m");
        bad_dim.properties = vec![("region", "mars")];
        let request = IngestRequest {
            events: vec![
                event(0, "m"),
                event(1, "nope"),
                bad_value,
                bad_op,
                event(1, "m"),
                bad_dim,
                event(1, ""),
            ],
            delivery: 0,
        };
        let rejection =
            check_request(&request, |_, e| (e.metric_code == "m").then_some(&metric)).unwrap_err();
        assert_eq!(
            fields(&rejection),
            [
                "events[0].account_id",
                "events[1].metric_code",
                "events[2].value",
                "events[3].operation",
                "events[5].properties[region]",
                "events[6].metric_code"
            ]
        );
        assert_eq!(
            rejection.message,
            vec![
                Piece::Text("invalid event: events[0].account_id: ".into()),
                Piece::Text("must be a non-zero uint64".into()),
                Piece::Text(" (and 5 more)".into()),
            ]
        );
    }

    #[test]
    fn delivery_rules_come_first_and_sync_anywhere_makes_the_batch_sync() {
        let metric = sum_metric();
        let lookup = |_: usize, _: &Event<'_>| Some(&metric);
        let mut sync_event = event(1, "m");
        sync_event.delivery = 2;
        let request = IngestRequest { events: vec![event(1, "m"), sync_event], delivery: 1 };
        assert_eq!(check_request(&request, lookup), Ok(true));
        let mut odd = event(0, "m");
        odd.delivery = 3;
        let request = IngestRequest { events: vec![odd], delivery: 0 };
        assert_eq!(fields(&check_request(&request, lookup).unwrap_err()), ["events[0].delivery"]);
        let request = IngestRequest { events: vec![], delivery: 0 };
        assert_eq!(fields(&check_request(&request, lookup).unwrap_err()), ["events"]);
    }

    #[test]
    fn oversize_text_is_measured_in_characters_and_event_ids_in_bytes() {
        let metric = MetricRules { agg_type: 1, dimensions: vec![] };
        let long_key: &'static str = Box::leak("é".repeat(64).into_boxed_str());
        let mut ok = event(1, "m");
        ok.properties = vec![(long_key, "v")];
        ok.event_id = Box::leak("a".repeat(128).into_boxed_str());
        let mut too_long_id = event(1, "m");
        too_long_id.event_id = Box::leak("é".repeat(65).into_boxed_str());
        let request = IngestRequest { events: vec![ok, too_long_id], delivery: 0 };
        let rejection = check_request(&request, |_, _| Some(&metric)).unwrap_err();
        assert_eq!(fields(&rejection), ["events[1].event_id"]);
    }
}
