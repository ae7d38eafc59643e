//! `caxton status`: the daemon's state, its TCP listeners (metrics, API) and memory as it sees them, in a
//! few lines or as JSON.

use std::path::Path;
use std::process::ExitCode;

use hyper::Method;

use super::remote::call;

/// `caxton status [--json]`.
pub(super) fn status(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut v = call(socket, Method::GET, "/api/memory/status")?;
    // A daemon older than this caxton (mid-upgrade) has no /api/status: the rest still shows.
    let daemon = call(socket, Method::GET, "/api/status").unwrap_or_else(
        |e| serde_json::json!({"status": format!("unknown ({e})"), "metrics_listeners": null}),
    );
    if json {
        // The memory status as it always was, with the daemon's part beside it.
        v["daemon"] = daemon;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("daemon:       {}", daemon["status"].as_str().unwrap_or("?"));
    println!(
        "metrics:      {}",
        metrics_line(&daemon["metrics_listeners"])
    );
    println!("api over TCP: {}", api_line(&daemon));
    print_memory(&v);
    print_pressure(&v);
    print_process_and_store(&v);
    print_cgroup(&v["cgroup"]);
    print_models(&v);
    Ok(ExitCode::SUCCESS)
}

/// `N MiB` for a byte count, `-` when there is none.
fn mib(v: &serde_json::Value) -> String {
    v.as_u64()
        .map_or("-".to_string(), |b| format!("{} MiB", b >> 20))
}

/// A time the daemon gives in seconds since the epoch.
fn time_of(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
    )
    .to_string()
}

/// The models' memory against its budget and limit, and the loads it has seen.
fn print_memory(v: &serde_json::Value) {
    println!(
        "model memory: {} of a {} budget ({})",
        mib(&v["model_memory_bytes"]),
        mib(&v["budget_bytes"]),
        v["budget_from"].as_str().unwrap_or("?")
    );
    if let Some(l) = v["limit"].as_object() {
        println!(
            "limit:        {}; working set {}, room for loads {}",
            l["from"].as_str().unwrap_or("?"),
            mib(&l["working_set_bytes"]),
            l["room_bytes"]
                .as_i64()
                .map_or("-".into(), |r| format!("{} MiB", r.max(0) >> 20))
        );
    }
    println!(
        "loads:        {} since start, {} in the last minute; {} request(s) waiting for loads, {} refused by the queue",
        v["loads"]["total"].as_u64().unwrap_or(0),
        v["loads"]["last_minute"].as_u64().unwrap_or(0),
        v["load_queue"]["waiting"].as_u64().unwrap_or(0),
        v["load_queue"]["refused"].as_u64().unwrap_or(0)
    );
}

/// The last pressure reading, an episode under way, and the models shed.
fn print_pressure(v: &serde_json::Value) {
    let p = &v["pressure"];
    println!(
        "pressure:     {} from {} ({}){}; {} model(s) shed since start",
        p["reading"]["level"].as_str().unwrap_or("not read yet"),
        p["source"].as_str().unwrap_or("?"),
        p["detail"].as_str().unwrap_or("?"),
        match (p["episode"].as_bool(), p["ceiling_bytes"].as_u64()) {
            (Some(true), Some(c)) =>
                format!(", episode going on: model memory held at {} MiB", c >> 20),
            (Some(true), None) => ", episode going on: no background loads".into(),
            _ => String::new(),
        },
        v["models_shed"].as_u64().unwrap_or(0)
    );
    if let Some(why) = p["reading"]["why"].as_str() {
        println!("              {why}");
    }
}

fn print_process_and_store(v: &serde_json::Value) {
    println!(
        "process:      rss {}, peak {}; {} available to it, {} to the system",
        mib(&v["process"]["rss_bytes"]),
        mib(&v["process"]["peak_rss_bytes"]),
        mib(&v["available"]["process_bytes"]),
        mib(&v["available"]["system_bytes"])
    );
    println!(
        "store:        {} in {} package(s), bound {} (store.max_size)",
        mib(&v["store"]["bytes"]),
        v["store"]["entries"].as_u64().unwrap_or(0),
        mib(&v["store"]["max_bytes"])
    );
}

fn print_cgroup(cgroup: &serde_json::Value) {
    let Some(c) = cgroup.as_object() else {
        println!("cgroup:       not readable");
        return;
    };
    let bound = |b: &serde_json::Value| {
        b.as_u64()
            .map_or("none".into(), |b| format!("{} MiB", b >> 20))
    };
    println!(
        "cgroup {}:    usage {}, max {}, high {} ({})",
        c["version"].as_str().unwrap_or("?"),
        mib(&c["usage_bytes"]),
        bound(&c["max_bytes"]),
        bound(&c["high_bytes"]),
        c["path"].as_str().unwrap_or("?")
    );
}

/// The models loaded (with when they unload if idle), and those whose load failed.
fn print_models(v: &serde_json::Value) {
    let loaded: Vec<String> = v["loaded"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{} ({}{})",
                        m["id"].as_str().unwrap_or("?"),
                        mib(&m["memory_bytes"]),
                        m["expires_at"].as_u64().map_or(String::new(), |t| format!(
                            ", idle unload at {}",
                            time_of(t)
                        ))
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "loaded:       {}",
        if loaded.is_empty() {
            "none".to_string()
        } else {
            loaded.join(", ")
        }
    );
    for f in v["failed"].as_array().into_iter().flatten() {
        println!(
            "failed:       {}: {} ({} attempt(s); next not before {})",
            f["id"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("?"),
            f["attempts"].as_u64().unwrap_or(0),
            f["retry_at"].as_u64().map_or("?".into(), time_of)
        );
    }
}

/// Whether metrics are served over TCP, and where.
fn metrics_line(listeners: &serde_json::Value) -> String {
    listeners_line(
        listeners,
        "off over TCP (metrics.listen is empty and no caxton-metrics.socket); GET /metrics on the Unix socket",
        "GET /metrics and GET /health only",
    )
}

/// Whether the API is served over TCP, where, and with which token rule.
fn api_line(daemon: &serde_json::Value) -> String {
    let listeners = &daemon["api_listeners"];
    let token = if daemon["api_token"].as_bool() == Some(true) {
        "every request must carry the token of api.token_file (Authorization: Bearer)"
    } else {
        "no token (api.token_file unset): loopback only"
    };
    let mut line = listeners_line(
        listeners,
        "off (api.listen is empty and no caxton-api.socket); the API on the Unix socket only",
        &format!("embedding, rerank, tokenize and Ollama endpoints; {token}"),
    );
    for refusing in listeners.as_array().into_iter().flatten() {
        if let Some(reason) = refusing["refuses"].as_str() {
            line.push_str(&format!("; REFUSING every request: {reason}"));
        }
    }
    line
}

/// The TCP listeners of one kind: where they listen, which cannot (and why), or `off`; `what`
/// says what the listening ones serve.
fn listeners_line(listeners: &serde_json::Value, off: &str, what: &str) -> String {
    let Some(listeners) = listeners.as_array() else {
        return "unknown (the daemon does not say)".into();
    };
    let describe = |l: &serde_json::Value| {
        format!(
            "{} ({})",
            l["address"].as_str().unwrap_or("?"),
            l["from"].as_str().unwrap_or("?")
        )
    };
    let (on, waiting): (Vec<_>, Vec<_>) = listeners.iter().partition(|l| l["error"].is_null());
    let on: Vec<String> = on.into_iter().map(describe).collect();
    let waiting: Vec<String> = waiting
        .into_iter()
        .map(|l| {
            format!(
                "not listening on {}: {}",
                describe(l),
                l["error"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if !waiting.is_empty() {
        let mut parts = waiting;
        if !on.is_empty() {
            parts.push(format!("on at {}", on.join(", ")));
        }
        parts.join("; ")
    } else if on.is_empty() {
        off.into()
    } else {
        format!("on at {}: {what}", on.join(", "))
    }
}
