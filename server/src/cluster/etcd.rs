//! The few etcd v3 calls membership needs, over etcd's JSON gateway (`/v3/...`, served
//! by every etcd since 3.4 on its client port).
//!
//! Why not the gRPC client crate: it generates its code with `protoc` at build time, and
//! the README promises a build with nothing but a Rust toolchain. The gateway is etcd's
//! documented HTTP/JSON face of the same API (int64 fields as strings, bytes as base64);
//! membership makes a handful of small calls per second, where JSON costs nothing.
//!
//! Endpoints are `http://` or `https://` ([`EtcdTls`]: the CA, and a client certificate
//! for an etcd that requires one). Calls are blocking (ureq) and bounded by a timeout; membership runs them on its own
//! thread, never on the service's runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use ureq::tls::{
    parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, TlsProvider,
};

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (down, stopped, partitioned, or too slow).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// An endpoint answered with an error.
    #[error("etcd refused {call}: {message}")]
    Refused {
        /// The gateway path.
        call: &'static str,
        /// What etcd said.
        message: String,
    },
}

/// An etcd cluster, reached through any of its endpoints.
pub struct Etcd {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first next time.
    preferred: AtomicUsize,
}

/// One key and its value, from a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The lease the key is bound to (0: none).
    pub lease: i64,
}

/// How to reach etcd over `https://` endpoints.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// CA certificates (PEM) that sign etcd's server certificates; `None`: the bundled
    /// public roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for an etcd started with `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

impl EtcdTls {
    /// The rustls settings of these files.
    fn config(&self) -> Result<TlsConfig, String> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
        };
        let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
        if let Some(path) = &self.ca {
            let pem = read("etcd CA", path)?;
            let certs: Vec<Certificate<'static>> = parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!("etcd CA {} holds no certificate", path.display()));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let pem = read("etcd client certificate", cert)?;
                let chain: Vec<Certificate<'static>> = parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                let key_pem = read("etcd client key", key)?;
                let key = PrivateKey::from_pem(&key_pem)
                    .map_err(|e| format!("etcd client key {}: {e}", key.display()))?;
                if chain.is_empty() {
                    return Err(format!("{} holds no certificate", cert.display()));
                }
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => return Err("--etcd-cert and --etcd-key go together".into()),
        }
        Ok(tls.build())
    }
}

impl Etcd {
    /// A client of the etcd at `endpoints` (`http://host:port`, `https://host:port`, or
    /// `host:port` for http); each call gives up after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration, tls: &EtcdTls) -> Result<Etcd, String> {
        if endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        let mut clean = Vec::new();
        for e in endpoints {
            let e = e.trim().trim_end_matches('/');
            let e = if e.starts_with("http://") || e.starts_with("https://") {
                e.to_owned()
            } else if e.contains("://") {
                return Err(format!("etcd endpoint {e}: http:// or https:// only"));
            } else {
                format!("http://{e}")
            };
            clean.push(e);
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.config()?)
            .build()
            .into();
        Ok(Etcd {
            agent,
            endpoints: clean,
            preferred: AtomicUsize::new(0),
        })
    }

    /// Posts `body` to gateway path `call` on the preferred endpoint, then the others.
    fn call(&self, call: &'static str, body: Value) -> Result<Value, EtcdError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            let url = format!("{}{call}", self.endpoints[at]);
            let answer = self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string());
            let mut answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    last = format!("{}: {e}", self.endpoints[at]);
                    continue;
                }
            };
            let status = answer.status().as_u16();
            let text = match answer.body_mut().read_to_string() {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{}: reading the answer: {e}", self.endpoints[at]);
                    continue;
                }
            };
            self.preferred.store(at, Ordering::Relaxed);
            let value: Value = serde_json::from_str(&text).map_err(|e| EtcdError::Refused {
                call,
                message: format!("not JSON ({e}): {text:.200}"),
            })?;
            if status != 200 || value.get("error").is_some() {
                let message = value
                    .get("message")
                    .or_else(|| value.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or(&text)
                    .to_owned();
                // A leader election or a stopped quorum: like no answer at all.
                if status >= 500 {
                    last = format!("{}: {message}", self.endpoints[at]);
                    continue;
                }
                return Err(EtcdError::Refused { call, message });
            }
            return Ok(value);
        }
        Err(EtcdError::Unreachable(last))
    }

    /// A new lease of `ttl` (whole seconds, at least 1); its id.
    pub fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let secs = ttl.as_secs().max(1);
        let v = self.call("/v3/lease/grant", json!({ "TTL": secs.to_string() }))?;
        int(&v["ID"]).ok_or_else(|| refused("/v3/lease/grant", "no lease id", &v))
    }

    /// Renews lease `id`: `Some(ttl)` while it lives, `None` once it expired.
    pub fn keep_alive(&self, id: i64) -> Result<Option<Duration>, EtcdError> {
        let v = self.call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))?;
        // A streamed call: the gateway answers `{"result": {...}}`; an expired lease
        // comes back with no TTL (zero is left out of the JSON).
        let ttl = int(&v["result"]["TTL"]).unwrap_or(0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Ends lease `id` and deletes every key bound to it.
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", json!({ "ID": id.to_string() })) {
            Ok(_) => Ok(()),
            // Already gone: what revoking wanted.
            Err(EtcdError::Refused { message, .. }) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets `key` to `value`, bound to `lease` (0: none).
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/kv/put", put_body(key, value, lease))?;
        Ok(())
    }

    /// Sets `key` to `value` (bound to `lease`) only if `key` does not exist; whether it
    /// did so. Atomic: of two callers, one wins.
    pub fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let body = json!({
            "compare": [{
                "key": B64.encode(key),
                "result": "EQUAL",
                "target": "CREATE",
                "create_revision": "0",
            }],
            "success": [{ "request_put": put_body(key, value, lease) }],
        });
        let v = self.call("/v3/kv/txn", body)?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": B64.encode(key) }))?;
        Ok(kvs(&v).into_iter().next())
    }

    /// Every key starting with `prefix`, and the store's revision they were read at.
    pub fn range_prefix(&self, prefix: &str) -> Result<(u64, Vec<KeyValue>), EtcdError> {
        let end = prefix_end(prefix.as_bytes());
        let body = json!({ "key": B64.encode(prefix), "range_end": B64.encode(end) });
        let v = self.call("/v3/kv/range", body)?;
        let revision = int(&v["header"]["revision"]).unwrap_or(0).max(0) as u64;
        Ok((revision, kvs(&v)))
    }
}

fn put_body(key: &str, value: &[u8], lease: i64) -> Value {
    let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    if lease != 0 {
        body["lease"] = json!(lease.to_string());
    }
    body
}

fn refused(call: &'static str, what: &str, v: &Value) -> EtcdError {
    EtcdError::Refused {
        call,
        message: format!("{what} in {v}"),
    }
}

/// An int64 field: the gateway writes them as strings (and leaves zeros out).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn kvs(v: &Value) -> Vec<KeyValue> {
    let Some(list) = v["kvs"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|kv| {
            let key = B64.decode(kv["key"].as_str()?).ok()?;
            let value = B64.decode(kv["value"].as_str().unwrap_or("")).ok()?;
            Some(KeyValue {
                key,
                value,
                lease: int(&kv["lease"]).unwrap_or(0),
            })
        })
        .collect()
}

/// The smallest key after every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_covers_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn endpoints_and_tls_files_are_checked() {
        let none = EtcdTls::default();
        let second = Duration::from_secs(1);
        assert!(Etcd::new(&[], second, &none).is_err());
        let e = Etcd::new(&["unix://x".into()], second, &none);
        assert!(e.err().unwrap().contains("http:// or https://"));
        let e = Etcd::new(&["127.0.0.1:2379/".into()], second, &none).unwrap();
        assert_eq!(e.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
        let missing = EtcdTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..EtcdTls::default()
        };
        let e = Etcd::new(&["https://127.0.0.1:2379".into()], second, &missing);
        assert!(e.err().unwrap().contains("/nonexistent/ca.pem"));
        let half = EtcdTls {
            cert: Some("/x".into()),
            ..EtcdTls::default()
        };
        let e = Etcd::new(&["https://127.0.0.1:2379".into()], second, &half);
        assert!(e.err().unwrap().contains("go together"));
    }

    #[test]
    fn a_closed_port_is_unreachable_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Etcd::new(
            &[format!("127.0.0.1:{port}")],
            Duration::from_secs(2),
            &EtcdTls::default(),
        )
        .unwrap();
        assert!(matches!(e.get("/x"), Err(EtcdError::Unreachable(_))));
    }
}
