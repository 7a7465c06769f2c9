//! Every flag of every subcommand also read from the environment, as `TIDINGS_` and the flag's
//! long name in capitals with `-` as `_`: `--store` from `TIDINGS_STORE`, `--admin-listen` from
//! `TIDINGS_ADMIN_LISTEN`. A flag on the command line wins over its variable. Flags that name
//! their variable themselves keep it (`--url`: `TIDINGS_TRANSPORT_URL`). Switches take `true`
//! or `false`; a repeatable flag takes one value from its variable.

use clap::{Arg, ArgAction, Command};

/// The prefix of every variable.
const PREFIX: &str = "TIDINGS_";

/// `command` with an environment variable on every flag that has no variable yet.
pub fn with_environment_variables(command: Command) -> Command {
    let command = command.mut_args(|arg| {
        let takes_env = arg.get_env().is_none() && is_flag_with_value(&arg);
        match arg.get_long().map(variable_name) {
            Some(name) if takes_env => arg.env(name),
            _ => arg,
        }
    });
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, with_environment_variables)
    })
}

/// Whether `arg` is a flag an environment variable can stand for: not a positional argument,
/// and not `--help`, `--version` or a count (`-v`).
fn is_flag_with_value(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !arg.is_positional()
        && !matches!(
            arg.get_action(),
            ArgAction::Help
                | ArgAction::HelpShort
                | ArgAction::HelpLong
                | ArgAction::Version
                | ArgAction::Count
        )
}

/// The variable of the flag `--long`.
fn variable_name(long: &str) -> String {
    format!("{PREFIX}{}", long.to_ascii_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn every_flag_of_every_subcommand_has_a_variable() {
        fn check(command: &Command, path: &str) {
            for arg in command.get_arguments() {
                if !is_flag_with_value(arg) {
                    continue;
                }
                let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or("");
                assert!(
                    env.starts_with(PREFIX),
                    "{path} --{:?} has no TIDINGS_ variable",
                    arg.get_long()
                );
            }
            for sub in command.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let command = with_environment_variables(Cli::command());
        check(&command, "tidings");
        assert_eq!(variable_name("admin-listen"), "TIDINGS_ADMIN_LISTEN");
    }
}
