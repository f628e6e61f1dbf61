//! Man pages generated from the clap definition: one page per command (`git-p2p.1`,
//! `git-p2p-kv.1`, `git-p2p-kv-set.1`, ...), so that `git help p2p` and `man git-p2p-kv` work and
//! help text and man pages can never disagree. The pages in man/ are checked in; a test fails when
//! they are stale (regenerate with `GIT_P2P_UPDATE_MAN=1 cargo test man_pages`).

/// Every page as (file name, roff source), parents before children.
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let root = crate::cli::command();
    render(root, "git-p2p".to_string(), &mut out);
    out
}

fn render(cmd: clap::Command, name: String, out: &mut Vec<(String, Vec<u8>)>) {
    let subcommands: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let page_cmd = cmd.name(name.clone()).bin_name(name.replacen("git-p2p", "git p2p", 1).replace('-', " "));
    let mut roff = Vec::new();
    clap_mangen::Man::new(page_cmd)
        .title(name.to_uppercase())
        .section("1")
        .source(format!("git-p2p {}", env!("CARGO_PKG_VERSION")))
        .manual("Git Manual")
        .render(&mut roff)
        .expect("rendering to a Vec cannot fail");
    out.push((format!("{name}.1"), roff));
    for sub in subcommands {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = format!("{name}-{}", sub.get_name());
        render(sub, sub_name, out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    #[test]
    fn man_pages_are_fresh() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let pages = super::pages();
        if std::env::var_os("GIT_P2P_UPDATE_MAN").is_some() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, roff) in &pages {
                std::fs::write(dir.join(name), roff).unwrap();
            }
        }
        let mut stale = Vec::new();
        for (name, roff) in &pages {
            if std::fs::read(dir.join(name)).ok().as_deref() != Some(roff.as_slice()) {
                stale.push(name.clone());
            }
        }
        let expected: BTreeSet<String> = pages.iter().map(|(n, _)| n.clone()).collect();
        let present: BTreeSet<String> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        stale.extend(present.difference(&expected).cloned());
        assert!(stale.is_empty(), "man pages are stale: {stale:?}; run: GIT_P2P_UPDATE_MAN=1 cargo test man_pages");
        assert!(expected.contains("git-p2p.1") && expected.contains("git-p2p-daemon-run.1"));
    }
}
