//! The wire types of a schema-1 document: permissive, everything optional,
//! unknown fields ignored (the module's doc says why). Validation reads them;
//! nothing outside `model::validate` sees them.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireDocument {
    pub(super) schema: Option<i64>,
    pub(super) revision: Option<i64>,
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) force: bool,
    #[serde(default)]
    pub(super) vips: Vec<WireVip>,
    #[serde(default)]
    pub(super) frontends: Vec<WireFrontend>,
    #[serde(default)]
    pub(super) pools: Vec<WirePool>,
    #[serde(default)]
    pub(super) logic: Vec<WireLogic>,
    #[serde(default)]
    pub(super) maps: Vec<WireMap>,
    #[serde(default)]
    pub(super) acls: Vec<WireAcl>,
    #[serde(default)]
    pub(super) certificates: Vec<WireCertificate>,
    pub(super) availability_zones: Option<crate::model::az::WireAz>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireVip {
    pub(super) address: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireFrontend {
    pub(super) name: Option<String>,
    pub(super) bind: Option<Vec<String>>,
    pub(super) mode: Option<String>,
    pub(super) tls: Option<WireTls>,
    pub(super) default_pool: Option<String>,
    #[serde(default)]
    pub(super) logic: Vec<String>,
    pub(super) maxconn: Option<i64>,
    pub(super) health: Option<WireHealth>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireTls {
    #[serde(default)]
    pub(super) certificates: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireHealth {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) expect_status: Vec<i64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WirePool {
    pub(super) name: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) balance: Option<String>,
    pub(super) check: Option<WireCheck>,
    #[serde(default)]
    pub(super) servers: Vec<WireServer>,
    pub(super) routing: Option<String>,
    pub(super) stickiness: Option<String>,
    #[serde(default)]
    pub(super) logic: Vec<String>,
    pub(super) timeouts: Option<crate::model::options::WireTimeouts>,
    pub(super) retries: Option<i64>,
    pub(super) redispatch: Option<bool>,
    pub(super) http_reuse: Option<String>,
    pub(super) slowstart: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireCheck {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) rise: Option<i64>,
    pub(super) fall: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireServer {
    pub(super) name: Option<String>,
    pub(super) address: Option<String>,
    pub(super) port: Option<i64>,
    pub(super) weight: Option<i64>,
    pub(super) state: Option<String>,
    pub(super) az: Option<String>,
    #[serde(default)]
    pub(super) backup: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireLogic {
    pub(super) name: Option<String>,
    pub(super) template: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireMap {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) entries: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireAcl {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) entries: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireCertificate {
    pub(super) name: Option<String>,
    pub(super) pem: Option<String>,
}
