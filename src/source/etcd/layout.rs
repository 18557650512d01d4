//! The etcd key layout (docs/etcd.md): one key per object under the prefix.
//!
//! ```text
//! <prefix>group                       {"schema":1,"group":"blue", …}  every top-level field
//!                                     but the collections and "revision"
//! <prefix>vips/<id>                   {"address":"192.0.2.10/32"}     id = address, '/' → '_'
//! <prefix>frontends/<name>            a frontend object
//! <prefix>pools/<name>                a pool object without "servers"
//! <prefix>servers/<pool>/<name>       a server object of pool <pool>
//! <prefix>logic/<name>, maps/<name>, acls/<name>, certificates/<name>
//! ```
//!
//! Pure: [`classify`] names what a key is, [`check_value`] checks one value
//! as it arrives (size, JSON object, `name` equal to the key), [`assemble`]
//! concatenates the checked values into one schema-1 document (byte
//! concatenation: no value is re-parsed), and [`split`] does the reverse for
//! `lb-agent publish`. Named objects must carry their own `name`, equal to
//! the key's last segment, so a value read on its own says what it is.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

/// The collections that are one key per object, in document order.
pub const COLLECTIONS: [&str; 7] = [
    "vips",
    "frontends",
    "pools",
    "logic",
    "maps",
    "acls",
    "certificates",
];

/// Longest key accepted (below the prefix), in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// What one key under the prefix holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// `group`: the document's top-level fields.
    Group,
    /// `<collection>/<name>` (collection ≠ servers).
    Object {
        collection: &'static str,
        name: String,
    },
    /// `servers/<pool>/<name>`.
    Server { pool: String, name: String },
    /// A key this version does not know (another collection, a deeper path):
    /// ignored, for forward compatibility.
    Unknown,
}

fn name_ok(s: &str) -> bool {
    // The document's own name grammar is enforced by the validator; here
    // only what keeps a key unambiguous and printable.
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Classifies `rel` (the key with the prefix removed).
///
/// `Err` for a key in a known collection whose shape is wrong (it would
/// otherwise be silently left out of the document).
pub fn classify(rel: &str) -> Result<Slot, String> {
    if rel.len() > MAX_KEY_BYTES {
        return Err(format!("key longer than {MAX_KEY_BYTES} bytes"));
    }
    if rel == "group" {
        return Ok(Slot::Group);
    }
    let parts: Vec<&str> = rel.split('/').collect();
    let bad = |what: &str| Err(format!("{what} (expected {})", expected_shape(parts[0])));
    match parts[0] {
        "servers" => match parts.as_slice() {
            [_, pool, name] if name_ok(pool) && name_ok(name) => Ok(Slot::Server {
                pool: pool.to_string(),
                name: name.to_string(),
            }),
            _ => bad("malformed server key"),
        },
        c => match COLLECTIONS.iter().find(|k| **k == c) {
            Some(collection) => match parts.as_slice() {
                [_, name] if name_ok(name) => Ok(Slot::Object {
                    collection,
                    name: name.to_string(),
                }),
                _ => bad("malformed key"),
            },
            None => Ok(Slot::Unknown),
        },
    }
}

fn expected_shape(collection: &str) -> String {
    match collection {
        "servers" => "servers/<pool>/<server>".into(),
        c => format!("{c}/<name> with a name of letters, digits, '_', '.', ':', '-'"),
    }
}

/// The `vips/<id>` id of a VIP address: `/` → `_`.
pub fn vip_id(address: &str) -> String {
    address.replace('/', "_")
}

/// Top-level document fields that are not in the `group` key.
fn reserved(field: &str) -> bool {
    field == "revision" || COLLECTIONS.contains(&field)
}

/// Checks one value as it arrives and returns it, trimmed, ready for
/// [`assemble`]; `Err` says what is wrong (the caller adds the key).
pub fn check_value(slot: &Slot, value: &[u8], max_bytes: usize) -> Result<Bytes, String> {
    if value.len() > max_bytes {
        return Err(format!(
            "value of {} bytes exceeds max_document_size ({max_bytes} bytes)",
            value.len()
        ));
    }
    let object: Map<String, Value> =
        serde_json::from_slice(value).map_err(|e| format!("invalid JSON object: {e}"))?;
    match slot {
        Slot::Group => {
            if let Some(f) = object.keys().find(|k| reserved(k)) {
                return Err(format!(
                    "the group key must not hold {f:?} (collections are keys of their own; the revision is etcd's)"
                ));
            }
        }
        Slot::Object { collection, name } => {
            if *collection == "vips" {
                let address = object.get("address").and_then(Value::as_str);
                if address.map(vip_id).as_deref() != Some(name.as_str()) {
                    return Err(format!(
                        "\"address\" must be present and match the key (expected vips/{}, found address {address:?})",
                        address.map(vip_id).unwrap_or_default()
                    ));
                }
            } else {
                check_name(&object, name)?;
            }
            if *collection == "pools" && object.contains_key("servers") {
                return Err("a pool key must not hold \"servers\" (each server is a key under servers/<pool>/)".into());
            }
        }
        Slot::Server { name, .. } => check_name(&object, name)?,
        Slot::Unknown => {}
    }
    let trimmed = value.trim_ascii();
    Ok(Bytes::copy_from_slice(trimmed))
}

fn check_name(object: &Map<String, Value>, name: &str) -> Result<(), String> {
    match object.get("name") {
        Some(Value::String(n)) if n == name => Ok(()),
        found => Err(format!(
            "\"name\" must be present and equal to the key's last segment {name:?}, found {}",
            found.map_or_else(|| "none".to_string(), Value::to_string)
        )),
    }
}

/// Where each part of an assembled document came from: maps a JSON path of
/// a validation error back to the etcd key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Index {
    /// Per collection, the relative key of element i.
    collections: BTreeMap<&'static str, Vec<String>>,
    /// Per pool index, the relative keys of its servers.
    servers: Vec<Vec<String>>,
}

impl Index {
    /// The relative key a JSON path (`pools[3].servers[7].port`) points
    /// into; `group` for top-level fields, `None` when it cannot say.
    pub fn key_of(&self, path: &str) -> Option<String> {
        let (head, rest) = path.split_once('[').unwrap_or((path, ""));
        let Some(keys) = self.collections.get(head) else {
            return (!head.is_empty()).then(|| "group".to_string());
        };
        let (i, rest) = rest.split_once(']')?;
        let i: usize = i.parse().ok()?;
        if head == "pools" {
            if let Some(rest) = rest.strip_prefix(".servers[") {
                let (j, _) = rest.split_once(']')?;
                let j: usize = j.parse().ok()?;
                return self.servers.get(i)?.get(j).cloned();
            }
        }
        keys.get(i).cloned()
    }

    /// Rewrites a validator's message (`a; b; …` of `path: message`) so that
    /// each part names its etcd key.
    pub fn annotate(&self, prefix: &str, message: &str) -> String {
        message
            .split("; ")
            .map(|part| {
                let path = part.split_once(": ").map_or("", |(p, _)| p);
                match self.key_of(path) {
                    Some(key) if !path.contains(' ') => format!("key {prefix}{key}: {part}"),
                    _ => part.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Why the keys do not form a document (before validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembleError {
    /// Relative key at fault, if one is.
    pub key: Option<String>,
    pub message: String,
}

/// Builds the schema-1 document of `revision` from checked values (relative
/// key → value from [`check_value`], in key order).
///
/// `Err` when the group key is missing or a server's pool is missing.
pub fn assemble<'a>(
    revision: u64,
    values: impl Iterator<Item = (&'a str, &'a Slot, &'a Bytes)>,
) -> Result<(Vec<u8>, Index), AssembleError> {
    let mut group: Option<&Bytes> = None;
    let mut objects: BTreeMap<&'static str, Vec<(&str, &Bytes)>> = BTreeMap::new();
    let mut servers: BTreeMap<&str, Vec<(&str, &Bytes)>> = BTreeMap::new();
    let mut size = 0usize;
    for (key, slot, value) in values {
        size += value.len() + 1;
        match slot {
            Slot::Group => group = Some(value),
            Slot::Object { collection, .. } => {
                objects.entry(collection).or_default().push((key, value))
            }
            Slot::Server { pool, .. } => {
                servers.entry(pool.as_str()).or_default().push((key, value))
            }
            Slot::Unknown => {}
        }
    }
    let group = group.ok_or_else(|| AssembleError {
        key: Some("group".into()),
        message: "missing: no document under this prefix (publish one with `lb-agent publish`)"
            .into(),
    })?;
    let pools: Vec<&str> = objects
        .get("pools")
        .map(|v| v.iter().map(|(k, _)| &k["pools/".len()..]).collect())
        .unwrap_or_default();
    if let Some((pool, list)) = servers.iter().find(|(p, _)| !pools.contains(p)) {
        return Err(AssembleError {
            key: Some(list[0].0.to_string()),
            message: format!("server of pool {pool:?}, but there is no key pools/{pool}"),
        });
    }
    let mut out = Vec::with_capacity(size + 256);
    let mut index = Index::default();
    // The group object without its closing brace, then our fields.
    let body = &group[..group.len() - 1];
    out.extend_from_slice(body);
    if body.iter().any(|b| !b.is_ascii_whitespace() && *b != b'{') {
        out.push(b',');
    }
    out.extend_from_slice(format!("\"revision\":{revision}").as_bytes());
    for collection in COLLECTIONS {
        out.extend_from_slice(format!(",\"{collection}\":[").as_bytes());
        let list = objects
            .get(collection)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut keys = Vec::with_capacity(list.len());
        for (i, (key, value)) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if collection == "pools" {
                let name = &key["pools/".len()..];
                let members = servers.get(name).map(Vec::as_slice).unwrap_or_default();
                pool_with_servers(&mut out, value, members);
                index
                    .servers
                    .push(members.iter().map(|(k, _)| k.to_string()).collect());
            } else {
                out.extend_from_slice(value);
            }
            keys.push(key.to_string());
        }
        index.collections.insert(collection, keys);
        out.push(b']');
    }
    out.push(b'}');
    Ok((out, index))
}

pub(crate) fn pool_with_servers(out: &mut Vec<u8>, pool: &[u8], servers: &[(&str, &Bytes)]) {
    let body = &pool[..pool.len() - 1];
    out.extend_from_slice(body);
    if body.iter().any(|b| !b.is_ascii_whitespace() && *b != b'{') {
        out.push(b',');
    }
    out.extend_from_slice(b"\"servers\":[");
    for (i, (_, s)) in servers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(s);
    }
    out.extend_from_slice(b"]}");
}

/// Splits a schema-1 document into relative key → value (compact JSON), the
/// reverse of [`assemble`]: what `lb-agent publish` writes.
///
/// `Err` names the JSON path of an object that has no usable name or address.
pub fn split(doc: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let top = doc.as_object().ok_or("the document is not a JSON object")?;
    let mut out = BTreeMap::new();
    let group: Map<String, Value> = top
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert("group".to_string(), to_vec(&Value::Object(group)));
    for collection in COLLECTIONS {
        let Some(list) = top.get(collection) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| format!("{collection}: expected an array"))?;
        for (i, item) in list.iter().enumerate() {
            let path = format!("{collection}[{i}]");
            let obj = item
                .as_object()
                .ok_or_else(|| format!("{path}: expected an object"))?;
            let id = if collection == "vips" {
                vip_id(str_field(obj, "address", &path)?)
            } else {
                str_field(obj, "name", &path)?.to_string()
            };
            let key = format!("{collection}/{id}");
            classify(&key).map_err(|e| format!("{path}: {e}"))?;
            let mut obj = obj.clone();
            if collection == "pools" {
                if let Some(servers) = obj.remove("servers") {
                    let servers = servers
                        .as_array()
                        .ok_or_else(|| format!("{path}.servers: expected an array"))?;
                    for (j, s) in servers.iter().enumerate() {
                        let spath = format!("{path}.servers[{j}]");
                        let sobj = s
                            .as_object()
                            .ok_or_else(|| format!("{spath}: expected an object"))?;
                        let skey = format!("servers/{id}/{}", str_field(sobj, "name", &spath)?);
                        classify(&skey).map_err(|e| format!("{spath}: {e}"))?;
                        if out.insert(skey.clone(), to_vec(s)).is_some() {
                            return Err(format!("{spath}: duplicate key {skey}"));
                        }
                    }
                }
            }
            if out
                .insert(key.clone(), to_vec(&Value::Object(obj)))
                .is_some()
            {
                return Err(format!("{path}: duplicate key {key}"));
            }
        }
    }
    Ok(out)
}

fn str_field<'a>(obj: &'a Map<String, Value>, field: &str, path: &str) -> Result<&'a str, String> {
    obj.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}.{field}: expected a string"))
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a serde_json::Value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::json!({
            "schema": 1, "revision": 9, "group": "blue", "extra": {"x": 1},
            "vips": [{"address": "192.0.2.10/32"}],
            "frontends": [{"name": "www", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "web"}],
            "pools": [
                {"name": "web", "mode": "http", "servers": [
                    {"name": "b", "address": "10.0.0.2", "port": 80},
                    {"name": "a", "address": "10.0.0.1", "port": 80}]},
                {"name": "empty", "mode": "tcp"}
            ],
            "maps": [{"name": "m", "entries": {"a": "b"}}]
        })
    }

    fn checked(kv: &BTreeMap<String, Vec<u8>>) -> Vec<(String, Slot, Bytes)> {
        kv.iter()
            .map(|(k, v)| {
                let slot = classify(k).unwrap();
                let b = check_value(&slot, v, 1 << 20).unwrap();
                (k.clone(), slot, b)
            })
            .collect()
    }

    #[test]
    fn split_then_assemble_round_trips() {
        let kv = split(&doc()).unwrap();
        let keys: Vec<&str> = kv.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "frontends/www",
                "group",
                "maps/m",
                "pools/empty",
                "pools/web",
                "servers/web/a",
                "servers/web/b",
                "vips/192.0.2.10_32"
            ]
        );
        let c = checked(&kv);
        let (raw, index) = assemble(42, c.iter().map(|(k, s, b)| (k.as_str(), s, b))).unwrap();
        let back: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(back["revision"], 42);
        assert_eq!(back["extra"], serde_json::json!({"x": 1}));
        assert_eq!(back["pools"][0]["name"], "empty");
        assert_eq!(back["pools"][0]["servers"], serde_json::json!([]));
        // Servers in key order.
        assert_eq!(back["pools"][1]["servers"][0]["name"], "a");
        assert_eq!(back["logic"], serde_json::json!([]));
        assert_eq!(
            index.key_of("pools[1].servers[1].port").as_deref(),
            Some("servers/web/b")
        );
        assert_eq!(
            index.key_of("pools[0].mode").as_deref(),
            Some("pools/empty")
        );
        assert_eq!(
            index.key_of("vips[0].address").as_deref(),
            Some("vips/192.0.2.10_32")
        );
        assert_eq!(index.key_of("group").as_deref(), Some("group"));
        assert_eq!(index.key_of("frontends[7]"), None);
        // split(assemble(split(d))) == split(d)
        assert_eq!(split(&back).unwrap(), kv);
    }

    #[test]
    fn keys_are_classified_strictly_in_known_collections() {
        assert_eq!(classify("group"), Ok(Slot::Group));
        assert!(matches!(
            classify("pools/web"),
            Ok(Slot::Object {
                collection: "pools",
                ..
            })
        ));
        assert!(matches!(classify("servers/web/a"), Ok(Slot::Server { .. })));
        assert_eq!(classify("future/thing"), Ok(Slot::Unknown));
        assert_eq!(classify("groupx"), Ok(Slot::Unknown));
        for bad in [
            "pools/",
            "pools/a/b",
            "servers/web",
            "servers/web/a/b",
            "pools/a b",
            "maps/x;y",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
        assert!(classify(&format!("pools/{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn values_are_checked_on_arrival() {
        let pool = classify("pools/web").unwrap();
        let err = |slot: &Slot, v: &str| check_value(slot, v.as_bytes(), 64).unwrap_err();
        assert!(err(&pool, "{\"name\":").contains("invalid JSON"));
        assert!(err(&pool, "[1]").contains("invalid JSON object"));
        assert!(err(&pool, "{\"name\":\"other\"}").contains("\"web\""));
        assert!(err(&pool, "{\"mode\":\"tcp\"}").contains("found none"));
        assert!(err(&pool, "{\"name\":\"web\",\"servers\":[]}").contains("servers/<pool>/"));
        assert!(err(
            &pool,
            &format!("{{\"name\":\"web\",\"x\":\"{}\"}}", "a".repeat(80))
        )
        .contains("exceeds"));
        assert!(err(&Slot::Group, "{\"revision\":3}").contains("revision"));
        let vip = classify("vips/192.0.2.10_32").unwrap();
        assert!(err(&vip, "{\"address\":\"192.0.2.11/32\"}").contains("match the key"));
        assert!(check_value(&vip, b" {\"address\":\"192.0.2.10/32\"}\n", 64).is_ok());
    }

    #[test]
    fn missing_group_and_orphan_servers_name_their_key() {
        let kv = split(&doc()).unwrap();
        let mut c = checked(&kv);
        c.retain(|(k, _, _)| k != "pools/web");
        let e = assemble(1, c.iter().map(|(k, s, b)| (k.as_str(), s, b))).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("servers/web/a"));
        c.retain(|(k, _, _)| k != "group");
        let e = assemble(1, c.iter().map(|(k, s, b)| (k.as_str(), s, b))).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("group"));
    }

    #[test]
    fn annotate_names_keys() {
        let kv = split(&doc()).unwrap();
        let c = checked(&kv);
        let (_, index) = assemble(1, c.iter().map(|(k, s, b)| (k.as_str(), s, b))).unwrap();
        let m = index.annotate(
            "/lb/",
            "pools[1].servers[0].port: out of range; duplicate VIP",
        );
        assert_eq!(
            m,
            "key /lb/servers/web/a: pools[1].servers[0].port: out of range; duplicate VIP"
        );
    }
}
