//! The transactional outbox of the branch database, read from its logical replication
//! messages ([`crate::pgoutput`]): rows inserted into a Debezium-compatible outbox table
//! (`id`, `aggregatetype`, `aggregateid`, `type`, `payload`) become events for topic
//! `outbox.event.<aggregatetype>`, keyed by `aggregateid`, with `id` in a header.
//! A row that cannot be one (a required column null, an `aggregatetype` that makes no topic
//! name) must not stop the rows behind it, nor vanish: it goes to [`INVALID_TOPIC`] with
//! what it has and the reason in the `clk-outbox-error` header, counted, and reaches the hub
//! like any other event, where an operator sees it.
//!
//! [`Outbox`] is a pure state machine fed one message at a time; a committed transaction's
//! events come out together with the transaction's end LSN, which the gateway fsyncs with
//! them before it advances the replication slot. A transaction that ends at or below the
//! LSN the gateway last buffered is skipped: after a PostgreSQL crash the slot may be back
//! where it was before the last advance, and those transactions are already in the buffer.

use std::collections::HashMap;

use bytes::Bytes;

use crate::pgoutput::{Column, Lsn, Message, Value};

/// The outbox table's columns, by their Debezium names.
const COLUMNS: [&str; 5] = ["id", "aggregatetype", "aggregateid", "type", "payload"];

/// Where rows that cannot be events go (the outbox's dead letters).
pub const INVALID_TOPIC: &str = "outbox.invalid";
/// The header saying why a row went to [`INVALID_TOPIC`].
pub const INVALID_HEADER: &str = "clk-outbox-error";

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: Bytes,
    pub aggregate_type: String,
    pub aggregate_id: Bytes,
    pub event_type: Bytes,
    pub payload: Option<Bytes>,
    /// Why the row is not a valid event (it goes to [`INVALID_TOPIC`]).
    pub invalid: Option<String>,
}

impl OutboxEvent {
    /// Debezium's outbox event router's topic, and why the event goes to [`INVALID_TOPIC`]
    /// instead when it does.
    pub fn route(&self) -> (String, Option<String>) {
        if let Some(why) = &self.invalid {
            return (INVALID_TOPIC.into(), Some(why.clone()));
        }
        let topic = format!("outbox.event.{}", self.aggregate_type);
        match broker::topics::validate_name(&topic) {
            Ok(()) => (topic, None),
            Err(e) => (
                INVALID_TOPIC.into(),
                Some(format!("aggregatetype makes no topic name: {e}")),
            ),
        }
    }
}

/// A committed transaction's outbox events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Where the slot may advance to once these events are buffered.
    pub end_lsn: Lsn,
    pub events: Vec<OutboxEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("an insert into relation {0} before its description")]
    UnknownRelation(u32),
    #[error("the outbox table has no column {0:?}")]
    MissingColumn(&'static str),
    #[error("outbox row: column {column:?} is {why}")]
    BadValue {
        column: &'static str,
        why: &'static str,
    },
    #[error("a change outside a transaction")]
    NoTransaction,
}

/// Reads one outbox table's events out of the replication messages.
pub struct Outbox {
    namespace: String,
    table: String,
    /// Relation oid -> the positions of the outbox columns, for the outbox table only
    /// (other relations map to `None`).
    relations: HashMap<u32, Option<[usize; 5]>>,
    /// Transactions ending at or below this are already buffered.
    buffered_through: Lsn,
    current: Option<Vec<OutboxEvent>>,
    /// Committed transactions skipped because they were buffered already.
    redelivered: u64,
}

impl Outbox {
    pub fn new(namespace: &str, table: &str, buffered_through: Lsn) -> Outbox {
        Outbox {
            namespace: namespace.into(),
            table: table.into(),
            relations: HashMap::new(),
            buffered_through,
            current: None,
            redelivered: 0,
        }
    }

    /// Feed one message; a committed transaction's events (possibly none) at its commit.
    pub fn feed(&mut self, message: Message) -> Result<Option<Committed>, OutboxError> {
        match message {
            Message::Begin { .. } => self.current = Some(Vec::new()),
            Message::Relation {
                oid,
                namespace,
                name,
                columns,
            } => {
                let ours = namespace == self.namespace && name == self.table;
                let positions = if ours {
                    Some(positions(&columns)?)
                } else {
                    None
                };
                self.relations.insert(oid, positions);
            }
            Message::Insert { relation, row } => {
                let positions = self
                    .relations
                    .get(&relation)
                    .ok_or(OutboxError::UnknownRelation(relation))?;
                let current = self.current.as_mut().ok_or(OutboxError::NoTransaction)?;
                if let Some(p) = positions {
                    current.push(event(&row, p).unwrap_or_else(|e| invalid(&row, p, &e)));
                }
            }
            Message::Commit { end_lsn, .. } => {
                let events = self.current.take().ok_or(OutboxError::NoTransaction)?;
                if end_lsn <= self.buffered_through {
                    self.redelivered += 1;
                    return Ok(None);
                }
                return Ok(Some(Committed { end_lsn, events }));
            }
            Message::Logical { .. } | Message::Other(_) => {}
        }
        Ok(None)
    }

    /// Transactions the slot delivered again and that were skipped.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    /// The gateway fsynced a transaction's events with `end_lsn`.
    pub fn buffered(&mut self, end_lsn: Lsn) {
        assert!(
            end_lsn >= self.buffered_through,
            "the buffered LSN only grows"
        );
        self.buffered_through = end_lsn;
    }
}

fn positions(columns: &[Column]) -> Result<[usize; 5], OutboxError> {
    let mut out = [0; 5];
    for (slot, name) in out.iter_mut().zip(COLUMNS) {
        *slot = columns
            .iter()
            .position(|c| c.name == name)
            .ok_or(OutboxError::MissingColumn(name))?;
    }
    Ok(out)
}

fn event(row: &[Value], p: &[usize; 5]) -> Result<OutboxEvent, OutboxError> {
    let get = |i: usize| -> Result<Option<Bytes>, OutboxError> {
        let column = COLUMNS[i];
        match row.get(p[i]) {
            None => Err(OutboxError::BadValue {
                column,
                why: "missing from the row",
            }),
            Some(Value::Null) => Ok(None),
            Some(Value::Text(b) | Value::Binary(b)) => Ok(Some(b.clone())),
            Some(Value::Unchanged) => Err(OutboxError::BadValue {
                column,
                why: "an unchanged TOAST value",
            }),
        }
    };
    let required = |i: usize| {
        get(i)?.ok_or(OutboxError::BadValue {
            column: COLUMNS[i],
            why: "null",
        })
    };
    let aggregate_type =
        String::from_utf8(required(1)?.to_vec()).map_err(|_| OutboxError::BadValue {
            column: "aggregatetype",
            why: "not UTF-8",
        })?;
    Ok(OutboxEvent {
        id: required(0)?,
        aggregate_type,
        aggregate_id: required(2)?,
        event_type: required(3)?,
        payload: get(4)?,
        invalid: None,
    })
}

/// A row that is no valid event, with what can be read of it, for [`INVALID_TOPIC`].
fn invalid(row: &[Value], p: &[usize; 5], why: &OutboxError) -> OutboxEvent {
    let get = |i: usize| match row.get(p[i]) {
        Some(Value::Text(b) | Value::Binary(b)) => Some(b.clone()),
        _ => None,
    };
    OutboxEvent {
        id: get(0).unwrap_or_default(),
        aggregate_type: String::new(),
        aggregate_id: get(2).unwrap_or_default(),
        event_type: get(3).unwrap_or_default(),
        payload: get(4),
        invalid: Some(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{decode, encode};

    const OUTBOX: u32 = 16_384;

    fn feed(o: &mut Outbox, m: Bytes) -> Option<Committed> {
        o.feed(decode(&m).unwrap()).unwrap()
    }

    fn transaction(o: &mut Outbox, end: u64, rows: &[[&str; 5]]) -> Option<Committed> {
        feed(o, encode::begin(end, 7));
        for r in rows {
            let row: Vec<Option<&str>> = r.iter().map(|v| Some(*v)).collect();
            feed(o, encode::insert(OUTBOX, &row));
        }
        feed(o, encode::commit(end - 8, end))
    }

    fn described() -> Outbox {
        let mut o = Outbox::new("public", "outbox", Lsn(0));
        // Column order as a table may have it, not Debezium's.
        let cols = ["payload", "aggregateid", "id", "type", "aggregatetype"];
        feed(&mut o, encode::relation(OUTBOX, "public", "outbox", &cols));
        feed(&mut o, encode::relation(99, "public", "orders", &["id"]));
        o
    }

    #[test]
    fn committed_inserts_become_events_for_their_aggregates_topic() {
        let mut o = described();
        let c = transaction(
            &mut o,
            100,
            &[["{\"n\":1}", "order-7", "e1", "OrderPlaced", "order"]],
        )
        .unwrap();
        assert_eq!(c.end_lsn, Lsn(100));
        let e = &c.events[0];
        assert_eq!(e.route(), ("outbox.event.order".to_string(), None));
        assert_eq!(
            (&e.id[..], &e.aggregate_id[..]),
            (&b"e1"[..], &b"order-7"[..])
        );
        assert_eq!(e.payload.as_deref(), Some(&b"{\"n\":1}"[..]));
        // Other tables' inserts are not events.
        feed(&mut o, encode::begin(200, 8));
        feed(&mut o, encode::insert(99, &[Some("x")]));
        assert_eq!(
            feed(&mut o, encode::commit(190, 200)).unwrap().events,
            vec![]
        );
    }

    #[test]
    fn transactions_already_buffered_are_skipped_after_the_slot_goes_back() {
        let mut o = described();
        let row = ["p", "a", "e1", "T", "order"];
        let first = transaction(&mut o, 100, &[row]).unwrap();
        o.buffered(first.end_lsn);
        // PostgreSQL crashed before the slot's advance was durable: the same transaction
        // comes again, and is skipped; the next one is not.
        assert_eq!(transaction(&mut o, 100, &[row]), None);
        assert_eq!(o.redelivered(), 1);
        assert!(transaction(&mut o, 101, &[row]).is_some());
    }

    #[test]
    fn a_broken_outbox_is_named() {
        let mut o = Outbox::new("public", "outbox", Lsn(0));
        let bad = decode(&encode::relation(
            OUTBOX,
            "public",
            "outbox",
            &["id", "payload"],
        ))
        .unwrap();
        assert_eq!(
            o.feed(bad),
            Err(OutboxError::MissingColumn("aggregatetype"))
        );
        let mut o = described();
        let insert = decode(&encode::insert(OUTBOX, &[Some("p")])).unwrap();
        assert_eq!(o.feed(insert.clone()), Err(OutboxError::NoTransaction));
        feed(&mut o, encode::begin(5, 1));
        let unknown = decode(&encode::insert(5, &[Some("p")])).unwrap();
        assert_eq!(o.feed(unknown), Err(OutboxError::UnknownRelation(5)));
    }

    /// Rows that are no valid event go to `outbox.invalid` with the reason, and the rows
    /// after them flow on.
    #[test]
    fn invalid_rows_go_to_the_dead_letter_topic_and_do_not_stop_the_others() {
        let mut o = described();
        feed(&mut o, encode::begin(100, 1));
        let rows: [&[Option<&str>]; 4] = [
            &[Some("p")],
            &[Some("p"), Some("a"), Some("e1"), Some("T"), None],
            &[
                Some("p"),
                Some("a"),
                Some("e2"),
                Some("T"),
                Some("no spaces"),
            ],
            &[Some("p"), Some("a"), Some("e3"), Some("T"), Some("order")],
        ];
        for r in rows {
            assert_eq!(feed(&mut o, encode::insert(OUTBOX, r)), None);
        }
        let c = feed(&mut o, encode::commit(92, 100)).unwrap();
        let routes: Vec<(String, Option<String>)> = c.events.iter().map(|e| e.route()).collect();
        assert_eq!(routes[0].0, INVALID_TOPIC);
        assert!(
            routes[0].1.as_ref().unwrap().contains("missing"),
            "{routes:?}"
        );
        assert_eq!(routes[1].0, INVALID_TOPIC);
        assert_eq!(
            routes[1].1.as_deref(),
            Some("outbox row: column \"aggregatetype\" is null")
        );
        assert_eq!(c.events[1].id, Bytes::from_static(b"e1"));
        assert_eq!(routes[2].0, INVALID_TOPIC);
        assert!(
            routes[2].1.as_ref().unwrap().contains("no topic name"),
            "{routes:?}"
        );
        assert_eq!(routes[3], ("outbox.event.order".to_string(), None));
    }
}
