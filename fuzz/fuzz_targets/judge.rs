//! What both targets share about their judge, serde_json.

/// True when `b` may nest deeper than serde_json's recursion limit (128)
/// allows: the judge cannot read such JSON, though ringcast handles any
/// depth (tests/hostile_input.rs sends 100,000 levels). Brackets inside
/// strings count too, so this errs towards skipping.
pub fn too_deep_for_judge(b: &[u8]) -> bool {
    let (mut depth, mut max) = (0i64, 0i64);
    for c in b {
        match c {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    max > 100
}
