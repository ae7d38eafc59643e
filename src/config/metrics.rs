//! The `metrics` section: the opt-in TCP listener a fleet's Prometheus scrapes.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Where `GET /metrics` and `GET /health` are served over TCP besides the Unix socket.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// `ADDRESS:PORT`s to listen on, applied live; empty (the default) for none. Port 0 takes
    /// a free port, which the journal and `caxton status` name.
    pub listen: Vec<ListenAddress>,
}

impl MetricsSettings {
    /// The addresses to listen on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        addresses(&self.listen)
    }

    /// The rules serde cannot express: each address once.
    pub fn validate(&self) -> Result<(), (String, String)> {
        listed_once("metrics.listen", &self.listen)
    }
}

/// An address listed twice under `key` would fail to bind the second time (and two free ports
/// under one entry could not be told apart), so it is refused, naming it.
pub fn listed_once(key: &str, listen: &[ListenAddress]) -> Result<(), (String, String)> {
    for (i, a) in listen.iter().enumerate() {
        if listen[..i].contains(a) {
            return Err((
                key.into(),
                format!("{a} is listed twice; list each address once"),
            ));
        }
    }
    Ok(())
}

/// The socket addresses of a list of `ADDRESS:PORT`s.
pub fn addresses(listen: &[ListenAddress]) -> Vec<SocketAddr> {
    listen.iter().map(|a| a.0).collect()
}

/// One `ADDRESS:PORT` of `metrics.listen`: an IP address (host names are not resolved: an
/// edge device may have no resolver, and the address decides the interface) and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddress(pub SocketAddr);

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.trim().parse().map(ListenAddress).map_err(|_| {
            format!(
                "{s:?} is not ADDRESS:PORT; write an IP address and a port, e.g. \"127.0.0.1:9464\", \"10.0.0.5:9464\" or \"[::]:9464\" (host names are not resolved)"
            )
        })
    }
}

impl Serialize for ListenAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ListenAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted ADDRESS:PORT such as \"127.0.0.1:9464\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ListenAddress, E> {
                Err(E::custom(format!(
                    "{v} is a number; write ADDRESS:PORT, e.g. \"127.0.0.1:{v}\" or \"[::]:{v}\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ListenAddress, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenAddress, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_ip_and_port_only() {
        let a: ListenAddress = "127.0.0.1:9464".parse().expect("v4");
        assert_eq!(a.to_string(), "127.0.0.1:9464");
        let b: ListenAddress = "[::]:9464".parse().expect("v6");
        assert_eq!(b.to_string(), "[::]:9464");
        assert_eq!(
            "localhost:9464".parse::<ListenAddress>().unwrap_err(),
            "\"localhost:9464\" is not ADDRESS:PORT; write an IP address and a port, e.g. \"127.0.0.1:9464\", \"10.0.0.5:9464\" or \"[::]:9464\" (host names are not resolved)"
        );
        assert!("127.0.0.1".parse::<ListenAddress>().is_err());
        assert!("127.0.0.1:99999".parse::<ListenAddress>().is_err());
    }

    #[test]
    fn an_address_listed_twice_is_refused() {
        let twice = MetricsSettings {
            listen: vec![
                "127.0.0.1:9464".parse().expect("a"),
                "127.0.0.1:9464".parse().expect("a"),
            ],
        };
        assert_eq!(
            twice.validate(),
            Err((
                "metrics.listen".into(),
                "127.0.0.1:9464 is listed twice; list each address once".into()
            ))
        );
        let two = MetricsSettings {
            listen: vec![
                "127.0.0.1:0".parse().expect("a"),
                "[::1]:0".parse().expect("b"),
            ],
        };
        assert_eq!(two.validate(), Ok(()));
    }
}
