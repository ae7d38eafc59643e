//! Issue 3 side-loading against the real daemon: files dropped, renamed in, copied slowly,
//! replaced and removed; hostile packages; versions; the directory coming and going;
//! signatures; store re-validation; kill -9 during unpacking.

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, bundled_copy, embed_with, model_entry, rejection, wait_until, write_config};

fn start(extra: &str) -> Daemon {
    common::start_with_dropin(extra)
}

fn packages(d: &Daemon) -> PathBuf {
    d.dir.path().join("packages")
}

/// A package prepared outside the watched directory.
fn prepared(d: &Daemon, name: &str, id: &str, version: &str) -> PathBuf {
    let p = d.dir.path().join(name);
    bundled_copy(&p, id, version);
    p
}

fn count(d: &Daemon, needle: &str) -> usize {
    d.log().matches(needle).count()
}

#[test]
fn dropped_renamed_and_removed_packages_come_and_go() {
    let d = start("");
    let src = prepared(&d, "dropped.tar.zst", "dropped", "1");
    std::fs::rename(&src, packages(&d).join("dropped.tar.zst")).expect("rename into place");
    wait_until(&d, "the renamed-in package", || {
        model_entry(&d, "dropped").is_some()
    });
    let (s, v) = embed_with(&d, "dropped");
    assert_eq!((s, v["model"].as_str()), (200, Some("dropped")));
    assert_eq!(
        model_entry(&d, "dropped").expect("entry")["source"],
        "side-loaded"
    );

    // Copied in the ordinary way (create, write, close).
    let src = prepared(&d, "copied.tar.zst", "copied", "1");
    std::fs::copy(&src, packages(&d).join("copied.tar.zst")).expect("copy");
    wait_until(&d, "the copied package", || {
        model_entry(&d, "copied").is_some()
    });

    std::fs::remove_file(packages(&d).join("dropped.tar.zst")).expect("rm");
    wait_until(&d, "the removed package to go", || {
        model_entry(&d, "dropped").is_none()
    });
    let (s, v) = embed_with(&d, "dropped");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert!(model_entry(&d, "copied").is_some());
    // The store keeps only what packages refer to.
    let store = d.dir.path().join("state/store");
    wait_until(&d, "the unused store entry to be removed", || {
        std::fs::read_dir(&store).expect("store").count() == 2
    });
}

#[test]
fn a_slow_copy_is_verified_once_when_complete() {
    let d = start("models:\n  settle_time: 30s");
    let src = std::fs::read(prepared(&d, "slow.tar.zst", "slow", "1")).expect("read");
    let target = packages(&d).join("slow.tar.zst");
    let mut f = std::fs::File::create(&target).expect("create");
    for chunk in src.chunks(src.len() / 20 + 1) {
        f.write_all(chunk).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(f);
    wait_until(&d, "the slowly copied package", || {
        model_entry(&d, "slow").is_some()
    });
    assert_eq!(count(&d, "slow.tar.zst verified"), 1, "{}", d.log());
    assert!(!d.log().contains("slow.tar.zst rejected"), "{}", d.log());
}

#[test]
fn a_hostile_package_is_rejected_once_left_untouched_and_rechecked_when_replaced() {
    let d = start("");
    let good = std::fs::read(prepared(&d, "good.tar.zst", "replaced", "1")).expect("read");
    let bad_bytes = good[..good.len() / 2].to_vec();
    let bad = packages(&d).join("model.tar.zst");
    let tmp = d.dir.path().join("model.tar.zst.part");
    std::fs::write(&tmp, &bad_bytes).expect("write");
    std::fs::rename(&tmp, &bad).expect("rename");
    wait_until(&d, "the rejection", || {
        rejection(&d, "model.tar.zst").is_some()
    });
    let r = rejection(&d, "model.tar.zst").expect("rejection");
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .starts_with("truncated package"),
        "{r}"
    );
    assert_eq!(d.request("GET", "/health", "").0, 200);

    // Another package arriving triggers a rescan; the unchanged bad file is not re-logged.
    std::fs::copy(
        prepared(&d, "other.tar.zst", "other", "1"),
        packages(&d).join("other.tar.zst"),
    )
    .expect("copy");
    wait_until(&d, "the other package", || {
        model_entry(&d, "other").is_some()
    });
    assert_eq!(count(&d, "model.tar.zst rejected"), 1, "{}", d.log());
    assert_eq!(
        std::fs::read(&bad).expect("still there"),
        bad_bytes,
        "a rejected package is never modified"
    );

    // Replaced by a good package: verified again and served.
    std::fs::write(&tmp, &good).expect("write");
    std::fs::rename(&tmp, &bad).expect("rename");
    wait_until(&d, "the replacement", || {
        model_entry(&d, "replaced").is_some()
    });
    assert!(rejection(&d, "model.tar.zst").is_none());
}

#[test]
fn the_higher_version_wins_and_removing_it_falls_back() {
    let d = start("");
    std::fs::copy(
        prepared(&d, "v1.tar.zst", "multi", "1.9"),
        packages(&d).join("multi-1.tar.zst"),
    )
    .expect("copy");
    std::fs::copy(
        prepared(&d, "v2.tar.zst", "multi", "1.10"),
        packages(&d).join("multi-2.tar.zst"),
    )
    .expect("copy");
    wait_until(&d, "version 1.10", || {
        model_entry(&d, "multi").is_some_and(|m| m["version"] == "1.10")
    });
    assert!(d.log().contains("multi: version 1.10 from"), "{}", d.log());
    std::fs::remove_file(packages(&d).join("multi-2.tar.zst")).expect("rm");
    wait_until(&d, "the fallback to 1.9", || {
        model_entry(&d, "multi").is_some_and(|m| m["version"] == "1.9")
    });
    let (s, v) = embed_with(&d, "multi");
    assert_eq!(s, 200, "{v}\n{}", d.log());
}

#[test]
fn a_package_dir_created_late_or_recreated_is_followed() {
    let d = Daemon::start_with(|dir| write_config(dir, ""), &[]);
    let dir = packages(&d);
    assert!(!dir.exists());
    let src = prepared(&d, "late.tar.zst", "late", "1");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(&src, dir.join("late.tar.zst")).expect("copy");
    wait_until(&d, "a package in a directory created after start", || {
        model_entry(&d, "late").is_some()
    });

    std::fs::remove_dir_all(&dir).expect("rm -r");
    wait_until(&d, "the deleted directory's model to go", || {
        model_entry(&d, "late").is_none()
    });
    std::fs::create_dir(&dir).expect("mkdir again");
    std::fs::copy(&src, dir.join("late.tar.zst")).expect("copy");
    wait_until(&d, "a package in the recreated directory", || {
        model_entry(&d, "late").is_some()
    });
}

fn keypair(dir: &Path, name: &str) -> minisign::KeyPair {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("keypair");
    std::fs::write(
        dir.join(format!("{name}.pub")),
        kp.pk.to_box().expect("box").into_string(),
    )
    .expect("write key");
    kp
}

fn sign(kp: &minisign::KeyPair, file: &Path) {
    let sig = minisign::sign(
        Some(&kp.pk),
        &kp.sk,
        std::fs::File::open(file).expect("open"),
        None,
        None,
    )
    .expect("sign");
    let mut s = file.as_os_str().to_owned();
    s.push(".minisig");
    std::fs::write(PathBuf::from(s), sig.into_string()).expect("write sig");
}

#[test]
fn signatures_are_required_when_configured() {
    let keys = tempfile::tempdir().expect("tempdir");
    let trusted = keypair(keys.path(), "trusted");
    let stranger_dir = tempfile::tempdir().expect("tempdir");
    let stranger = keypair(stranger_dir.path(), "stranger");
    let bundled = tempfile::tempdir().expect("tempdir");
    let default = bundled.path().join("all-MiniLM-L6-v2.tar.zst");
    std::fs::copy(
        common::bundled_dir().join("all-MiniLM-L6-v2.tar.zst"),
        &default,
    )
    .expect("copy");
    sign(&trusted, &default);
    let extra = format!(
        "  require_signature: true\n  trusted_keys_dir: {}\n",
        keys.path().display()
    );
    let bundled_path = bundled.path().to_path_buf();
    let d = Daemon::start_with(
        move |dir| {
            std::fs::create_dir(dir.join("packages")).expect("mkdir");
            write_config(dir, "");
            let cfg = std::fs::read_to_string(dir.join("caxton.yaml")).expect("read");
            let cfg = cfg
                .replace(
                    &common::bundled_dir().display().to_string(),
                    &bundled_path.display().to_string(),
                )
                .replace("models:\n", &format!("models:\n{extra}"));
            std::fs::write(dir.join("caxton.yaml"), cfg).expect("write");
        },
        &[],
    );
    assert_eq!(
        embed_with(&d, "all-MiniLM-L6-v2").0,
        200,
        "the signed default serves"
    );

    let unsigned = prepared(&d, "u.tar.zst", "unsigned", "1");
    std::fs::copy(&unsigned, packages(&d).join("unsigned.tar.zst")).expect("copy");
    wait_until(&d, "unsigned rejected", || {
        rejection(&d, "unsigned.tar.zst").is_some()
    });
    assert_eq!(
        rejection(&d, "unsigned.tar.zst").expect("r")["reason_code"],
        "signature_missing"
    );

    let foreign = prepared(&d, "f.tar.zst", "foreign", "1");
    sign(&stranger, &foreign);
    std::fs::copy(
        format!("{}.minisig", foreign.display()),
        packages(&d).join("foreign.tar.zst.minisig"),
    )
    .expect("copy sig");
    std::fs::copy(&foreign, packages(&d).join("foreign.tar.zst")).expect("copy");
    wait_until(&d, "foreign rejected", || {
        rejection(&d, "foreign.tar.zst").is_some()
    });
    assert_eq!(
        rejection(&d, "foreign.tar.zst").expect("r")["reason_code"],
        "signature_untrusted"
    );

    let signed = prepared(&d, "s.tar.zst", "signed", "1");
    sign(&trusted, &signed);
    std::fs::copy(
        format!("{}.minisig", signed.display()),
        packages(&d).join("signed.tar.zst.minisig"),
    )
    .expect("copy sig");
    std::fs::copy(&signed, packages(&d).join("signed.tar.zst")).expect("copy");
    wait_until(&d, "the signed package", || {
        model_entry(&d, "signed").is_some()
    });

    // An unreadable key file is an error naming it, never skipped: packages are refused.
    std::fs::create_dir(keys.path().join("broken.pub")).expect("mkdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caxton"))
        .arg("reload")
        .env("CAXTON_SOCKET", &d.socket)
        .output()
        .expect("reload");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.pub"), "{err}");
    assert!(err.contains("models.trusted_keys_dir"), "{err}");
    assert_eq!(
        embed_with(&d, "signed").0,
        200,
        "the running configuration stays"
    );
}

#[test]
fn a_damaged_store_entry_is_rebuilt_from_its_package() {
    let d = start("models:\n  validation_interval: 1s");
    let store = d.dir.path().join("state/store");
    let entry = std::fs::read_dir(&store)
        .expect("store")
        .flatten()
        .next()
        .expect("an entry")
        .path();
    let tokenizer = entry.join("tokenizer.json");
    let original = std::fs::read(&tokenizer).expect("read");
    let mut damaged = original.clone();
    damaged[100] ^= 0x20;
    std::fs::write(&tokenizer, &damaged).expect("damage");
    wait_until(&d, "the damaged entry to be rebuilt", || {
        d.log().contains("store_entry_corrupt")
            && std::fs::read(&tokenizer).ok().as_deref() == Some(original.as_slice())
    });
    assert_eq!(embed_with(&d, "all-MiniLM-L6-v2").0, 200);
}

#[test]
fn caxton_models_lists_states_and_caxton_verify_checks_signatures() {
    let d = start("");
    let bad = packages(&d).join("bad.tar.zst");
    std::fs::write(&bad, b"not a package").expect("write");
    wait_until(&d, "the rejection", || {
        rejection(&d, "bad.tar.zst").is_some()
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caxton"))
        .arg("models")
        .env("CAXTON_SOCKET", &d.socket)
        .output()
        .expect("run");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let mut lines = table.lines();
    assert!(lines.next().expect("header").starts_with("ID"), "{table}");
    let model = lines.next().expect("model row");
    assert!(
        model.starts_with("all-MiniLM-L6-v2")
            && model.contains("loaded")
            && model.contains("bundled"),
        "{table}"
    );
    let rejected = lines.next().expect("rejection row");
    assert!(
        rejected.contains("rejected")
            && rejected.contains("bad.tar.zst (not a zstd-compressed package"),
        "{table}"
    );

    let keys = tempfile::tempdir().expect("tempdir");
    let kp = keypair(keys.path(), "k");
    let pkg = prepared(&d, "signed.tar.zst", "signed", "1");
    let verify = |key: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_caxton"))
            .args(["verify", "--key"])
            .arg(key)
            .arg(&pkg)
            .output()
            .expect("run")
    };
    let out = verify(&keys.path().join("k.pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected (signature_missing)"));
    let sig = PathBuf::from(format!("{}.minisig", pkg.display()));
    std::fs::write(&sig, "untrusted comment: not really\nAAAA\n").expect("write");
    let out = verify(&keys.path().join("k.pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected (signature_invalid)"));
    sign(&kp, &pkg);
    let out = verify(&keys.path().join("k.pub"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = keypair(keys.path(), "other");
    let _ = other;
    let out = verify(&keys.path().join("other.pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected (signature_untrusted)"));
}

fn vm_hwm_kib(d: &Daemon) -> u64 {
    let pid = d.child.as_ref().expect("child").id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("VmHWM")
}

#[test]
fn every_hostile_package_is_rejected_while_the_daemon_keeps_serving() {
    let d = start("");
    let peak_before = vm_hwm_kib(&d);
    let corpus = hostile::corpus();
    for (name, bytes, _) in &corpus {
        let tmp = d.dir.path().join(format!("{name}.part"));
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, packages(&d).join(format!("{name}.tar.zst"))).expect("rename");
    }
    for (name, _, expected) in &corpus {
        let file = format!("{name}.tar.zst");
        wait_until(&d, &file, || rejection(&d, &file).is_some());
        let r = rejection(&d, &file).expect("rejection");
        assert_eq!(r["reason_code"], *expected, "{name}: {r}");
        assert!(
            d.log().contains(&format!("{file} rejected")),
            "{name} is logged"
        );
    }
    assert_eq!(d.request("GET", "/health", "").0, 200);
    assert_eq!(embed_with(&d, "all-MiniLM-L6-v2").0, 200);
    // Nothing was written outside the daemon's directories.
    assert!(!d.dir.path().join("escape").exists());
    assert!(!Path::new("/tmp/caxton-absolute-escape").exists());
    let store_entries: Vec<_> = std::fs::read_dir(d.dir.path().join("state/store"))
        .expect("store")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        store_entries.len(),
        1,
        "only the bundled model is stored: {store_entries:?}"
    );
    // The 1 GiB bomb and the rest did not make the daemon's memory balloon.
    let grew = vm_hwm_kib(&d).saturating_sub(peak_before);
    assert!(
        grew < 64 * 1024,
        "peak RSS grew by {grew} KiB while rejecting the corpus"
    );
}

/// Puts `from` at `to` as dpkg unpacks a file: written beside it as `NAME.dpkg-new`, then
/// renamed into place.
fn install_as_dpkg_does(from: &Path, to: &Path) {
    let new = to.with_extension("zst.dpkg-new");
    std::fs::copy(from, &new).expect("copy");
    std::fs::rename(&new, to).expect("rename");
}

#[test]
fn a_package_manager_s_upgrade_switches_versions_with_no_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = start("");
    let (v1, v2) = (
        prepared(&d, "v1.tar.zst", "fleet", "1"),
        prepared(&d, "v2.tar.zst", "fleet", "2"),
    );
    let old = packages(&d).join("fleet-1.tar.zst");
    install_as_dpkg_does(&v1, &old);
    wait_until(&d, "fleet 1 serving", || {
        model_entry(&d, "fleet").is_some_and(|m| m["version"] == "1")
    });

    // A client asks for the model all along, as the fleet's applications do.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (socket, stop) = (d.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            let mut answers = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let body = br#"{"input": "during the upgrade", "model": "fleet"}"#.to_vec();
                let answer = rt.block_on(caxton::cli::client::request(
                    &socket,
                    hyper::Method::POST,
                    "/v1/embeddings",
                    Some(body),
                ));
                answers.push(match answer {
                    Ok((status, body)) => {
                        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
                    }
                    Err(e) => (0, e.to_string()),
                });
            }
            answers
        })
    };
    // dpkg's order: the new version's file in place, then the old one's removed.
    install_as_dpkg_does(&v2, &packages(&d).join("fleet-2.tar.zst"));
    std::fs::remove_file(&old).expect("rm");
    wait_until(&d, "fleet 2 serving", || {
        model_entry(&d, "fleet").is_some_and(|m| m["version"] == "2" && m["state"] == "loaded")
    });
    stop.store(true, Ordering::Release);
    let answers = client.join().expect("client");
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}\nlog:\n{}", d.log());
    assert!(answers.len() >= 2, "{} requests", answers.len());
}
