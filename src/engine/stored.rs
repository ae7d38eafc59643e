//! Weights as a package stores them, read into candle tensors.
//!
//! A safetensors file is read as a stream, tensor by tensor, each straight into its own typed
//! buffer: the file's bytes and its tensors are never both held, so loading a model peaks near
//! the size of its weights, not twice that.
//!
//! int8 matrices (`I8` values plus f32 block scales under `NAME.int8_scales`, see
//! [`crate::package::manifest::StoredWeights::Int8`]) become one `U8` tensor of packed rows —
//! a row's values, then its blocks' scales as little-endian f32 — so that the checkpoint
//! mappers' renames, row concatenations and row splits move values and scales together.
//! [`take_f32`] widens such a matrix; [`take_int8`] hands its values and scales over as they are.

use std::collections::HashMap;
use std::io::Read;

use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

use super::kernels;
use crate::memory::mapped::Mapped;
use crate::package::{INT8_BLOCK, INT8_SCALES_SUFFIX};

/// A checkpoint's tensors by name, as read from a package (the checkpoint mappers then
/// rename them to the encoder's).
pub type Tensors = HashMap<String, Tensor>;

/// Bytes of one scale in a packed row.
const SCALE_BYTES: usize = 4;

/// Reads a safetensors file of `len` bytes (named `file` in errors) from `r` into tensors.
pub fn read(r: &mut dyn Read, len: u64, file: &str) -> Result<Tensors, String> {
    let infos = read_header(r, len, file)?;
    let mut tensors = Tensors::with_capacity(infos.len());
    let mut int8 = Int8Halves::default();
    for (name, info) in infos {
        read_tensor(r, name, info, &mut tensors, &mut int8, file)?;
    }
    int8.pair_the_rest(&mut tensors, file)?;
    Ok(tensors)
}

/// The header's tensors in the order of their bytes, which must follow the header back to
/// back up to the end of the file.
fn read_header(
    r: &mut dyn Read,
    len: u64,
    file: &str,
) -> Result<Vec<(String, TensorInfo)>, String> {
    let io = |e: std::io::Error| format!("{file}: {e}");
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    // safetensors itself caps headers at 100 MB.
    if n > 100_000_000 || n + 8 > len {
        return Err(format!(
            "{file}: a header of {n} bytes does not fit a file of {len}"
        ));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(io)?;
    let mut header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("{file}: header: {e}"))?;
    header.remove("__metadata__");
    let mut infos = header
        .into_iter()
        .map(|(name, v)| {
            serde_json::from_value::<TensorInfo>(v)
                .map(|i| (name.clone(), i))
                .map_err(|e| format!("{file}: header entry {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    infos.sort_by_key(|(_, i)| i.data_offsets);
    check_offsets(&infos, n, len, file)?;
    Ok(infos)
}

/// Refuses tensors (in the order of their bytes) that leave a gap, overlap, or do not end
/// where the file of `len` bytes with a `header` of that many bytes does.
fn check_offsets(
    infos: &[(String, TensorInfo)],
    header: u64,
    len: u64,
    file: &str,
) -> Result<(), String> {
    let mut at = 0usize;
    for (name, info) in infos {
        let (begin, end) = info.data_offsets;
        let expected = info.shape.iter().product::<usize>() * info.dtype.bitsize() / 8;
        if begin != at || end.checked_sub(begin) != Some(expected) {
            return Err(format!(
                "{file}: tensor {name}'s bytes {begin}..{end} are not the {expected} that follow byte {at}"
            ));
        }
        at = end;
    }
    if at as u64 + 8 + header != len {
        return Err(format!(
            "{file}: its tensors end at byte {}, the file at {len}",
            at as u64 + 8 + header
        ));
    }
    Ok(())
}

/// int8 values and their scales, whichever came first, until the other arrives.
#[derive(Default)]
struct Int8Halves {
    values: HashMap<String, (Vec<u8>, Vec<usize>)>,
    scales: HashMap<String, Vec<f32>>,
}

impl Int8Halves {
    /// Reads int8 tensor `name` (`count` values of `shape`): into its packed rows when its
    /// scales came first (as safetensors orders f32 before int8: the rows are read into their
    /// packed places, with no copy of a table as large as the vocabulary), else kept for them.
    fn read_int8(
        &mut self,
        r: &mut dyn Read,
        name: String,
        shape: Vec<usize>,
        tensors: &mut Tensors,
        file: &str,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{file}: {e}");
        if let Some(s) = self.scales.remove(&name) {
            let packed = read_packed(r, &s, &shape, io)
                .map_err(|why| format!("{file}: int8 tensor {name}: {why}"))?;
            tensors.insert(name, packed);
        } else {
            let count = shape.iter().product::<usize>();
            let bytes = read_values(r, count, 1, |b| b[0]).map_err(io)?;
            self.values.insert(name, (bytes, shape));
        }
        Ok(())
    }

    /// Packs the values that came before their scales; refuses values without scales and
    /// scales without values.
    fn pair_the_rest(mut self, tensors: &mut Tensors, file: &str) -> Result<(), String> {
        for (name, (q, shape)) in self.values {
            let s = self.scales.remove(&name).ok_or_else(|| {
                format!("{file}: int8 tensor {name} has no {name}{INT8_SCALES_SUFFIX}")
            })?;
            let packed = pack_rows(&q, &s, &shape)
                .map_err(|why| format!("{file}: int8 tensor {name}: {why}"))?;
            tensors.insert(name, packed);
        }
        if let Some(orphan) = self.scales.keys().next() {
            return Err(format!(
                "{file}: {orphan}{INT8_SCALES_SUFFIX} scales no int8 tensor {orphan}"
            ));
        }
        Ok(())
    }
}

/// Reads the next tensor of the file, `name`, into `tensors` as its dtype's values; int8
/// values and their scales go to `int8` until they pair. A dtype no family reads is skipped.
fn read_tensor(
    r: &mut dyn Read,
    name: String,
    info: TensorInfo,
    tensors: &mut Tensors,
    int8: &mut Int8Halves,
    file: &str,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{file}: {e}");
    let count = info.shape.iter().product::<usize>();
    let shape = info.shape.clone();
    let cpu = &Device::Cpu;
    let made = |t: candle_core::Result<Tensor>| t.map_err(|e| format!("{file}: {name}: {e}"));
    let tensor = match info.dtype {
        Dtype::I8 => return int8.read_int8(r, name, shape, tensors, file),
        Dtype::F32 => {
            let v = read_values(r, count, 4, |b| {
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            })
            .map_err(io)?;
            if let Some(owner) = name.strip_suffix(INT8_SCALES_SUFFIX) {
                int8.scales.insert(owner.to_string(), v);
                return Ok(());
            }
            made(Tensor::from_vec(v, shape, cpu))?
        }
        Dtype::F16 => made(Tensor::from_vec(
            read_values(r, count, 2, |b| half::f16::from_le_bytes([b[0], b[1]])).map_err(io)?,
            shape,
            cpu,
        ))?,
        Dtype::BF16 => made(Tensor::from_vec(
            read_values(r, count, 2, |b| half::bf16::from_le_bytes([b[0], b[1]])).map_err(io)?,
            shape,
            cpu,
        ))?,
        Dtype::I64 => made(Tensor::from_vec(
            read_values(r, count, 8, |b| {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            })
            .map_err(io)?,
            shape,
            cpu,
        ))?,
        Dtype::U8 | Dtype::BOOL => made(Tensor::from_vec(
            read_values(r, count, 1, |b| b[0]).map_err(io)?,
            shape,
            cpu,
        ))?,
        other => {
            // Not a weight any family reads (position ids are I64): skipped, not refused.
            let skipped = info.data_offsets.1 - info.data_offsets.0;
            std::io::copy(&mut r.take(skipped as u64), &mut std::io::sink()).map_err(io)?;
            tracing::debug!(tensor = %name, dtype = ?other, "{file}: tensor of a dtype the engine does not read, skipped");
            return Ok(());
        }
    };
    tensors.insert(name, tensor);
    Ok(())
}

/// Reads `count` values of `size` bytes each, converted by `from`, a MiB at a time.
fn read_values<T>(
    r: &mut dyn Read,
    count: usize,
    size: usize,
    from: impl Fn(&[u8]) -> T,
) -> std::io::Result<Vec<T>> {
    let mut out = Vec::with_capacity(count);
    let cap = (1 << 20) / size * size;
    let mut buf = vec![0u8; cap];
    let mut left = count * size;
    while left > 0 {
        let chunk = &mut buf[..left.min(cap)];
        r.read_exact(chunk)?;
        out.extend(chunk.chunks_exact(size).map(&from));
        left -= chunk.len();
    }
    Ok(out)
}

/// An int8 matrix of `shape` read from `r` straight into packed rows beside its `scales`.
fn read_packed(
    r: &mut dyn Read,
    scales: &[f32],
    shape: &[usize],
    io: impl Fn(std::io::Error) -> String,
) -> Result<Tensor, String> {
    let (rows, cols) = check_int8(scales, shape)?;
    let width = packed_width(cols);
    let mut packed = vec![0u8; rows * width];
    for (row, s) in packed
        .chunks_exact_mut(width)
        .zip(scales.chunks_exact(cols / INT8_BLOCK))
    {
        let (values, tail) = row.split_at_mut(cols);
        r.read_exact(values).map_err(&io)?;
        for (t, s) in tail.chunks_exact_mut(SCALE_BYTES).zip(s) {
            t.copy_from_slice(&s.to_le_bytes());
        }
    }
    Tensor::from_vec(packed, (rows, width), &Device::Cpu).map_err(|e| e.to_string())
}

/// The rows and columns of an int8 matrix of `shape` with these block `scales`, if they fit.
fn check_int8(scales: &[f32], shape: &[usize]) -> Result<(usize, usize), String> {
    let &[rows, cols] = shape else {
        return Err(format!("shape {shape:?} is not a matrix"));
    };
    if cols % INT8_BLOCK != 0 || scales.len() != rows * cols / INT8_BLOCK {
        return Err(format!(
            "{} scales for a {rows}×{cols} matrix; one per row and block of {INT8_BLOCK} expected",
            scales.len()
        ));
    }
    if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
        return Err(format!("a scale is {s}"));
    }
    Ok((rows, cols))
}

/// int8 `values` (`[rows, cols]`) and their block `scales` as one `U8` tensor of packed rows.
fn pack_rows(values: &[u8], scales: &[f32], shape: &[usize]) -> Result<Tensor, String> {
    let (rows, cols) = check_int8(scales, shape)?;
    let width = packed_width(cols);
    let mut packed = Vec::with_capacity(rows * width);
    for (row, s) in values
        .chunks_exact(cols)
        .zip(scales.chunks_exact(cols / INT8_BLOCK))
    {
        packed.extend_from_slice(row);
        packed.extend(s.iter().flat_map(|s| s.to_le_bytes()));
    }
    Tensor::from_vec(packed, (rows, width), &Device::Cpu).map_err(|e| e.to_string())
}

/// Bytes of a packed row of `cols` int8 values.
fn packed_width(cols: usize) -> usize {
    cols + cols / INT8_BLOCK * SCALE_BYTES
}

/// Whether `t` holds int8 packed rows of a `[rows, cols]` matrix.
pub fn is_packed(t: &Tensor, shape: &[usize]) -> bool {
    matches!(shape, &[rows, cols] if t.dtype() == DType::U8
        && cols % INT8_BLOCK == 0
        && t.dims() == [rows, packed_width(cols)])
}

/// Tensor `name` of `tensors` (file `file`), which must have `shape`, widened to f32 values.
pub fn take_f32(
    tensors: &mut Tensors,
    name: &str,
    shape: &[usize],
    file: &str,
) -> Result<Vec<f32>, String> {
    let t = take(tensors, name, file)?;
    if is_packed(&t, shape) {
        let cols = shape[1];
        let mut out = Vec::with_capacity(shape[0] * cols);
        with_bytes(&t, |bytes| {
            for row in bytes.chunks_exact(packed_width(cols)) {
                let (values, scales) = row.split_at(cols);
                for (block, s) in values.chunks_exact(INT8_BLOCK).zip(scales_of(scales)) {
                    out.extend(block.iter().map(|&q| f32::from(q as i8) * s));
                }
            }
        })
        .map_err(|e| format!("{file}: tensor {name}: {e}"))?;
        return Ok(out);
    }
    if t.dims() != shape {
        return Err(format!(
            "{file}: tensor {name} has shape {:?}, {} implies {shape:?}",
            t.dims(),
            if file == "model.safetensors" {
                "config.json"
            } else {
                "the manifest"
            }
        ));
    }
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("{file}: tensor {name}: {e}"))
}

/// Tensor `name` as the int8 rows it is stored as, when it is; otherwise it stays in
/// `tensors` and the answer is `None`.
pub fn take_int8(
    tensors: &mut Tensors,
    name: &str,
    shape: &[usize],
    file: &str,
) -> Result<Option<Int8Rows>, String> {
    match tensors.get(name) {
        Some(t) if is_packed(t, shape) => {
            let tensor = take(tensors, name, file)?
                .contiguous()
                .map_err(|e| format!("{file}: tensor {name}: {e}"))?;
            // Checked once here, so that reading a row cannot fail.
            Int8Rows::new(tensor, shape[1])
                .map(Some)
                .map_err(|e| format!("{file}: tensor {name}: {e}"))
        }
        _ => Ok(None),
    }
}

fn take(tensors: &mut Tensors, name: &str, file: &str) -> Result<Tensor, String> {
    tensors
        .remove(name)
        .ok_or_else(|| format!("{file}: no tensor {name}"))
}

/// The bytes of a contiguous `U8` tensor in memory, without a copy.
fn with_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("packed int8 rows must be in main memory")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("packed int8 rows must be contiguous")
    };
    let all = cpu.as_slice::<u8>()?;
    match all.get(start..end) {
        Some(bytes) => Ok(f(bytes)),
        None => candle_core::bail!("packed int8 rows out of their storage"),
    }
}

/// A packed row's block scales.
fn scales_of(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(SCALE_BYTES)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// A matrix stored as int8 rows (each row's values, then its blocks' scales).
pub struct Int8Rows {
    held: Held,
    cols: usize,
}

/// Where [`Int8Rows`] keeps its bytes.
enum Held {
    /// Copied into a mapping of its own ([`crate::memory::mapped`]).
    Mapped(Mapped<u8>),
    /// Kept in the tensor that carried it: glibc maps a block of more than [`MALLOC_MAPS`]
    /// whole whatever its tunables (its free unmaps it), and a copy would briefly hold the
    /// table twice (an embedding table of 262,144 words is 226 MB even in int8).
    Tensor(Tensor),
}

/// Above this, glibc's malloc always gives a block a mapping of its own: the most its mmap
/// threshold can be (`HEAP_MAX_SIZE / 2` on 64-bit targets, whether set or grown).
const MALLOC_MAPS: usize = 32 << 20;

impl Int8Rows {
    /// Rows of `cols` values from `tensor` (contiguous `U8` packed rows in main memory).
    fn new(tensor: Tensor, cols: usize) -> candle_core::Result<Int8Rows> {
        let held = match tensor.elem_count() > MALLOC_MAPS {
            true => {
                with_bytes(&tensor, |_| ())?;
                Held::Tensor(tensor)
            }
            false => Held::Mapped(with_bytes(&tensor, Mapped::from_slice)?),
        };
        Ok(Int8Rows { held, cols })
    }

    /// `f` of the packed rows' bytes.
    fn with_rows<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &self.held {
            Held::Mapped(bytes) => f(bytes),
            // `Int8Rows::new` read these bytes before keeping the tensor; nothing changes them.
            Held::Tensor(t) => with_bytes(t, f)
                .unwrap_or_else(|e| unreachable!("int8 rows checked when they were kept: {e}")),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.with_rows(|b| b.len())
    }

    /// Rows (outputs) held.
    pub fn rows(&self) -> usize {
        self.bytes() / packed_width(self.cols).max(1)
    }

    /// The rows of `parts`, one after the other, as an int8 layer's weights (each row an
    /// output): the stored values and scales as they are, no float in between.
    pub fn packed(parts: &[&Int8Rows]) -> Result<kernels::int8::Packed, String> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if parts.iter().any(|p| p.cols != cols) {
            return Err("int8 rows of different widths cannot form one layer".into());
        }
        let width = packed_width(cols);
        let joined: Vec<u8>;
        let all: &[u8] = match parts {
            [one] => return Ok(one.with_rows(|rows| layer_of_rows(rows, cols, width))),
            // A layer's few parts (query and key): a copy of their rows for a moment.
            _ => {
                joined = parts
                    .iter()
                    .flat_map(|p| p.with_rows(<[u8]>::to_vec))
                    .collect();
                &joined
            }
        };
        Ok(layer_of_rows(all, cols, width))
    }

    /// `out = row id + other`, the row widened block by block.
    pub fn add_row(&self, id: usize, other: &[f32], out: &mut [f32]) {
        let width = packed_width(self.cols);
        self.with_rows(|bytes| {
            let (values, scales) = bytes[id * width..(id + 1) * width].split_at(self.cols);
            let blocks = values
                .chunks_exact(INT8_BLOCK)
                .zip(other.chunks_exact(INT8_BLOCK))
                .zip(out.chunks_exact_mut(INT8_BLOCK));
            for (((q, b), o), s) in blocks.zip(scales_of(scales)) {
                for ((o, &q), &b) in o.iter_mut().zip(q).zip(b) {
                    *o = f32::from(q as i8) * s + b;
                }
            }
        });
    }
}

/// Packed rows of `width` bytes (`cols` values, then the scales) as an int8 layer.
fn layer_of_rows(bytes: &[u8], cols: usize, width: usize) -> kernels::int8::Packed {
    let rows: Vec<&[u8]> = bytes.chunks_exact(width).collect();
    kernels::int8::Packed::from_quantized(
        cols,
        rows.len(),
        |o, i| rows[o][i] as i8,
        |o, b| {
            let at = cols + b * SCALE_BYTES;
            let c = &rows[o][at..at + SCALE_BYTES];
            f32::from_le_bytes([c[0], c[1], c[2], c[3]])
        },
    )
}

/// `t` times `mul`: on packed int8 rows, their scales (values and shape unchanged); on floats,
/// in f32 (the dtype becomes f32).
pub fn scale(t: Tensor, mul: f64) -> candle_core::Result<Tensor> {
    if t.dtype() != DType::U8 {
        return t.to_dtype(DType::F32)?.affine(mul, 0.0);
    }
    let &[rows, width] = t.dims() else {
        candle_core::bail!("packed int8 rows must be a matrix, not {:?}", t.dims())
    };
    let cols = width * INT8_BLOCK / (INT8_BLOCK + SCALE_BYTES);
    if packed_width(cols) != width {
        candle_core::bail!("{width} bytes is no packed int8 row");
    }
    let mut bytes = t.flatten_all()?.to_vec1::<u8>()?;
    drop(t);
    for row in bytes.chunks_exact_mut(width) {
        for c in row[cols..].chunks_exact_mut(SCALE_BYTES) {
            let s = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * mul as f32;
            c.copy_from_slice(&s.to_le_bytes());
        }
    }
    Tensor::from_vec(bytes, (rows, width), &Device::Cpu)
}

#[cfg(test)]
mod tests;
