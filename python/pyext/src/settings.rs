//! What poold tells the Python handlers in `init`: the app and how to find it, one `key=value` a
//! line (made by poold from the `pool` directive's `handler=wsgi:...`/`asgi:...`,
//! `python_path=`, `preload=`, and for ASGI `lifespan=`, `concurrency=`, `timeout=`, `ws_ping=`; see
//! `poold::handler::python_init_config`). The venv needs no setting: it is the interpreter this
//! runs in.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The module to import (`pkg.web`).
    pub module: String,
    /// The attribute of the module that is the WSGI callable (`app`, or dotted: `web.app`).
    pub callable: String,
    pub python_path: Vec<PathBuf>,
    pub preload: bool,
    /// ASGI: `auto`, `on` or `off`.
    pub lifespan: String,
    /// ASGI: requests a worker runs at once.
    pub concurrency: u32,
    /// The pool's `timeout=` in ms (0: none): an ASGI request past it is cancelled.
    pub timeout_ms: u64,
    /// ASGI: `ws_ping=` in ms (0: no pings).
    pub ws_ping_ms: u64,
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings, String> {
        let mut app = None;
        let mut s = Settings {
            module: String::new(),
            callable: String::new(),
            python_path: Vec::new(),
            preload: true,
            lifespan: "auto".to_string(),
            concurrency: 1,
            timeout_ms: 0,
            ws_ping_ms: 0,
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("settings: no '=' in \"{line}\""))?;
            match key {
                "app" => app = Some(value.to_string()),
                "python_path" => {
                    s.python_path = value
                        .split(':')
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                        .collect()
                }
                "preload" => s.preload = value != "off",
                "lifespan" => s.lifespan = value.to_string(),
                "concurrency" => s.concurrency = value.parse().unwrap_or(1),
                "timeout" => s.timeout_ms = value.parse().unwrap_or(0),
                "ws_ping" => s.ws_ping_ms = value.parse().unwrap_or(0),
                other => return Err(format!("settings: unknown key \"{other}\"")),
            }
        }
        let app = app.ok_or(
            "settings: no app= (is the pool's handler wsgi:MODULE:CALLABLE or asgi:MODULE:APP?)",
        )?;
        let (module, callable) = app.split_once(':').unwrap_or((&app, "application"));
        s.module = module.to_string();
        s.callable = callable.to_string();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_poold_sends() {
        let s = Settings::parse("app=pkg.web:app\npreload=off\npython_path=/a:/b\n").unwrap();
        assert_eq!((s.module.as_str(), s.callable.as_str()), ("pkg.web", "app"));
        assert!(!s.preload);
        assert_eq!(
            s.python_path,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert!(Settings::parse("preload=on")
            .unwrap_err()
            .contains("no app="));
        assert!(Settings::parse("app=a\nbogus=1")
            .unwrap_err()
            .contains("unknown key"));
    }
}
