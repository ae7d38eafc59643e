//! A PyTorch state dict as `torch.save` writes it (its zip format: a protocol-2 pickle that
//! rebuilds each tensor from a storage record, and the storages as raw little-endian bytes),
//! so the tests hand `caxton pack` files in the format BAAI ships bge-m3's heads in, without
//! committing weights or running Python.

use std::io::Write;

/// The `.pt` bytes of an `OrderedDict` of f32 tensors `(name, shape, values)`, archived
/// under `stem/` as torch names it after the file.
pub fn state_dict(stem: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    let global = |p: &mut Vec<u8>, module: &str, name: &str| {
        p.push(b'c');
        p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    };
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    };
    let ordered_dict = |p: &mut Vec<u8>| {
        global(p, "collections", "OrderedDict");
        p.extend_from_slice(b")R");
    };
    ordered_dict(&mut p);
    p.push(b'(');
    for (key, (name, shape, _)) in tensors.iter().enumerate() {
        text(&mut p, name);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        // The storage: ('storage', torch.FloatStorage, key, 'cpu', numel), a persistent id.
        p.push(b'(');
        text(&mut p, "storage");
        global(&mut p, "torch", "FloatStorage");
        text(&mut p, &key.to_string());
        text(&mut p, "cpu");
        int(&mut p, shape.iter().product());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        shape.iter().for_each(|&d| int(&mut p, d));
        p.push(b't');
        // Row-major strides.
        p.push(b'(');
        for i in 0..shape.len() {
            int(&mut p, shape[i + 1..].iter().product());
        }
        p.push(b't');
        p.push(0x89);
        ordered_dict(&mut p);
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entry = |name: String, bytes: &[u8]| {
        zip.start_file(name, stored).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    };
    entry(format!("{stem}/data.pkl"), &p);
    entry(format!("{stem}/byteorder"), b"little");
    for (key, (_, _, values)) in tensors.iter().enumerate() {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        entry(format!("{stem}/data/{key}"), &bytes);
    }
    entry(format!("{stem}/version"), b"3\n");
    zip.finish().expect("zip").into_inner()
}

/// [`state_dict`] of a safetensors file's tensors (f32 only), as `torch.save` would write the
/// same weights: `pytorch_model.bin` for a folder whose `model.safetensors` is `bytes`.
pub fn of_safetensors(stem: &str, bytes: &[u8]) -> Vec<u8> {
    let file = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    let named: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    state_dict(stem, &named)
}
