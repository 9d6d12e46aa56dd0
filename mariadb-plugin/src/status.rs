//! `<datadir>/.fuse-ibd/status` (docs/SEMANTICS.md, "Status and metrics"): `key=value` lines.
//! Keys are only ever added by fuse-ibd, so an unknown key is ignored and a missing one reads 0.

use std::collections::HashMap;
use std::ffi::CStr;

/// One snapshot of the status file.
#[derive(Debug, Default, Clone)]
pub struct Status {
    values: HashMap<String, String>,
}

impl Status {
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Self { values }
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A counter or gauge; 0 when missing or not a number.
    pub fn number(&self, key: &str) -> u64 {
        self.text(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// What the plugin itself counts, beside the mount's status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local {
    /// Reads of the status file that failed although the datadir was a fuse-ibd mount at
    /// start (the daemon died or was unmounted).
    pub status_read_errors: u64,
    /// `innodb_doublewrite` is ON on a fuse-ibd datadir (see README.md).
    pub doublewrite_warning: bool,
}

/// A status variable's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Number(u64),
    Flag(bool),
}

/// Where a `Page_server_*` value comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A key of the status file, as is.
    Key(&'static str),
    /// The sum of several keys.
    Sum(&'static [&'static str]),
    /// `total / count`, 0 when `count` is 0 (a mean).
    Mean {
        total: &'static str,
        count: &'static str,
    },
    StatusReadErrors,
    DoublewriteWarning,
}

impl Source {
    pub fn value(self, status: &Status, local: &Local) -> Value {
        Value::Number(match self {
            Source::Key(key) => status.number(key),
            Source::Sum(keys) => keys
                .iter()
                .fold(0u64, |sum, k| sum.saturating_add(status.number(k))),
            Source::Mean { total, count } => match status.number(count) {
                0 => 0,
                n => status.number(total) / n,
            },
            Source::StatusReadErrors => local.status_read_errors,
            Source::DoublewriteWarning => return Value::Flag(local.doublewrite_warning),
        })
    }
}

const ERROR_KEYS: &[&str] = &["io_errors", "pageserver_errors", "walsync_errors"];

/// The status variables, `Page_server_<name>`, in the order SHOW STATUS lists them.
pub const VARIABLES: &[(&CStr, Source)] = &[
    (c"cache_evictions", Source::Key("cache_evictions")),
    (c"cache_hits", Source::Key("cache_hits")),
    (c"cache_misses", Source::Key("cache_misses")),
    (c"cache_resident_bytes", Source::Key("cache_resident_bytes")),
    (c"doublewrite_warning", Source::DoublewriteWarning),
    (c"errors", Source::Sum(ERROR_KEYS)),
    (c"io_errors", Source::Key("io_errors")),
    (c"page_store_seq", Source::Key("page_store_seq")),
    (c"pages_uploaded", Source::Key("pages_uploaded")),
    (c"pageserver_errors", Source::Key("pageserver_errors")),
    (
        c"remote_read_avg_us",
        Source::Mean {
            total: "remote_fetch_us_total",
            count: "remote_fetches",
        },
    ),
    (c"remote_read_pages", Source::Key("remote_fetched_pages")),
    (c"remote_reads", Source::Key("remote_fetches")),
    (c"status_read_errors", Source::StatusReadErrors),
    (c"term", Source::Key("term")),
    (c"upload_queue_bytes", Source::Key("upload_queue_bytes")),
    (c"upload_queue_pages", Source::Key("upload_queue_pages")),
    (c"wal_durable_lsn", Source::Key("wal_durable_lsn")),
    (c"wal_shipped_lsn", Source::Key("wal_shipped_lsn")),
    (c"walsync_errors", Source::Key("walsync_errors")),
];

/// Host and port of a service URL (`http://127.0.0.1:8081`, `https://[::1]/x`, `host:1234`).
/// The port defaults to the scheme's; `None` when there is no host.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "version=0.1.0\ndatadir=/srv/d\nwalsync_url=http://127.0.0.1:8082\n\
        timeline=main\nterm=3\nwal_durable_lsn=901234\npageserver_url=http://127.0.0.1:8081\n\
        page_term=3\nupload_queue=0\npage_store_seq=77\ncache_hits=10\ncache_misses=2\n\
        remote_fetches=4\nremote_fetched_pages=9\nremote_fetch_us_total=1003\n\
        pages_uploaded=120\nwal_shipped_lsn=901300\nio_errors=1\npageserver_errors=2\n\
        walsync_errors=3\nsome_future_key=abc\n";

    fn value(status: &Status, name: &str) -> u64 {
        let local = Local {
            status_read_errors: 5,
            doublewrite_warning: true,
        };
        let source = VARIABLES.iter().find(|(n, _)| n.to_str() == Ok(name)).unwrap().1;
        match source.value(status, &local) {
            Value::Number(n) => n,
            Value::Flag(f) => u64::from(f),
        }
    }

    #[test]
    fn values_come_from_their_keys() {
        let s = Status::parse(SAMPLE);
        assert_eq!(value(&s, "cache_hits"), 10);
        assert_eq!(value(&s, "cache_misses"), 2);
        assert_eq!(value(&s, "remote_reads"), 4);
        assert_eq!(value(&s, "remote_read_pages"), 9);
        assert_eq!(value(&s, "remote_read_avg_us"), 250, "1003 us over 4 fetches");
        assert_eq!(value(&s, "pages_uploaded"), 120);
        assert_eq!(value(&s, "wal_shipped_lsn"), 901300);
        assert_eq!(value(&s, "wal_durable_lsn"), 901234);
        assert_eq!(value(&s, "term"), 3);
        assert_eq!(value(&s, "page_store_seq"), 77);
        assert_eq!(value(&s, "errors"), 6);
        assert_eq!(value(&s, "status_read_errors"), 5);
        assert_eq!(value(&s, "doublewrite_warning"), 1);
        assert_eq!(s.text("pageserver_url"), Some("http://127.0.0.1:8081"));
    }

    #[test]
    fn missing_keys_and_garbage_read_zero() {
        let s = Status::parse("cache_hits=x\nno equals sign\n=5\nupload_queue_pages=\n");
        for (name, source) in VARIABLES {
            let v = source.value(&s, &Local::default());
            assert!(matches!(v, Value::Number(0) | Value::Flag(false)), "{name:?}");
        }
        assert_eq!(s.text("upload_queue_pages"), None);
    }

    #[test]
    fn names_are_sorted_and_unique() {
        let names: Vec<&CStr> = VARIABLES.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn urls_split_into_host_and_port() {
        let hp = |u| host_port(u);
        assert_eq!(hp("http://127.0.0.1:8081"), Some(("127.0.0.1".into(), 8081)));
        assert_eq!(hp("http://127.0.0.1:8081/"), Some(("127.0.0.1".into(), 8081)));
        assert_eq!(hp("https://ps.example/api"), Some(("ps.example".into(), 443)));
        assert_eq!(hp("http://ps.example"), Some(("ps.example".into(), 80)));
        assert_eq!(hp("HTTP://u:p@ps:9/x?y"), Some(("ps".into(), 9)));
        assert_eq!(hp("http://[::1]:8081/"), Some(("::1".into(), 8081)));
        assert_eq!(hp("ps:1234"), Some(("ps".into(), 1234)));
        assert_eq!(hp("http://:80"), None);
        assert_eq!(hp("http://h:notaport"), None);
        assert_eq!(hp("http://h:70000"), None);
    }
}
