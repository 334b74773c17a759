//! The template language of systemd/ and packaging/debian/: `{{key}}` is
//! replaced by its value; a line holding only a `{{key}}` whose value is
//! empty disappears; a line starting with `{{?flag}}` (or `{{?!flag}}`) is
//! kept, without that marker, only if the flag is set (unset). Nothing else
//! is special, so the files stay valid units, shell and nginx syntax to read.

use std::collections::BTreeMap;

#[derive(Default)]
pub struct Vars {
    pub values: BTreeMap<&'static str, String>,
    pub flags: BTreeMap<&'static str, bool>,
}

impl Vars {
    pub fn set(&mut self, key: &'static str, value: impl Into<String>) {
        self.values.insert(key, value.into());
    }
    pub fn flag(&mut self, key: &'static str, on: bool) {
        self.flags.insert(key, on);
    }
}

/// Renders `template` (named `what` in errors). An unknown key or flag is an
/// error: it is a mistake in the template, never silently kept.
pub fn render(what: &str, template: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        let Some(line) = condition(what, line, vars)? else {
            continue;
        };
        let body = line.trim_end_matches('\n');
        let rendered = substitute(what, line, vars)?;
        let lone_key =
            body.starts_with("{{") && body.ends_with("}}") && body.matches("{{").count() == 1;
        if lone_key && rendered.trim().is_empty() {
            continue;
        }
        out.push_str(&rendered);
    }
    Ok(out)
}

/// The line without its `{{?flag}}` marker, or None if the flag drops it.
fn condition<'a>(what: &str, line: &'a str, vars: &Vars) -> Result<Option<&'a str>, String> {
    let Some(rest) = line.strip_prefix("{{?") else {
        return Ok(Some(line));
    };
    let end = rest
        .find("}}")
        .ok_or_else(|| format!("template {what}: unclosed {{{{? in: {line}"))?;
    let (key, negate) = match rest[..end].strip_prefix('!') {
        Some(k) => (k, true),
        None => (&rest[..end], false),
    };
    let on = *vars
        .flags
        .get(key)
        .ok_or_else(|| format!("template {what}: unknown flag '{key}'"))?;
    Ok((on != negate).then_some(&rest[end + 2..]))
}

fn substitute(what: &str, line: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("template {what}: unclosed {{{{ in: {line}"))?;
        let key = &after[..end];
        let value = vars
            .values
            .get(key)
            .ok_or_else(|| format!("template {what}: unknown key '{key}'"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("name", "hello");
        v.set("empty", "");
        v.flag("on", true);
        v.flag("off", false);
        v
    }

    #[test]
    fn substitutes_and_drops() {
        let t = "a={{name}} b={{name}}\n{{empty}}\n{{?on}}yes\n{{?off}}no\n{{?!off}}not off\nend\n";
        assert_eq!(
            render("t", t, &vars()).unwrap(),
            "a=hello b=hello\nyes\nnot off\nend\n"
        );
    }

    #[test]
    fn unknown_keys_fail() {
        assert!(render("t", "{{nope}}\n", &vars()).is_err());
        assert!(render("t", "{{?nope}}x\n", &vars()).is_err());
        assert!(render("t", "x {{name\n", &vars()).is_err());
    }

    #[test]
    fn systemd_specifiers_and_groups_pass() {
        let t = "SystemCallFilter=~@privileged @resources\nExecStart=%n {x}\n";
        assert_eq!(render("t", t, &vars()).unwrap(), t);
    }
}
