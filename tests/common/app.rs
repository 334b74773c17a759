//! What tests read back from the built-in app's answers.

/// `(name, value)` pairs of a list in the app's `/request` JSON (`params`
/// or `headers`, each a list of `[name, value]`); panics naming the list
/// when it is missing.
pub fn json_pairs(v: &serde_json::Value, list: &str) -> Vec<(String, String)> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} list in {v}"))
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_string(),
                p[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
