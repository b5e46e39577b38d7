//! What poold tells the adapter in `init`: the app and how to find it, one `key=value` a line
//! (made by poold from the `pool` directive's `handler=wsgi:...`, `venv=`, `python_path=`,
//! `preload=`; see `poold::handler::wsgi_init_config`).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The module to import (`pkg.web`).
    pub module: String,
    /// The attribute of the module that is the WSGI callable (`app`, or dotted: `web.app`).
    pub callable: String,
    pub venv: Option<PathBuf>,
    pub python_path: Vec<PathBuf>,
    pub preload: bool,
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings, String> {
        let mut app = None;
        let mut s = Settings {
            module: String::new(),
            callable: String::new(),
            venv: None,
            python_path: Vec::new(),
            preload: true,
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("adapter settings: no '=' in \"{line}\""))?;
            match key {
                "app" => app = Some(value.to_string()),
                "venv" => s.venv = Some(PathBuf::from(value)),
                "python_path" => {
                    s.python_path = value
                        .split(':')
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                        .collect()
                }
                "preload" => s.preload = value != "off",
                other => return Err(format!("adapter settings: unknown key \"{other}\"")),
            }
        }
        let app =
            app.ok_or("adapter settings: no app= (is the pool's handler wsgi:MODULE:CALLABLE?)")?;
        let (module, callable) = app.split_once(':').unwrap_or((&app, "application"));
        s.module = module.to_string();
        s.callable = callable.to_string();
        Ok(s)
    }
}

/// The `major.minor` Python version a virtualenv was made with, from its `pyvenv.cfg`.
pub fn venv_version(venv: &Path) -> Result<String, String> {
    let cfg = venv.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).map_err(|e| {
        format!(
            "venv {}: {e} reading pyvenv.cfg (is it a virtualenv?)",
            venv.display()
        )
    })?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .find(|(k, _)| *k == "version" || *k == "version_info")
        .map(|(_, v)| v.split('.').take(2).collect::<Vec<_>>().join("."))
        .ok_or_else(|| format!("venv {}: pyvenv.cfg names no version", venv.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_poold_sends() {
        let s =
            Settings::parse("app=pkg.web:app\npreload=off\nvenv=/v\npython_path=/a:/b\n").unwrap();
        assert_eq!((s.module.as_str(), s.callable.as_str()), ("pkg.web", "app"));
        assert!(!s.preload);
        assert_eq!(
            s.python_path,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert!(Settings::parse("venv=/v").unwrap_err().contains("no app="));
        assert!(Settings::parse("app=a\nbogus=1")
            .unwrap_err()
            .contains("unknown key"));
    }

    #[test]
    fn reads_a_venv_version() {
        let dir = std::env::temp_dir().join(format!("venv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pyvenv.cfg"),
            "home = /usr/bin\nversion = 3.12.1\n",
        )
        .unwrap();
        assert_eq!(venv_version(&dir).unwrap(), "3.12");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
