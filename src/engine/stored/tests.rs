use super::*;
use crate::package::pack::safetensors_file as file;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_all(bytes: &[u8]) -> Result<Tensors, String> {
    read(&mut &bytes[..], bytes.len() as u64, "model.safetensors")
}

/// A 4×64 int8 matrix: values `(r·64 + c) mod 255 − 127`, scale of row r block j `(r + 1)·(j + 1)/100`.
fn int8_matrix() -> (Vec<u8>, Vec<f32>) {
    let q: Vec<u8> = (0..256).map(|i: i32| (i % 255 - 127) as i8 as u8).collect();
    let s: Vec<f32> = (0..8)
        .map(|i| ((i / 2 + 1) * (i % 2 + 1)) as f32 / 100.0)
        .collect();
    (q, s)
}

fn expected(q: &[u8], s: &[f32]) -> Vec<f32> {
    q.iter()
        .enumerate()
        .map(|(i, &q)| f32::from(q as i8) * s[i / 32])
        .collect()
}

#[test]
fn floats_read_as_their_dtype_and_widen_to_the_same_values() {
    let v = [1.5f32, -2.0, 0.25, 3.0];
    let half: Vec<u8> = v
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf: Vec<u8> = v
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let bytes = file(&[
        ("a", Dtype::F32, vec![2, 2], f32_bytes(&v)),
        ("b", Dtype::F16, vec![4], half),
        ("c", Dtype::BF16, vec![4], bf),
        ("ids", Dtype::I64, vec![1, 2], vec![0; 16]),
    ]);
    let mut t = read_all(&bytes).unwrap();
    assert_eq!(t["b"].dtype(), DType::F16);
    assert_eq!(take_f32(&mut t, "a", &[2, 2], "m").unwrap(), v);
    assert_eq!(take_f32(&mut t, "b", &[4], "m").unwrap(), v);
    assert_eq!(take_f32(&mut t, "c", &[4], "m").unwrap(), v);
    assert_eq!(t["ids"].dims(), [1, 2]);
    assert_eq!(
        take_f32(&mut t, "a", &[2, 2], "model.safetensors").unwrap_err(),
        "model.safetensors: no tensor a"
    );
    assert_eq!(
        take_f32(&mut t, "ids", &[3], "model.safetensors").unwrap_err(),
        "model.safetensors: tensor ids has shape [1, 2], config.json implies [3]"
    );
}

#[test]
fn int8_matrices_widen_exactly_and_hand_over_their_values_and_scales() {
    let (q, s) = int8_matrix();
    let bytes = file(&[
        ("w", Dtype::I8, vec![4, 64], q.clone()),
        ("w.int8_scales", Dtype::F32, vec![4, 2], f32_bytes(&s)),
    ]);
    let mut t = read_all(&bytes).unwrap();
    assert_eq!(t.len(), 1, "the scales travel inside the matrix");
    let mut copy = t.clone();
    let all = expected(&q, &s);
    assert_eq!(take_f32(&mut t, "w", &[4, 64], "m").unwrap(), all);
    let rows = take_int8(&mut copy, "w", &[4, 64], "m").unwrap().unwrap();
    assert_eq!(rows.bytes(), 4 * (64 + 2 * 4));
    let ones = vec![1f32; 64];
    for id in 0..4 {
        let mut out = vec![0f32; 64];
        rows.add_row(id, &ones, &mut out);
        let want: Vec<f32> = all[id * 64..(id + 1) * 64]
            .iter()
            .map(|v| v + 1.0)
            .collect();
        assert_eq!(out, want, "row {id}");
    }
    // A float matrix is no int8 one.
    let mut floats = read_all(&file(&[(
        "f",
        Dtype::F32,
        vec![1, 32],
        f32_bytes(&[0.5; 32]),
    )]))
    .unwrap();
    assert!(
        take_int8(&mut floats, "f", &[1, 32], "m")
            .unwrap()
            .is_none()
    );
    assert!(floats.contains_key("f"));
}

#[test]
fn packed_rows_survive_the_mappers_row_operations_and_scaling() {
    let (q, s) = int8_matrix();
    let bytes = file(&[
        ("w", Dtype::I8, vec![4, 64], q.clone()),
        ("w.int8_scales", Dtype::F32, vec![4, 2], f32_bytes(&s)),
    ]);
    let t = read_all(&bytes).unwrap().remove("w").unwrap();
    let all = expected(&q, &s);
    // Rows 2..4 then rows 0..2, as a fuse of two halves would join them.
    let swapped =
        Tensor::cat(&[t.narrow(0, 2, 2).unwrap(), t.narrow(0, 0, 2).unwrap()], 0).unwrap();
    let mut m = Tensors::from([("x".to_string(), swapped)]);
    let got = take_f32(&mut m, "x", &[4, 64], "m").unwrap();
    assert_eq!(got[..128], all[128..]);
    assert_eq!(got[128..], all[..128]);
    let mut m = Tensors::from([("x".to_string(), scale(t, 2.0).unwrap())]);
    let doubled = take_f32(&mut m, "x", &[4, 64], "m").unwrap();
    assert_eq!(doubled, all.iter().map(|v| v * 2.0).collect::<Vec<_>>());
}

#[test]
fn broken_files_are_refused_with_what_is_wrong() {
    let (q, s) = int8_matrix();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            file(&[("w", Dtype::I8, vec![4, 64], q.clone())]),
            "model.safetensors: int8 tensor w has no w.int8_scales",
        ),
        (
            file(&[
                ("w", Dtype::I8, vec![4, 64], q.clone()),
                ("w.int8_scales", Dtype::F32, vec![4, 1], f32_bytes(&s[..4])),
            ]),
            "model.safetensors: int8 tensor w: 4 scales for a 4×64 matrix; one per row and block of 32 expected",
        ),
        (
            file(&[("v.int8_scales", Dtype::F32, vec![2], f32_bytes(&s[..2]))]),
            "model.safetensors: v.int8_scales scales no int8 tensor v",
        ),
        (
            file(&[
                ("w", Dtype::I8, vec![4, 64], q.clone()),
                (
                    "w.int8_scales",
                    Dtype::F32,
                    vec![4, 2],
                    f32_bytes(&[f32::NAN; 8]),
                ),
            ]),
            "model.safetensors: int8 tensor w: a scale is NaN",
        ),
    ];
    for (bytes, error) in cases {
        assert_eq!(read_all(&bytes).unwrap_err(), error);
    }
    let good = file(&[("a", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]);
    let short = &good[..good.len() - 1];
    let e = read(&mut &short[..], short.len() as u64, "model.safetensors").unwrap_err();
    assert!(e.contains("its tensors end at byte"), "{e}");
    let e = read(&mut &good[..10], good.len() as u64, "model.safetensors").unwrap_err();
    assert!(e.starts_with("model.safetensors: "), "{e}");
}
