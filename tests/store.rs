//! The verified store's disk: only the serving version of each model and one previous version are
//! unpacked, fallbacks go oldest first past `store.max_size`, the serving versions never do,
//! and a package that does not fit on the filesystem is refused with the numbers.

mod common;

use std::path::{Path, PathBuf};

use common::{Daemon, bundled_copy, model_entry, rejection, wait_until, write_config};

fn start(extra: &str) -> Daemon {
    common::start_with_dropin(extra)
}

/// Drops version `version` of model `id` into the package directory (prepared beside it and
/// renamed in, as a careful operator does).
fn drop_version(d: &Daemon, id: &str, version: &str) -> PathBuf {
    let name = format!("{id}-{version}.tar.zst");
    let src = d.dir.path().join(&name);
    bundled_copy(&src, id, version);
    let dst = d.dir.path().join("packages").join(&name);
    std::fs::rename(&src, &dst).expect("rename into place");
    dst
}

/// The (id, version) of every entry of the test daemon's store, sorted.
fn stored(d: &Daemon) -> Vec<(String, String)> {
    stored_in(&d.dir.path().join("state/store"))
}

/// The (id, version) of every entry of the store at `store`, sorted.
fn stored_in(store: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(store)
        .expect("store")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        // An entry being removed as we look is gone.
        .filter_map(|e| {
            let manifest = std::fs::read_to_string(e.path().join("manifest.yaml")).ok()?;
            let field = |key: &str| {
                manifest
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .expect("field")
                    .trim_matches(|c| c == ' ' || c == '\'')
                    .to_string()
            };
            Some((field("id:"), field("version:")))
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn serves(d: &Daemon, id: &str, version: &str) -> bool {
    model_entry(d, id).is_some_and(|m| m["version"] == version)
}

#[test]
fn only_the_serving_version_and_one_fallback_are_unpacked() {
    let d = start("");
    let bundled = ("all-MiniLM-L6-v2", "1");
    drop_version(&d, "m", "1");
    wait_until(&d, "m 1", || serves(&d, "m", "1"));
    drop_version(&d, "m", "2");
    wait_until(&d, "m 2", || serves(&d, "m", "2"));
    drop_version(&d, "m", "3");
    wait_until(&d, "m 3 with m 2 as its fallback", || {
        serves(&d, "m", "3") && stored(&d) == pairs(&[bundled, ("m", "2"), ("m", "3")])
    });
    // Version 1, stored while it served, is beyond the one previous version kept now.
    wait_until(&d, "the removal in the journal", || {
        d.log()
            .contains("(m version 1) removed: no package version the daemon keeps refers to it")
    });
    // Version 1 is still verified and listed as superseded in the journal, only not unpacked.
    assert!(d.log().contains("m: version 3 from"), "{}", d.log());

    // The winner goes: the fallback serves at once, from the store.
    std::fs::remove_file(d.dir.path().join("packages/m-3.tar.zst")).expect("rm");
    wait_until(&d, "m 2 serving", || {
        serves(&d, "m", "2") && stored(&d) == pairs(&[bundled, ("m", "2")])
    });
    assert_eq!(common_embed(&d, "m"), 200);
    // Then it goes too: version 1, never unpacked until now, is unpacked and serves.
    std::fs::remove_file(d.dir.path().join("packages/m-2.tar.zst")).expect("rm");
    wait_until(&d, "m 1 serving", || {
        serves(&d, "m", "1") && stored(&d) == pairs(&[bundled, ("m", "1")])
    });
    assert_eq!(common_embed(&d, "m"), 200);
}

fn common_embed(d: &Daemon, model: &str) -> u16 {
    common::embed_with(d, model).0
}

#[test]
fn past_max_size_fallbacks_go_and_the_serving_versions_stay() {
    // Room for two unpacked packages (46 MB each), not three.
    let d = start("store:\n  max_size: 100000000");
    let bundled = ("all-MiniLM-L6-v2", "1");
    drop_version(&d, "m", "1");
    wait_until(&d, "m 1", || serves(&d, "m", "1"));
    drop_version(&d, "m", "2");
    wait_until(&d, "m 2, without a fallback", || {
        serves(&d, "m", "2") && stored(&d) == pairs(&[bundled, ("m", "2")])
    });
    wait_until(&d, "the removal in the journal", || {
        d.log()
            .contains("(m version 1) removed: no package version the daemon keeps refers to it")
    });
    let (_, status) = d.request("GET", "/api/memory/status", "");
    assert_eq!(status["store"]["max_bytes"], 100_000_000, "{status}");
    assert_eq!(status["store"]["entries"], 2);

    // A bound the serving versions alone pass: they stay, and the journal says so once.
    std::fs::write(
        d.dir.path().join("conf.d/50-test.yaml"),
        "store:\n  max_size: 10000000\n",
    )
    .expect("write");
    wait_until(&d, "the over-bound warning", || {
        d.log().contains("caxton_event=\"store_over_bound\"")
    });
    assert!(
        d.log().contains(
            "more than store.max_size (9 MiB); they are kept (no previous versions are); raise store.max_size or remove packages"
        ),
        "{}",
        d.log()
    );
    assert_eq!(stored(&d), pairs(&[bundled, ("m", "2")]));
    assert_eq!(common_embed(&d, "m"), 200);
    assert_eq!(common_embed(&d, "all-MiniLM-L6-v2"), 200);
}

/// Mounts a tmpfs of `bytes` at `dir`; `None` (with the reason printed) where this process may
/// not mount (not root, or a container without the capability).
fn small_filesystem(dir: &Path, bytes: u64) -> Option<Unmount> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .output()
        .expect("mount");
    if !out.status.success() {
        common::skip::skip(&format!(
            "cannot mount a small tmpfs ({}); the free-space check needs root",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    Some(Unmount(dir.to_path_buf()))
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_package_the_disk_cannot_hold_is_refused_with_the_space_needed_and_free() {
    let parent = tempfile::tempdir().expect("tempdir");
    let state = parent.path().join("state");
    // The bundled model (44 MiB) and the 64 MiB kept spare fit in 140 MiB; a second does not.
    let Some(_mount) = small_filesystem(&state, 140 << 20) else {
        return;
    };
    let state_for_config = state.clone();
    let d = Daemon::start_with(
        move |dir| {
            std::fs::create_dir(dir.join("packages")).expect("mkdir");
            write_config(dir, "");
            let config = std::fs::read_to_string(dir.join("caxton.yaml")).expect("read");
            let config = config.replace(
                &format!("state_dir: {}", dir.join("state").display()),
                &format!("state_dir: {}", state_for_config.display()),
            );
            std::fs::write(dir.join("caxton.yaml"), config).expect("write");
        },
        &[],
    );
    let file = drop_version(&d, "big", "1");
    wait_until(&d, "the refusal", || {
        rejection(&d, "big-1.tar.zst").is_some()
    });
    let r = rejection(&d, "big-1.tar.zst").expect("rejection");
    assert_eq!(r["reason_code"], "io_error", "{r}");
    let reason = r["reason"].as_str().expect("reason");
    let free = nix::sys::statvfs::statvfs(&state).expect("statvfs");
    assert!(
        reason.contains("not enough disk space to unpack model.safetensors: it needs 45441944 bytes and ")
            && reason.contains(&format!("{} has ", state.join("store").display()))
            && reason.contains(
                "bytes free, of which 67108864 are kept spare for the rest of the device; free some space (or lower store.max_size), the package is tried again at the next scan"
            ),
        "{reason}"
    );
    assert!(
        d.log()
            .contains(&format!("package {} rejected", file.display())),
        "{}",
        d.log()
    );
    // The numbers are the filesystem's: what it reports free is below need + spare.
    let available = free.blocks_available() as u64 * free.fragment_size() as u64;
    assert!(available < 45_441_944 + (64 << 20), "{available}");
    // Nothing half-unpacked is left, and the bundled model still serves.
    assert_eq!(
        stored_in(&state.join("store")),
        pairs(&[("all-MiniLM-L6-v2", "1")])
    );
    assert_eq!(common_embed(&d, "all-MiniLM-L6-v2"), 200);
}
