//! `args_env [--cat PATH] [ARGS...]`: prints its arguments, the environment variables
//! whose names start with `TASK_` (sorted by name), and the contents of PATH if given.
//!
//! Checks that argv, environment and preopened directories are passed through
//! unchanged. `argv[0]` is not printed: runners name the program differently.
//! Only `TASK_*` variables are printed, since hosts may add variables of their own.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args_env argc={}", args.len());
    for (i, a) in args.iter().enumerate() {
        println!("arg[{}]={a:?}", i + 1);
    }

    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("TASK_"))
        .collect();
    vars.sort();
    println!("args_env env={}", vars.len());
    for (k, v) in &vars {
        println!("env {k}={v:?}");
    }

    if let Some(pos) = args.iter().position(|a| a == "--cat") {
        let Some(path) = args.get(pos + 1) else {
            eprintln!("args_env: --cat needs a PATH");
            return ExitCode::from(2);
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                println!("args_env file {path} bytes={}", bytes.len());
                print!("{}", String::from_utf8_lossy(&bytes));
                if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                    println!();
                }
                println!("args_env end of file");
            }
            Err(e) => {
                eprintln!("args_env: cannot read {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("args_env done");
    ExitCode::SUCCESS
}
