//! `--settings FILE`: a role's flags from a TOML file, for deployments that prefer a file to a
//! long command line. Keys are the role's long flag names (`listen = "0.0.0.0:50051"`,
//! `data-dir = "/var/lib/grlo"`); a command-line flag wins over the `GRLO_*` environment, which
//! wins over the file.

use std::path::Path;

use anyhow::{Context, bail};

/// Finds `--settings FILE` (or `GRLO_SETTINGS`) in `args` and turns the file's keys into the
/// `GRLO_*` variables of the subcommand's flags, where they are not set already. Must run before
/// any other thread starts (it sets environment variables).
pub fn apply(command: &clap::Command, args: &[String]) -> anyhow::Result<()> {
    let file = args
        .iter()
        .position(|a| a == "--settings")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--settings=").map(str::to_string))
        })
        .or_else(|| std::env::var("GRLO_SETTINGS").ok());
    let Some(file) = file else {
        return Ok(());
    };
    let Some(role) = args
        .iter()
        .skip(1)
        .find(|a| command.find_subcommand(a.as_str()).is_some())
    else {
        bail!("--settings {file} needs a role (grlo coordinator|learner|actor|reward-server)");
    };
    let subcommand = command.find_subcommand(role.as_str()).expect("found above");
    for (name, value) in read(Path::new(&file))? {
        let arg = subcommand
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()))
            .with_context(|| {
                let known: Vec<String> = subcommand
                    .get_arguments()
                    .filter(|a| a.get_env().is_some())
                    .filter_map(|a| a.get_long().map(str::to_string))
                    .collect();
                format!(
                    "{file}: `{name}` is not a setting of grlo {role} (its settings: {})",
                    known.join(", ")
                )
            })?;
        let Some(variable) = arg.get_env() else {
            bail!("{file}: `{name}` cannot be set from a file");
        };
        if std::env::var_os(variable).is_none() {
            // SAFETY: called from `main` before the runtime or any other thread starts.
            unsafe { std::env::set_var(variable, &value) };
        }
    }
    Ok(())
}

/// The file's `key = value` pairs as strings (TOML strings, numbers and booleans).
fn read(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the settings file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "{}: `{key}` must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                ),
            };
            Ok((key, value))
        })
        .collect()
}
