//! "Moving from Gunicorn", tried as a Django user would (docs/wsgi.md walks through the same
//! steps): `django-admin startproject mysite` from the test virtualenv, its settings edited as
//! the docs say (DEBUG off, ALLOWED_HOSTS, STATIC_ROOT, the SQLite database in a directory of
//! its own, a console LOGGING handler), `migrate`, `collectstatic`, `createsuperuser`, the data
//! directory given to the pool's user (nginx's: `nobody` when the tests run as root), and nginx
//! serving it:
//!
//! - the admin's login page from the pool, its CSS from `collectstatic`'s directory through an
//!   nginx `alias` (the pool's request counter does not move), and a real log-in: the csrftoken
//!   cookie and the form's token posted back with an Origin as a browser sends, a 302 with a
//!   session cookie, then the admin index as the superuser (the session and `last_login` are
//!   written to SQLite by the pool's user);
//! - the same project under `/blog/` in a pool of its own with `pool_param SCRIPT_NAME /blog;`
//!   and no `FORCE_SCRIPT_NAME`: its links, static ones included, carry `/blog/`, and the log-in
//!   works there too;
//! - why one pool per mount point: one pool behind two prefixes serves the static URL of
//!   whichever prefix its worker saw first (Django caches `STATIC_URL` with the script prefix
//!   in each process), while its other links follow each request;
//! - why `SECURE_PROXY_SSL_HEADER` and `USE_X_FORWARDED_HOST` go: the app now sees the client
//!   itself, so with them a client's own `X-Forwarded-Proto: https` over plain http makes
//!   `request.is_secure()` true, and its `X-Forwarded-Host` becomes the host Django checks;
//!   without them the same headers change nothing. Django's error line for the host it refuses
//!   reaches nginx's error log through the console handler;
//! - which directories the pool's user must write: the same project with its database in a
//!   directory only root may write serves the login page but fails the log-in (500, "attempt
//!   to write a readonly database" in the error log).

use ngx_pool_tests::http::{request, Response};
use ngx_pool_tests::{python_env, temp_prefix, Conf, Nginx};
use std::path::{Path, PathBuf};
use std::process::Command;

const PASSWORD: &str = "correct-horse-battery-staple-42";

/// The project's directory, removed however the test ends.
struct Site(PathBuf);

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command of the project's set-up (as root, as a deploy script would) and fails the
/// test with its output if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a set-up command");
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{all}");
    all
}

/// Replaces `from` (which must be there) by `to` in `file`.
fn edit(file: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(file).unwrap();
    assert!(s.contains(from), "{} has no {from:?}:\n{s}", file.display());
    std::fs::write(file, s.replacen(from, to, 1)).unwrap();
}

/// `django-admin startproject mysite`, set up for production as docs/wsgi.md says. Returns
/// the project directory (the one with manage.py: the pools' `chdir=`).
fn make_site(root: &Path) -> PathBuf {
    let venv = python_env();
    run(Command::new(venv.join("bin/django-admin"))
        .args(["startproject", "mysite"])
        .current_dir(root));
    let project = root.join("mysite");
    let settings = project.join("mysite/settings.py");
    edit(&settings, "DEBUG = True", "DEBUG = False");
    edit(
        &settings,
        "ALLOWED_HOSTS = []",
        "ALLOWED_HOSTS = ['localhost']",
    );
    edit(
        &settings,
        "'NAME': BASE_DIR / 'db.sqlite3',",
        "'NAME': BASE_DIR / 'data' / 'db.sqlite3',",
    );
    edit(
        &settings,
        "STATIC_URL = 'static/'",
        "STATIC_URL = 'static/'\nSTATIC_ROOT = BASE_DIR / 'static'",
    );
    // With DEBUG off Django's own logging mails errors to ADMINS and prints nothing: a console
    // handler sends them to stderr, which is nginx's error log.
    edit(
        &settings,
        "DEFAULT_AUTO_FIELD",
        "LOGGING = {\n    \
             'version': 1,\n    \
             'disable_existing_loggers': False,\n    \
             'handlers': {'console': {'class': 'logging.StreamHandler'}},\n    \
             'loggers': {'django': {'handlers': ['console'], 'level': 'ERROR'}},\n\
         }\n\n\
         DEFAULT_AUTO_FIELD",
    );
    // The settings of the same site as it ran behind nginx → Gunicorn, kept to show what the
    // two proxy settings do once nothing stands between the client and the app.
    std::fs::write(
        project.join("mysite/settings_behind_proxy.py"),
        "from .settings import *\n\n\
         SECURE_PROXY_SSL_HEADER = ('HTTP_X_FORWARDED_PROTO', 'https')\n\
         USE_X_FORWARDED_HOST = True\n",
    )
    .unwrap();
    // A view that says what Django believes about the request.
    std::fs::write(
        project.join("mysite/whoami.py"),
        "from django.http import JsonResponse\n\n\n\
         def whoami(request):\n    \
             return JsonResponse({\n        \
                 'scheme': request.scheme,\n        \
                 'secure': request.is_secure(),\n        \
                 'host': request.get_host(),\n        \
                 'remote_addr': request.META['REMOTE_ADDR'],\n    \
             })\n",
    )
    .unwrap();
    edit(
        &project.join("mysite/urls.py"),
        "from django.urls import path\n",
        "from django.urls import path\n\nfrom .whoami import whoami\n",
    );
    edit(
        &project.join("mysite/urls.py"),
        "    path('admin/', admin.site.urls),\n",
        "    path('admin/', admin.site.urls),\n    path('whoami/', whoami),\n",
    );
    std::fs::create_dir(project.join("data")).unwrap();
    let manage = |args: &[&str]| {
        run(Command::new(venv.join("bin/python"))
            .arg("manage.py")
            .args(args)
            .env("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
            .current_dir(&project))
    };
    manage(&["migrate", "--noinput"]);
    let collected = manage(&["collectstatic", "--noinput"]);
    assert!(collected.contains("static files copied"), "{collected}");
    manage(&[
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "admin@example.com",
    ]);
    // The same database in a directory only root may write, for a pool that shows what the
    // pool's user cannot do there.
    std::fs::create_dir(project.join("data-readonly")).unwrap();
    std::fs::copy(
        project.join("data/db.sqlite3"),
        project.join("data-readonly/db.sqlite3"),
    )
    .unwrap();
    std::fs::write(
        project.join("mysite/settings_readonly.py"),
        "from .settings import *\n\n\
         DATABASES['default']['NAME'] = BASE_DIR / 'data-readonly' / 'db.sqlite3'\n",
    )
    .unwrap();
    // Everything readable by the pool's user (whatever this process's umask was), and only the
    // data directory (the database and its journal) writable by it. nginx's workers and its
    // pools run as nginx's `user`: `nobody` by default when nginx starts as root.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(root));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        run(Command::new("chown")
            .args(["-R", "nobody"])
            .arg(project.join("data")));
    }
    project
}

/// The value of the `<input ... name="NAME" value="...">` of a page.
fn form_value(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in:\n{page}"));
    let rest = &page[at..];
    let start = rest.find("value=\"").unwrap() + 7;
    let end = start + rest[start..].find('"').unwrap();
    rest[start..end].to_string()
}

/// The `NAME=VALUE` of each `Set-Cookie` named `name`.
fn cookie(r: &Response, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Fills in the admin's login form at `prefix` ("" or "/blog") as a browser does, from its
/// first visit to the admin, and posts it; returns the answer to the post.
fn post_login(ng: &Nginx, prefix: &str) -> Response {
    // The admin sends an anonymous visitor to its login page.
    let r = ng.get(&format!("{prefix}/admin/"));
    assert_eq!(r.status, 302, "{}", r.text());
    let login = format!("{prefix}/admin/login/?next={prefix}/admin/");
    assert_eq!(r.header("Location"), Some(login.as_str()));

    let page = ng.get(&login);
    assert_eq!(page.status, 200, "{}", page.text());
    let csrf_cookie = cookie(&page, "csrftoken").expect("the login page sets csrftoken");
    let body = page.text();
    assert!(
        body.contains(&format!("action=\"{login}\"")),
        "the form posts back to {login}:\n{body}"
    );
    let form = form_encode(&[
        (
            "csrfmiddlewaretoken",
            &form_value(&body, "csrfmiddlewaretoken"),
        ),
        ("username", "admin"),
        ("password", PASSWORD),
        ("next", &form_value(&body, "next")),
    ]);
    let referer = format!("http://localhost{login}");
    request(
        ng.port,
        "POST",
        &login,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &csrf_cookie),
            ("Origin", "http://localhost"),
            ("Referer", &referer),
        ],
        form.as_bytes(),
    )
    .unwrap()
}

/// Logs in to the admin mounted at `prefix` and opens its index; returns the session cookie.
fn log_in(ng: &Nginx, prefix: &str) -> String {
    let r = post_login(ng, prefix);
    assert_eq!(r.status, 302, "the log-in failed:\n{}", r.text());
    assert_eq!(
        r.header("Location"),
        Some(format!("{prefix}/admin/").as_str())
    );
    let session = cookie(&r, "sessionid").expect("a session cookie after the log-in");

    let r = request(
        ng.port,
        "GET",
        &format!("{prefix}/admin/"),
        &[("Cookie", &session)],
        b"",
    )
    .unwrap();
    let body = r.text();
    assert_eq!(r.status, 200, "{body}");
    assert!(body.contains("Site administration"), "{body}");
    assert!(body.contains("Welcome,"), "{body}");
    assert!(body.contains("<strong>admin</strong>"), "{body}");
    assert!(
        body.contains(&format!("href=\"{prefix}/admin/auth/user/\"")),
        "{body}"
    );
    session
}

/// Fetches a CSS file that must come from nginx's `alias`, not from pool `pool`.
fn static_from_nginx(ng: &Nginx, path: &str, pool: &str) {
    let before = ng.pool_status(pool)["counters"]["accepted"].clone();
    let css = ng.get(path);
    assert_eq!(css.status, 200, "{path}: {}", css.text());
    assert_eq!(css.header("Content-Type"), Some("text/css"), "{path}");
    assert!(css.text().contains("DJANGO Admin styles"), "{path}");
    // What Django's middleware would have added (it would have answered 404 anyway: DEBUG off).
    assert_eq!(css.header("X-Frame-Options"), None, "{path}");
    assert_eq!(css.header("X-Content-Type-Options"), None, "{path}");
    assert_eq!(
        ng.pool_status(pool)["counters"]["accepted"],
        before,
        "{path} reached pool {pool}"
    );
}

#[test]
fn a_django_startproject_site_moves_from_gunicorn() {
    let root = Site(temp_prefix());
    let project = make_site(&root.0);
    let venv = python_env();
    let pool = |name: &str, extra: &str| {
        format!(
            "    pool {name} handler=wsgi:mysite.wsgi:application venv={} chdir={} preload=on {extra};",
            venv.display(),
            project.display()
        )
    };
    let statics = project.join("static");
    let http = [
        pool("django", "workers=2"),
        pool("blog", "workers=1"),
        pool("shared", "workers=1"),
        pool(
            "legacy",
            "workers=1 env=DJANGO_SETTINGS_MODULE=mysite.settings_behind_proxy",
        ),
        pool(
            "readonly",
            "workers=1 env=DJANGO_SETTINGS_MODULE=mysite.settings_readonly",
        ),
        // What a distribution's nginx.conf has from its `include mime.types;`.
        "    types { text/html html; text/css css; text/javascript js; }".to_string(),
    ]
    .join("\n");
    let server = format!(
        "    location / {{ pool_pass django; }}\n    \
         location /static/ {{ alias {s}/; }}\n    \
         location /blog/ {{ pool_param SCRIPT_NAME /blog; pool_pass blog; }}\n    \
         location /blog/static/ {{ alias {s}/; }}\n    \
         location /one/ {{ pool_param SCRIPT_NAME /one; pool_pass shared; }}\n    \
         location /two/ {{ pool_param SCRIPT_NAME /two; pool_pass shared; }}\n    \
         location /legacy/ {{ pool_param SCRIPT_NAME /legacy; pool_pass legacy; }}\n    \
         location /readonly/ {{ pool_param SCRIPT_NAME /readonly; pool_pass readonly; }}\n    \
         location = /status {{ pool_status; }}",
        s = statics.display()
    );
    let mut ng = Nginx::start(Conf::new(&http, &server));

    // The login page, from the pool, with the admin's CSS linked where collectstatic put it.
    let r = ng.get("/admin/login/");
    let body = r.text();
    assert_eq!(r.status, 200, "{body}");
    assert!(
        body.contains("<title>Log in | Django site admin</title>"),
        "{body}"
    );
    assert!(body.contains("name=\"csrfmiddlewaretoken\""), "{body}");
    assert!(body.contains("name=\"username\""), "{body}");
    assert!(body.contains("name=\"password\""), "{body}");
    assert!(
        body.contains("href=\"/static/admin/css/base.css\""),
        "{body}"
    );
    assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
    static_from_nginx(&ng, "/static/admin/css/base.css", "django");
    log_in(&ng, "");

    // The same project under /blog/ in a pool of its own: Django takes the prefix from
    // SCRIPT_NAME, with no FORCE_SCRIPT_NAME in its settings.
    let r = ng.get("/blog/admin/login/");
    let body = r.text();
    assert_eq!(r.status, 200, "{body}");
    assert!(
        body.contains("href=\"/blog/static/admin/css/base.css\""),
        "{body}"
    );
    assert!(body.contains("action=\"/blog/admin/login/\""), "{body}");
    assert!(!body.contains("\"/admin/"), "a link without /blog: {body}");
    assert!(!body.contains("\"/static/"), "a link without /blog: {body}");
    static_from_nginx(&ng, "/blog/static/admin/css/base.css", "blog");
    log_in(&ng, "/blog");

    // One pool behind two prefixes: each request's links follow its SCRIPT_NAME, but the
    // static URL is the one of the first request the process served.
    let first = ng.get("/two/admin/login/").text();
    assert!(
        first.contains("href=\"/two/static/admin/css/base.css\""),
        "{first}"
    );
    let second = ng.get("/one/admin/login/").text();
    assert!(second.contains("action=\"/one/admin/login/\""), "{second}");
    assert!(
        second.contains("href=\"/two/static/admin/css/base.css\""),
        "Django no longer caches STATIC_URL per process? {second}"
    );

    // The proxy settings: a client's own headers over plain http.
    let spoof = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "localhost"),
    ];
    let who = |path: &str, headers: &[(&str, &str)]| {
        let r = request(ng.port, "GET", path, headers, b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    };
    let plain = who("/whoami/", &[]);
    assert_eq!(plain["scheme"], "http");
    assert_eq!(plain["secure"], false);
    assert_eq!(plain["host"], "localhost");
    assert_eq!(plain["remote_addr"], "127.0.0.1");
    // Without them (the project as startproject made it), the client's headers change nothing.
    assert_eq!(who("/whoami/", &spoof), plain);
    // With them, Django believes the client: the request is "secure".
    assert_eq!(who("/legacy/whoami/", &[])["secure"], false);
    let fooled = who("/legacy/whoami/", &spoof);
    assert_eq!(
        (fooled["scheme"].as_str(), fooled["secure"].as_bool()),
        (Some("https"), Some(true)),
        "{fooled}"
    );
    // ...and the host is the client's X-Forwarded-Host, not its Host: ALLOWED_HOSTS is all
    // that stands in the way (Django answers 400 to a host not in it).
    let r = request(
        ng.port,
        "GET",
        "/legacy/whoami/",
        &[("X-Forwarded-Host", "evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    ng.wait_for("Django's DisallowedHost line in error_log", |ng| {
        ng.log()
            .contains("Invalid HTTP_HOST header: 'evil.example'")
    });
    let r = request(
        ng.port,
        "GET",
        "/whoami/",
        &[("X-Forwarded-Host", "evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()["host"].as_str()),
        (200, Some("localhost"))
    );

    // The pool's user must be able to write the database's directory (SQLite writes a journal
    // beside it): where it cannot, reading works but the log-in (a session and last_login
    // written) is a 500, and Django's traceback says why.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(ng.get("/readonly/admin/login/").status, 200);
        let r = post_login(&ng, "/readonly");
        assert_eq!(r.status, 500, "{}", r.text());
        ng.wait_for("Django's traceback in error_log", |ng| {
            ng.log().contains("attempt to write a readonly database")
        });
        // Written by the console handler Django made at import (preload=on, in the pool
        // manager): still nginx-format lines, tagged with the pool and the worker.
        let line = ng.log_line(&["Internal Server Error: /readonly/admin/login/"]);
        assert!(
            line.contains("[error]") && line.contains("poold \"readonly\": worker "),
            "{line}"
        );
    }
    ng.finish();
}
