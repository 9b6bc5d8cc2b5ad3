//! The NF4 reference against bitsandbytes itself: codes, absmax, double quantisation and dequantised values of a
//! 70x250 matrix must match bitsandbytes 0.50.2 bit for bit (fixture made by `fixtures/make_nf4_fixture.py`),
//! except for the documented rare 8-bit absmax codes where bitsandbytes' CPU search misses the nearest entry.

use std::collections::HashMap;

use tandem_kernels::nf4::{self, DoubleQuantAbsmax, Nf4Absmax, Nf4Tensor};

const FIXTURE: &str = include_str!("fixtures/nf4_bitsandbytes.txt");

fn fields() -> HashMap<&'static str, &'static str> {
    FIXTURE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split_once(' ').expect("fixture line is `name value`"))
        .collect()
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex_f32(s: &str) -> Vec<f32> {
    hex_bytes(s)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The fixture's weights (same formula as the Python script: exact in float64, rounded once to f32).
fn fixture_weight(i: usize) -> f32 {
    if i / 64 == 3 {
        return 0.0;
    }
    let h = (i as u64 * 2_654_435_761) % (1u64 << 32);
    let u = h as f64 / 4_294_967_296.0 - 0.5;
    let scale = 1.0 + ((i / 64) % 5) as f64 * 0.75;
    (u * scale) as f32
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts equal sequences, reporting the number of differences and the first one (not the whole arrays).
fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, ours: &[T], theirs: &[T]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let diffs: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != theirs[i]).collect();
    if let Some(&i) = diffs.first() {
        panic!(
            "{what}: {} of {} differ, first at {i}: ours {:?}, bitsandbytes {:?}",
            diffs.len(),
            ours.len(),
            ours[i],
            theirs[i]
        );
    }
}

#[test]
fn tables_match_bitsandbytes() {
    let f = fields();
    assert_same(
        "nf4 levels",
        &bits(&hex_f32(f["nf4_code"])),
        &bits(&nf4::LEVELS),
    );
    assert_same(
        "dynamic map",
        &bits(&hex_f32(f["dynamic_map"])),
        &bits(nf4::dynamic_map()),
    );
}

#[test]
fn quantisation_matches_bitsandbytes_bit_for_bit() {
    let f = fields();
    let rows: usize = f["rows"].parse().unwrap();
    let cols: usize = f["cols"].parse().unwrap();
    let w: Vec<f32> = (0..rows * cols).map(fixture_weight).collect();

    let plain = Nf4Tensor::quantize(&w, rows, cols, false).unwrap();
    assert_same("codes", plain.codes(), &hex_bytes(f["codes"]));
    let Nf4Absmax::Plain(absmax) = plain.absmax() else {
        panic!("plain")
    };
    assert_same("absmax", &bits(absmax), &bits(&hex_f32(f["absmax_plain"])));
    assert_same(
        "plain.dequantize",
        &bits(&plain.dequantize()),
        &bits(&hex_f32(f["dequantized_plain"])),
    );

    let dq = Nf4Tensor::quantize(&w, rows, cols, true).unwrap();
    assert_same("codes", dq.codes(), &hex_bytes(f["codes"]));
    let Nf4Absmax::Double(d) = dq.absmax() else {
        panic!("double quantised")
    };
    assert_eq!(
        d.offset().to_bits(),
        hex_f32(f["absmax_offset"])[0].to_bits()
    );
    assert_same(
        "absmax scales",
        &bits(d.scales()),
        &bits(&hex_f32(f["absmax_scales"])),
    );
    // The 8-bit absmax codes: ours is always the nearest map entry. bitsandbytes' CPU library (a lookup-based
    // binary search, `csrc/cpu_ops.cpp`) sometimes picks the neighbouring, farther entry (4 of these 274); where
    // the codes differ, ours must be one step away and strictly nearer.
    let theirs = hex_bytes(f["absmax_codes"]);
    let map = nf4::dynamic_map();
    let absmax = match plain.absmax() {
        Nf4Absmax::Plain(v) => v,
        Nf4Absmax::Double(_) => unreachable!(),
    };
    let mut differ = 0;
    for (i, (&ours, &bnb)) in d.codes().iter().zip(&theirs).enumerate() {
        if ours == bnb {
            continue;
        }
        differ += 1;
        let x = f64::from(absmax[i] - d.offset()) / f64::from(d.scales()[i / nf4::ABSMAX_BLOCK]);
        let dist = |c: u8| (x - f64::from(map[usize::from(c)])).abs();
        assert_eq!(
            ours.abs_diff(bnb),
            1,
            "block {i}: ours {ours}, bitsandbytes {bnb}"
        );
        assert!(
            dist(ours) < dist(bnb),
            "block {i}: ours {ours} is not nearer than {bnb} to {x}"
        );
    }
    assert!(differ <= 4, "{differ} absmax codes differ");
    // Dequantised values: identical wherever the absmax codes agree.
    let ours = dq.dequantize();
    let reference = hex_f32(f["dequantized"]);
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        if d.codes()[i / nf4::BLOCK] == theirs[i / nf4::BLOCK] {
            assert_eq!(a.to_bits(), b.to_bits(), "element {i}");
        }
    }
}

#[test]
fn dequantising_bitsandbytes_state_matches_bitsandbytes() {
    // Reading bitsandbytes' own state (not ours) gives its dequantised values.
    let f = fields();
    let rows: usize = f["rows"].parse().unwrap();
    let cols: usize = f["cols"].parse().unwrap();
    let absmax = DoubleQuantAbsmax::from_parts(
        hex_bytes(f["absmax_codes"]),
        hex_f32(f["absmax_scales"]),
        hex_f32(f["absmax_offset"])[0],
    )
    .unwrap();
    let t = Nf4Tensor::from_parts(rows, cols, hex_bytes(f["codes"]), Nf4Absmax::Double(absmax))
        .unwrap();
    assert_same(
        "t.dequantize",
        &bits(&t.dequantize()),
        &bits(&hex_f32(f["dequantized"])),
    );
}
