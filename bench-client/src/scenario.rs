//! Scenario files: TOML whose keys are the long flags of one mode, so a scenario is just a
//! saved command line (and the flags stay the single source of truth for defaults).
//!
//! ```toml
//! description = "one room, every connection in it, full broadcast"
//! mode = "fanout"
//! connections = 10000
//! rate = 20
//! ```

use std::path::Path;

use crate::error::BenchError;

/// A scenario read from a file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (the file stem).
    pub name: String,
    /// The file's text, for SETUP.md.
    pub text: String,
    /// `mode` followed by `--key=value` arguments.
    pub args: Vec<String>,
}

impl Scenario {
    /// Reads and translates `path`.
    pub fn load(path: &Path) -> Result<Scenario, BenchError> {
        let text = std::fs::read_to_string(path)?;
        let name = path.file_stem().map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
        let args = to_args(&text).map_err(|m| BenchError::Config(format!("{}: {m}", path.display())))?;
        Ok(Scenario { name, text, args })
    }
}

/// `mode = "x"` → `x`, then every other key → `--key=value` (arrays repeat the flag,
/// `true` is a bare flag, `false` is left out). `description` is for people only.
pub fn to_args(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mode = table.get("mode").and_then(|m| m.as_str()).ok_or("missing `mode` (connect, fanout or ramp)")?;
    if !matches!(mode, "connect" | "fanout" | "ramp") {
        return Err(format!("mode `{mode}` is not connect, fanout or ramp"));
    }
    let mut args = vec![mode.to_owned()];
    for (key, value) in &table {
        if key == "mode" || key == "description" {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let values = match value {
            toml::Value::Array(items) => items.clone(),
            v => vec![v.clone()],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) => args.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => args.push(format!("{flag}={s}")),
                toml::Value::Integer(i) => args.push(format!("{flag}={i}")),
                toml::Value::Float(f) => args.push(format!("{flag}={f}")),
                other => return Err(format!("`{key}`: unsupported value {other}")),
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags() {
        let args = to_args("description = \"x\"\nmode = \"fanout\"\nconnections = 10\nroom_dist = \"hot:0.5\"\nrate = 2.5\nquiet = true\n")
            .unwrap();
        assert_eq!(args, ["fanout", "--connections=10", "--quiet", "--rate=2.5", "--room-dist=hot:0.5"]);
    }

    #[test]
    fn mode_is_required_and_checked() {
        assert!(to_args("connections = 1").is_err());
        assert!(to_args("mode = \"suite\"").is_err());
    }

    #[test]
    fn the_shipped_scenarios_parse_as_command_lines() {
        use clap::Parser;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let s = Scenario::load(&entry.unwrap().path()).unwrap();
            let cli = crate::cli::Cli::try_parse_from(std::iter::once("bench-client".to_owned()).chain(s.args.clone()))
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert!(cli.command.prepare().unwrap().is_ok(), "{}", s.name);
            n += 1;
        }
        assert!(n >= 4, "the standard set has at least four scenarios");
    }
}
