//! Streaming package verification: one pass that decompresses, walks the tar entries itself,
//! hashes every byte, bounds everything by what the manifest declares, and hands verified bytes
//! to a sink (nothing for `caxton verify`, a staging directory for the store).

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::error::{BudgetExceeded, PackageError};
use super::manifest::{FileEntry, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, check_entry_path};

/// Where verified entry bytes go. Bytes reach a sink only after the entry's header checks
/// passed, and an entry is only complete once [`EntrySink::finish`] is called after its digest
/// matched; a sink must treat anything unfinished as garbage.
pub trait EntrySink {
    /// Writer for one entry.
    type Writer: Write;
    /// Starts an entry at `path` (already checked to be a safe relative path from the manifest)
    /// that will receive `size` bytes.
    fn start(&mut self, path: &str, size: u64) -> io::Result<Self::Writer>;
    /// Where an entry's bytes go, for error messages.
    fn location(&self, path: &str) -> PathBuf {
        PathBuf::from(path)
    }
    /// Called once the entry's size and sha256 matched the manifest.
    fn finish(&mut self, path: &str, writer: Self::Writer) -> io::Result<()>;
}

/// A sink that keeps nothing: verification only.
pub struct DiscardSink;

impl EntrySink for DiscardSink {
    type Writer = io::Sink;
    fn start(&mut self, _path: &str, _size: u64) -> io::Result<io::Sink> {
        Ok(io::sink())
    }
    fn finish(&mut self, _path: &str, _writer: io::Sink) -> io::Result<()> {
        Ok(())
    }
}

/// What a successful verification proves about a package file.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    /// The validated manifest.
    pub manifest: Manifest,
    /// sha256 of the whole compressed file, which keys the store.
    pub package_sha256: String,
    /// Size of the compressed file.
    pub package_size: u64,
}

/// First bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Size of a tar block: headers and the padding of entry data are counted in these.
const BLOCK: u64 = 512;

/// Headers an entry may use (its own plus GNU long-name / PAX extensions); anything needing
/// more than this runs into the decompression bound and is refused.
const HEADER_ALLOWANCE: u64 = 4 * BLOCK;

/// End-of-archive zeros plus padding to the record size that tar writers add.
const TRAILER_ALLOWANCE: u64 = 20 * BLOCK;

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Verifies the package file at `path` (sidecar `.sha256` included) and streams every listed
/// entry into `sink`.
pub fn verify_file<S: EntrySink>(
    path: &Path,
    sink: &mut S,
) -> Result<VerifiedPackage, PackageError> {
    let file = File::open(path).map_err(|e| PackageError::io("open", path, e))?;
    let package_size = file
        .metadata()
        .map_err(|e| PackageError::io("stat", path, e))?
        .len();
    let verified = verify_reader(file, package_size, sink)?;
    check_sidecar(path, &verified.package_sha256)?;
    Ok(verified)
}

/// Verifies a package read from `reader` (the compressed bytes), without sidecar checks.
pub fn verify_reader<R: Read, S: EntrySink>(
    reader: R,
    package_size: u64,
    sink: &mut S,
) -> Result<VerifiedPackage, PackageError> {
    let mut buffered = BufReader::with_capacity(1 << 16, HashingReader::new(reader));
    let head = buffered.fill_buf().map_err(PackageError::from_stream)?;
    if !head.starts_with(&ZSTD_MAGIC) {
        return Err(PackageError::NotZstd(
            "the file does not start with the zstd magic number".into(),
        ));
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(buffered)
        .map_err(|e| PackageError::NotZstd(e.to_string()))?;
    let budget = Rc::new(Cell::new(HEADER_ALLOWANCE + round_up(MAX_MANIFEST_BYTES)));
    let limited = BoundedReader {
        inner: decoder,
        remaining: budget.clone(),
    };
    let mut archive = tar::Archive::new(limited);
    let manifest = walk_entries(&mut archive, &budget, sink)?;

    // Read what follows the last entry: it must be tar padding (zeros), and reading it to the
    // end makes zstd check the stream's integrity and lets us hash the whole file.
    let mut rest = archive.into_inner();
    budget.set(budget.get() + TRAILER_ALLOWANCE);
    let mut buf = [0u8; 8192];
    loop {
        let n = rest.read(&mut buf).map_err(PackageError::from_stream)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(PackageError::Malformed(
                "data follows the end of the tar archive".into(),
            ));
        }
    }
    let mut hashing = rest.inner.finish().into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(PackageError::from_stream)?;
    if hashing.count != package_size {
        return Err(PackageError::Malformed(format!(
            "the file changed while it was read ({} bytes read, {package_size} expected)",
            hashing.count
        )));
    }
    Ok(VerifiedPackage {
        manifest,
        package_sha256: hex::encode(hashing.hasher.finalize()),
        package_size,
    })
}

/// Walks the archive: the manifest first, then every file it lists, each checked and streamed
/// into `sink`; growing `budget` only by what each matched header allows.
fn walk_entries<R: Read, S: EntrySink>(
    archive: &mut tar::Archive<R>,
    budget: &Rc<Cell<u64>>,
    sink: &mut S,
) -> Result<Manifest, PackageError> {
    let entries = archive.entries().map_err(PackageError::from_stream)?;
    let mut manifest: Option<Manifest> = None;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut config_json: Vec<u8> = Vec::new();

    for entry in entries {
        let mut entry = entry.map_err(PackageError::from_stream)?;
        let name = checked_name(&entry, &mut seen)?;
        let header_size = entry.header().size().map_err(PackageError::from_stream)?;

        let Some(manifest) = manifest.as_ref() else {
            // The first entry must be the manifest.
            if name != MANIFEST_NAME {
                return Err(PackageError::ManifestNotFirst { found: name });
            }
            let parsed = read_manifest(&mut entry, header_size)?;
            // The budget grows entry by entry: room for the next header now, room for an entry's
            // data only once its header matched the manifest. So an unlisted entry, or a GNU
            // long-name / PAX header the tar crate would read into memory, never gets more than
            // HEADER_ALLOWANCE bytes, whatever the manifest declares for other files.
            budget.set(budget.get() + HEADER_ALLOWANCE);
            manifest = Some(parsed);
            continue;
        };

        let declared = declared_entry(manifest, &name, header_size)?;
        budget.set(budget.get() + round_up(declared.size) + HEADER_ALLOWANCE);
        let keep_config = name == "config.json";
        if keep_config && declared.size > MAX_CONFIG_BYTES {
            return Err(PackageError::ManifestInvalid(format!(
                "config.json is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                declared.size
            )));
        }
        let config = keep_config.then_some(&mut config_json);
        stream_entry(&mut entry, name, declared, sink, config)?;
    }

    let Some(manifest) = manifest else {
        return Err(PackageError::ManifestMissing);
    };
    check_all_present(&manifest, &seen)?;
    check_model_config(&manifest, &config_json)?;
    Ok(manifest)
}

/// The entry's name, once it is a regular file at a safe path not seen before.
fn checked_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    seen: &mut BTreeSet<String>,
) -> Result<String, PackageError> {
    let name = entry_name(entry)?;
    check_entry_type(entry, &name)?;
    check_entry_path(&name).map_err(|reason| PackageError::UnsafeEntry {
        entry: name.clone(),
        reason: reason.to_string(),
    })?;
    if !seen.insert(name.clone()) {
        return Err(PackageError::DuplicateEntry { entry: name });
    }
    Ok(name)
}

/// Reads and validates the manifest entry, refusing one over [`MAX_MANIFEST_BYTES`] unread.
fn read_manifest<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    header_size: u64,
) -> Result<Manifest, PackageError> {
    if header_size > MAX_MANIFEST_BYTES {
        return Err(PackageError::ManifestInvalid(format!(
            "manifest.yaml is {header_size} bytes; the limit is {MAX_MANIFEST_BYTES}"
        )));
    }
    let mut bytes = Vec::with_capacity(header_size as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(PackageError::from_stream)?;
    Manifest::parse(&bytes).map_err(|e| PackageError::ManifestInvalid(e.to_string()))
}

/// What the manifest declares for entry `name`, whose header must give the same size.
fn declared_entry<'m>(
    manifest: &'m Manifest,
    name: &str,
    header_size: u64,
) -> Result<&'m FileEntry, PackageError> {
    let Some(declared) = manifest.file(name) else {
        return Err(PackageError::ExtraEntry {
            entry: name.to_string(),
        });
    };
    if header_size != declared.size {
        return Err(PackageError::SizeMismatch {
            entry: name.to_string(),
            declared: declared.size,
            actual: header_size,
        });
    }
    Ok(declared)
}

/// Streams an entry's bytes into `sink` (and into `config` when given), then finishes it in
/// the sink once its size and sha256 are the declared ones.
fn stream_entry<R: Read, S: EntrySink>(
    entry: &mut tar::Entry<'_, R>,
    name: String,
    declared: &FileEntry,
    sink: &mut S,
    mut config: Option<&mut Vec<u8>>,
) -> Result<(), PackageError> {
    let mut writer = sink
        .start(&name, declared.size)
        .map_err(|e| PackageError::io("write", &sink.location(&name), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(PackageError::from_stream)?;
        if n == 0 {
            break;
        }
        got += n as u64;
        hasher.update(&buf[..n]);
        if let Some(config) = config.as_deref_mut() {
            config.extend_from_slice(&buf[..n]);
        }
        writer
            .write_all(&buf[..n])
            .map_err(|e| PackageError::io("write", &sink.location(&name), e))?;
    }
    if got != declared.size {
        return Err(PackageError::Truncated(format!(
            "{name} ends after {got} of its {} bytes",
            declared.size
        )));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != declared.sha256 {
        return Err(PackageError::HashMismatch {
            entry: name,
            expected: declared.sha256.clone(),
            actual,
        });
    }
    sink.finish(&name, writer)
        .map_err(|e| PackageError::io("write", &sink.location(&name), e))
}

/// Every file the manifest lists must have been in the archive.
fn check_all_present(manifest: &Manifest, seen: &BTreeSet<String>) -> Result<(), PackageError> {
    let missing: Vec<String> = manifest
        .files
        .iter()
        .filter(|f| !seen.contains(&f.path))
        .map(|f| f.path.clone())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PackageError::MissingEntries { entries: missing })
    }
}

/// `config.json` is read into memory to check it against the manifest; it is small in every
/// real model, so anything larger is refused rather than buffered.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The (verified) `config.json` must describe the model the manifest declares: the same width
/// and an architecture the manifest's `architecture` covers.
fn check_model_config(manifest: &Manifest, bytes: &[u8]) -> Result<(), PackageError> {
    #[derive(serde::Deserialize)]
    struct ModelConfig {
        model_type: Option<String>,
        hidden_size: Option<usize>,
        /// DistilBERT's.
        dim: Option<usize>,
        /// NomicBERT's own (its configs may carry both).
        n_embd: Option<usize>,
        /// A sparse model's width.
        vocab_size: Option<usize>,
    }
    let config: ModelConfig = serde_json::from_slice(bytes).map_err(|e| {
        PackageError::ManifestInvalid(format!("config.json is not valid JSON: {e}"))
    })?;
    if manifest.kind == crate::package::ModelKind::Sparse {
        // A sparse model weighs every term of its vocabulary.
        if config.vocab_size != Some(manifest.dimensions) {
            return Err(PackageError::ManifestInvalid(format!(
                "dimensions: the manifest says {} (a sparse model's vocabulary), config.json vocab_size is {}",
                manifest.dimensions,
                config
                    .vocab_size
                    .map_or_else(|| "missing".to_string(), |v| v.to_string())
            )));
        }
    } else if manifest.kind == crate::package::ModelKind::ImageText {
        let width = super::towers_config::TowersConfig::parse(bytes)
            .map_err(PackageError::ManifestInvalid)?
            .width(manifest.architecture);
        if width != manifest.dimensions {
            return Err(PackageError::ManifestInvalid(format!(
                "dimensions: the manifest says {}, and config.json's towers make vectors of {width}",
                manifest.dimensions
            )));
        }
    } else {
        check_width(
            manifest,
            config.n_embd.or(config.hidden_size).or(config.dim),
        )?;
    }
    let expected = manifest.architecture;
    if !config
        .model_type
        .as_deref()
        .is_some_and(|t| expected.model_types().contains(&t))
    {
        return Err(PackageError::ManifestInvalid(format!(
            "architecture: the manifest says {}, config.json model_type is {:?}",
            expected.as_str(),
            config.model_type.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The encoder's width in `config.json` (`hidden`) must be the manifest's: the vectors' own,
/// or the first Dense module's input.
fn check_width(manifest: &Manifest, hidden: Option<usize>) -> Result<(), PackageError> {
    let width = manifest.hidden_size();
    match hidden {
        Some(h) if h == width => {}
        Some(h) => {
            return Err(PackageError::ManifestInvalid(
                if manifest.dense.is_empty() {
                    format!(
                        "dimensions: the manifest says {}, config.json hidden_size is {h}",
                        manifest.dimensions
                    )
                } else {
                    format!(
                        "dense[0].inputs: the manifest says {width}, config.json hidden_size is {h}"
                    )
                },
            ));
        }
        None => {
            return Err(PackageError::ManifestInvalid(
                "config.json has no hidden_size".into(),
            ));
        }
    }
    Ok(())
}

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, PackageError> {
    let raw = entry.path_bytes();
    String::from_utf8(raw.into_owned()).map_err(|e| PackageError::UnsafeEntry {
        entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        reason: "the name is not UTF-8".into(),
    })
}

fn check_entry_type<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<(), PackageError> {
    use tar::EntryType;
    let kind = match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous => return Ok(()),
        EntryType::Symlink => "a symbolic link",
        EntryType::Link => "a hard link",
        EntryType::Char => "a character device",
        EntryType::Block => "a block device",
        EntryType::Fifo => "a FIFO",
        EntryType::Directory => "a directory",
        _ => "not a regular file",
    };
    Err(PackageError::UnsafeEntry {
        entry: name.to_string(),
        reason: format!("it is {kind}; only regular files are allowed"),
    })
}

/// Checks `PATH.sha256` (sha256sum format) against the package digest when the sidecar exists.
pub fn check_sidecar(package: &Path, package_sha256: &str) -> Result<(), PackageError> {
    let sidecar = sidecar_path(package);
    let text = match super::open_regular(&sidecar) {
        Ok(f) => {
            let mut text = String::new();
            f.take(4096)
                .read_to_string(&mut text)
                .map_err(|e| PackageError::io("read", &sidecar, e))?;
            text
        }
        Err(PackageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(PackageError::Sidecar(e.to_string())),
    };
    let mut words = text.split_whitespace();
    let expected = words.next().unwrap_or("").to_ascii_lowercase();
    let named = words.next().map(|w| w.trim_start_matches('*'));
    let file_name = package.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PackageError::Sidecar(format!(
            "{} does not start with a sha256 digest",
            sidecar.display()
        )));
    }
    if let Some(named) = named
        && Path::new(named).file_name().and_then(|n| n.to_str()) != Some(file_name)
    {
        return Err(PackageError::Sidecar(format!(
            "{} is for {named}, not {file_name}",
            sidecar.display()
        )));
    }
    if expected != package_sha256 {
        return Err(PackageError::Sidecar(format!(
            "{} says sha256 {expected}, the package has {package_sha256}",
            sidecar.display()
        )));
    }
    Ok(())
}

/// `FILE.tar.zst.sha256` for `FILE.tar.zst`.
pub fn sidecar_path(package: &Path) -> PathBuf {
    let mut s = package.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Hashes and counts every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Refuses to yield more decompressed bytes than the shared budget allows, which is what stops
/// a zstd bomb: the budget only grows by what the (size-capped) manifest declares for entries
/// whose headers matched it.
struct BoundedReader<R> {
    inner: R,
    remaining: Rc<Cell<u64>>,
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.remaining.get();
        if remaining == 0 {
            // Only fail if there really is more data: a stream ending exactly at the budget is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(BudgetExceeded)),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.remaining.set(remaining - n as u64);
        Ok(n)
    }
}
