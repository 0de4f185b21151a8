//! `wmig completions SHELL` and `wmig man`: generated from the same clap
//! definition the parser uses, so they never drift from the real flags.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct CompletionsCommand {
    /// The shell to complete for; e.g. `wmig completions bash > /etc/bash_completion.d/wmig`.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl CompletionsCommand {
    pub fn execute(self, mut cli: clap::Command) -> anyhow::Result<i32> {
        clap_complete::generate(self.shell, &mut cli, "wmig", &mut std::io::stdout());
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct ManCommand {
    /// Write `wmig.1` and a page per command (`wmig-submit.1`, …) into this
    /// directory (e.g. `~/.local/share/man/man1`); without it, print `wmig.1`.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ManCommand {
    pub fn execute(self, cli: clap::Command) -> anyhow::Result<i32> {
        let Some(dir) = self.out else {
            clap_mangen::Man::new(cli).render(&mut std::io::stdout())?;
            return Ok(0);
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let mut pages = vec![("wmig".to_owned(), cli.clone())];
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("wmig-{}", sub.get_name());
            pages.push((name.clone(), sub.clone().name(name)));
        }
        for (name, page) in &pages {
            let path = dir.join(format!("{name}.1"));
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("could not create {}", path.display()))?;
            clap_mangen::Man::new(page.clone())
                .render(&mut file)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        eprintln!("wrote {} man pages to {}", pages.len(), dir.display());
        Ok(0)
    }
}
