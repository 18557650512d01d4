//! `lb-agent publish` and `lb-agent export`: a schema-1 document to and
//! from the etcd key layout (`source::etcd::layout`, docs/etcd.md).
//!
//! Publishing validates the document with the agent's own validator
//! (`model::validate::parse_document`: everything but this host's VIP
//! checks), splits it into keys, diffs them against what etcd holds under
//! the prefix ([`diff`], pure: values compared as JSON, so formatting never
//! counts as a change), and writes the changes in one transaction guarded
//! by a compare on the group key's mod revision as read. Every publish
//! rewrites the group key, so of two publishers that read the same state
//! only the first commits; the second fails with [`PublishError::Raced`]
//! and changes nothing. Export lists the prefix at one revision and
//! assembles the document exactly as the agent does.

use std::collections::BTreeMap;
use std::fmt;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::Value;

use crate::config::EtcdUrl;
use crate::source::etcd::layout;
use crate::source::etcd::store::Store;
use crate::source::etcd::{connect, Credentials};

/// One key's change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyChange {
    Added(String),
    Changed(String),
    Removed(String),
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyChange::Added(k) => write!(f, "+ {k}"),
            KeyChange::Changed(k) => write!(f, "~ {k}"),
            KeyChange::Removed(k) => write!(f, "- {k}"),
        }
    }
}

/// The changes that turn `current` into `desired` (relative keys), in key
/// order. The group key is compared like any other (the publisher rewrites
/// it regardless, for the guard).
pub fn diff(
    current: &BTreeMap<String, Vec<u8>>,
    desired: &BTreeMap<String, Vec<u8>>,
) -> Vec<KeyChange> {
    let same = |a: &[u8], b: &[u8]| {
        a == b
            || matches!(
                (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(b)),
                (Ok(x), Ok(y)) if x == y
            )
    };
    let mut out = Vec::new();
    for (k, v) in desired {
        match current.get(k) {
            None => out.push(KeyChange::Added(k.clone())),
            Some(old) if !same(old, v) => out.push(KeyChange::Changed(k.clone())),
            Some(_) => {}
        }
    }
    for k in current.keys() {
        if !desired.contains_key(k) {
            out.push(KeyChange::Removed(k.clone()));
        }
    }
    out.sort_by(|a, b| key_of(a).cmp(key_of(b)));
    out
}

fn key_of(c: &KeyChange) -> &str {
    match c {
        KeyChange::Added(k) | KeyChange::Changed(k) | KeyChange::Removed(k) => k,
    }
}

/// Why a publish or an export failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Invalid(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error(
        "another publisher changed {key} since it was read (mod revision {read} is no longer current); nothing was written: export, check and publish again"
    )]
    Raced { key: String, read: i64 },
}

/// What a publish did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Changes, relative keys.
    pub changes: Vec<KeyChange>,
    /// The etcd revision read before the diff.
    pub read_revision: i64,
    /// The revision the transaction created (`None` for a dry run or no change).
    pub revision: Option<i64>,
}

/// Reads every key under the prefix: relative key → value, the header
/// revision, and the group key's mod revision (0 when absent).
pub async fn read_prefix(
    client: &mut etcd_client::Client,
    url: &EtcdUrl,
    max_bytes: usize,
) -> Result<(BTreeMap<String, Vec<u8>>, i64, i64), PublishError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(max_bytes + (4 << 20));
    let mut resp = kv
        .get(url.prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| PublishError::Etcd(format!("listing {}: {e}", url.prefix)))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut group_mod = 0;
    let mut out = BTreeMap::new();
    for kv in resp.take_kvs() {
        let rel = String::from_utf8_lossy(&kv.key()[url.prefix.len()..]).into_owned();
        if rel == "group" {
            group_mod = kv.mod_revision();
        }
        out.insert(rel, kv.value().to_vec());
    }
    Ok((out, revision, group_mod))
}

/// A publish that was read and diffed but not yet written.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Changes, relative keys.
    pub changes: Vec<KeyChange>,
    /// The etcd revision read before the diff.
    pub read_revision: i64,
    /// The group key's mod revision as read (0: absent): the guard.
    pub group_mod: i64,
    desired: BTreeMap<String, Vec<u8>>,
}

/// Validates `body` (a schema-1 document) with the agent's validator and
/// splits it into keys.
pub fn desired_keys(body: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, PublishError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| PublishError::Invalid(format!("not JSON: {e}")))?;
    let group = doc.get("group").and_then(Value::as_str).unwrap_or_default();
    let ctx = crate::model::validate::ValidateContext {
        group: group.to_string(),
    };
    // The file's revision is ignored (etcd assigns one); validate as the
    // agent will see it, with a revision present.
    let mut probe = doc.clone();
    if let Some(o) = probe.as_object_mut() {
        o.insert("revision".into(), Value::from(1u64));
    }
    let probe = serde_json::to_vec(&probe).expect("a Value serialises");
    crate::model::validate::parse_document(&probe, &ctx)
        .map_err(|e| PublishError::Invalid(format!("the document is invalid: {e}")))?;
    layout::split(&doc).map_err(PublishError::Invalid)
}

/// Reads the prefix and diffs it against the validated `body`.
pub async fn prepare(
    client: &mut etcd_client::Client,
    url: &EtcdUrl,
    body: &[u8],
    max_bytes: usize,
) -> Result<Prepared, PublishError> {
    let desired = desired_keys(body)?;
    let (current, read_revision, group_mod) = read_prefix(client, url, max_bytes).await?;
    Ok(Prepared {
        changes: diff(&current, &desired),
        read_revision,
        group_mod,
        desired,
    })
}

/// Writes a prepared publish in one transaction, guarded by the group key's
/// mod revision; returns the new etcd revision (`None`: nothing to write).
pub async fn commit(
    client: &mut etcd_client::Client,
    url: &EtcdUrl,
    p: &Prepared,
) -> Result<Option<i64>, PublishError> {
    if p.changes.is_empty() {
        return Ok(None);
    }
    let group_key = format!("{}group", url.prefix);
    let mut ops = Vec::with_capacity(p.changes.len() + 1);
    for c in &p.changes {
        match c {
            KeyChange::Added(k) | KeyChange::Changed(k) if k != "group" => {
                ops.push(TxnOp::put(
                    format!("{}{k}", url.prefix),
                    p.desired[k].clone(),
                    None,
                ));
            }
            KeyChange::Removed(k) => ops.push(TxnOp::delete(format!("{}{k}", url.prefix), None)),
            _ => {}
        }
    }
    // Always rewrite the group key: it is what a concurrent publisher compares.
    ops.push(TxnOp::put(
        group_key.clone(),
        p.desired["group"].clone(),
        None,
    ));
    let n = ops.len();
    let txn = Txn::new()
        .when([Compare::mod_revision(
            group_key.clone(),
            CompareOp::Equal,
            p.group_mod,
        )])
        .and_then(ops);
    let resp = client.txn(txn).await.map_err(|e| {
        PublishError::Etcd(format!(
            "the transaction of {n} operations failed: {e} (etcd's --max-txn-ops and --max-request-bytes bound one transaction)"
        ))
    })?;
    if !resp.succeeded() {
        return Err(PublishError::Raced {
            key: group_key,
            read: p.group_mod,
        });
    }
    Ok(resp.header().map(|h| h.revision()))
}

/// Validates `body`, diffs it against etcd and, unless `dry_run`, writes the
/// changes in one guarded transaction.
pub async fn publish(
    url: &EtcdUrl,
    creds: &Credentials,
    body: &[u8],
    dry_run: bool,
    max_bytes: usize,
) -> Result<Report, PublishError> {
    let mut client = connect(&url.endpoints, creds)
        .await
        .map_err(PublishError::Etcd)?;
    let p = prepare(&mut client, url, body, max_bytes).await?;
    let revision = if dry_run {
        None
    } else {
        commit(&mut client, url, &p).await?
    };
    Ok(Report {
        changes: p.changes,
        read_revision: p.read_revision,
        revision,
    })
}

/// The schema-1 document under the prefix, assembled as the agent does
/// (its `revision` is etcd's revision of the listing).
pub async fn export(
    url: &EtcdUrl,
    creds: &Credentials,
    max_bytes: usize,
) -> Result<Value, PublishError> {
    let mut client = connect(&url.endpoints, creds)
        .await
        .map_err(PublishError::Etcd)?;
    let (current, revision, _) = read_prefix(&mut client, url, max_bytes).await?;
    let mut store = Store::new(max_bytes);
    store.reset(
        revision.max(0) as u64,
        current.into_iter().map(|(k, v)| (k, bytes::Bytes::from(v))),
    );
    let (raw, _) = store.document(max_bytes).map_err(|e| {
        PublishError::Invalid(match e.key {
            Some(k) => format!("key {}{k}: {}", url.prefix, e.message),
            None => e.message,
        })
    })?;
    serde_json::from_slice(&raw)
        .map_err(|e| PublishError::Invalid(format!("assembled document: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn diff_compares_json_not_bytes() {
        let current = kv(&[
            ("group", r#"{"schema":1,"group":"g"}"#),
            ("pools/a", r#"{"name":"a", "mode":"tcp"}"#),
            ("pools/b", r#"{"name":"b"}"#),
            ("servers/a/x", r#"{"name":"x","port":1}"#),
        ]);
        let desired = kv(&[
            ("group", r#"{"group":"g","schema":1}"#),
            ("pools/a", r#"{"mode":"tcp","name":"a"}"#),
            ("servers/a/x", r#"{"name":"x","port":2}"#),
            ("servers/a/y", r#"{"name":"y","port":1}"#),
        ]);
        assert_eq!(
            diff(&current, &desired),
            [
                KeyChange::Removed("pools/b".into()),
                KeyChange::Changed("servers/a/x".into()),
                KeyChange::Added("servers/a/y".into()),
            ]
        );
        assert!(diff(&desired, &desired).is_empty());
        assert_eq!(diff(&BTreeMap::new(), &desired).len(), 4);
    }
}
