//! Fan-out inside a request: the seed's `multiprocessing.Pool` snippet with only its import
//! changed (`from ngx_pool import Pool`), in a Flask view served by a real nginx, module, poold
//! and CPython; the Pool API, the failure semantics, and what is left after a killed caller.

use ngx_pool_tests::http::request;
use ngx_pool_tests::{memory, procs, python_apps, python_env, Conf, Nginx};
use std::time::Duration;

fn fanout_pool(workers: u32, extra: &str) -> String {
    format!(
        "    pool fan handler=wsgi:fanout:app venv={} chdir={} workers={workers} env=WORK=5000 {extra};",
        python_env().display(),
        python_apps().display()
    )
}

const LOCATIONS: &str =
    "    location / { pool_pass fan; }\n    location = /status { pool_status; }";

fn counters(ng: &Nginx) -> serde_json::Value {
    ng.get("/status").json()["pools"][0].clone()
}

/// Waits until the pool holds no slot and no chunk: nothing leaked.
fn settled(ng: &mut Nginx) {
    ng.wait_for("every slot and chunk back", |ng| {
        let p = counters(ng);
        p["slots"]["in_use"] == 0 && p["chunks"]["in_use"] == 0
    });
}

#[test]
fn the_seed_snippet_runs_with_only_its_import_changed_at_one_worker_and_all_fanning_out() {
    for workers in [4u32, 1] {
        let mut ng = Nginx::start(Conf::new(&fanout_pool(workers, ""), LOCATIONS));
        let before = memory::pool_workers(&ng);
        // With idle workers the tasks spread; a caller whose pool gets no CPU for a moment (the
        // suite runs tests side by side on two cores) takes them back and runs them itself, as
        // it should. So: spread at least once in a few tries.
        let mut spread = Vec::new();
        for _ in 0..5 {
            let r = ng.get("/seed?n=8");
            assert_eq!(r.status, 200, "{}", r.text());
            let j = r.json();
            assert_eq!(j["sum"], 140, "0² + .. + 7²");
            spread.push(j["workers"].as_u64().unwrap());
            if workers == 1 || spread.last() >= Some(&2) {
                break;
            }
        }
        if workers == 1 {
            assert_eq!(spread, [1]);
        } else {
            assert!(
                spread.iter().any(|w| *w >= 2),
                "never spread over the pool: workers per try {spread:?}"
            );
        }
        // Every worker fans out at once, twice over.
        let all: Vec<_> = (0..2 * workers)
            .map(|_| {
                let port = ng.port;
                std::thread::spawn(move || request(port, "GET", "/seed?n=8", &[], b"").unwrap())
            })
            .collect();
        for t in all {
            let r = t.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["sum"], 140);
        }
        // No process was created: the same pool workers, nothing else.
        assert_eq!(memory::pool_workers(&ng), before);
        let p = counters(&ng);
        let c = &p["counters"];
        // multiprocessing's chunking: 8 items over min(4, workers) processes.
        let per_map = if workers == 1 { 4 } else { 8 };
        assert_eq!(
            c["tasks_completed"].as_u64().unwrap() + c["tasks_inline"].as_u64().unwrap(),
            per_map * (2 * workers as u64 + spread.len() as u64),
            "every task ran once: {c}"
        );
        assert_eq!(c["worker_exits"], 0, "{c}");
        settled(&mut ng);
        ng.finish();
    }
}

#[test]
fn the_pool_api_people_use_works_and_nests() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(3, ""), LOCATIONS));
    let r = ng.get("/api");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let squares: Vec<u64> = (0..10).map(|x| x * x).collect();
    assert_eq!(j["map"], serde_json::json!(squares));
    assert_eq!(j["imap"], serde_json::json!([0, 1, 4, 9, 16, 25]));
    assert_eq!(j["imap_unordered"], serde_json::json!([0, 1, 4, 9, 16, 25]));
    assert_eq!(j["starmap"], serde_json::json!([3, 7]));
    assert_eq!(j["apply"], 11);
    assert_eq!(j["apply_async"], 15);
    assert_eq!(j["map_async"], serde_json::json!([4, 9]));
    assert_eq!(j["ready"], serde_json::json!([true, true]));
    assert_eq!(j["nested"], serde_json::json!([5, 14]));
    assert_eq!(j["empty"], serde_json::json!([]));
    assert_eq!(j["callbacks"], serde_json::json!(["15", "[4, 9]"]));
    assert_eq!(j["executor"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(j["executor_map"], serde_json::json!([0, 1, 4, 9]));
    settled(&mut ng);
    ng.finish();
}

#[test]
fn a_task_exception_comes_back_with_its_remote_traceback() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(2, ""), LOCATIONS));
    let j = ng.get("/error").json();
    assert_eq!(j["error"], "task 3 refused");
    let remote = j["remote"].as_str().unwrap();
    assert!(
        remote.contains("Traceback (most recent call last)"),
        "{remote}"
    );
    assert!(remote.contains("in fail"), "{remote}");
    assert!(remote.contains("ValueError: task 3 refused"), "{remote}");
    settled(&mut ng);
    ng.finish();
}

#[test]
fn a_worker_killed_mid_task_is_worker_lost_in_the_caller_and_is_replaced() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(3, ""), LOCATIONS));
    ng.allow("killed by SIGKILL");
    ng.allow("while running a fan-out task");
    ng.allow("while running a request");
    // The task that kills its worker is lost for the caller. Which worker runs it is up to the
    // pool: the caller itself may have taken it back (then the request dies with it: 502).
    let mut lost = false;
    for _ in 0..10 {
        let r = ng.get("/lost");
        if r.status == 502 {
            continue;
        }
        assert_eq!(
            r.json(),
            serde_json::json!([0, "lost", 2, 3]),
            "{}",
            r.text()
        );
        lost = true;
        break;
    }
    assert!(lost, "some run had the task on another worker");
    ng.wait_for("the worker replaced", |ng| {
        counters(ng)["workers"].as_array().unwrap().len() == 3
            && counters(ng)["counters"]["respawns"].as_u64().unwrap() >= 1
    });
    assert_eq!(ng.get("/seed?n=4").json()["sum"], 14, "the pool goes on");
    settled(&mut ng);
    ng.finish();
}

#[test]
fn the_deadline_applies_to_the_tasks_and_a_client_gone_cancels_them() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(4, "timeout=1s"), LOCATIONS));
    ng.allow("past the pool's timeout");
    ng.allow("past its request's deadline");
    ng.allow("killed by SIGTERM");
    let started = std::time::Instant::now();
    let r = ng.get("/slow?s=30&n=4");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    // The runners were stopped too: no worker still sleeps in a task.
    ng.wait_for("every worker idle again", |ng| {
        let p = counters(ng);
        p["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "idle")
            .count()
            == 4
    });
    settled(&mut ng);
    let log = ng.log();
    assert!(log.contains("fan-out task"), "{log}");
    ng.finish();

    // A client that goes away: its tasks are cancelled and their workers stopped.
    let mut ng = Nginx::start(Conf::new(&fanout_pool(4, ""), LOCATIONS));
    ng.allow("past its request's deadline");
    ng.allow("killed by SIGTERM");
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
        s.write_all(b"GET /slow?s=30&n=4 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        ng.wait_for("the tasks running", |ng| {
            counters(ng)["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "task")
                .count()
                >= 2
        });
    }
    // The workers running its tasks are stopped and replaced; the caller itself (which may run
    // one of its tasks in its own frame) goes on like any request whose client left.
    ng.wait_for("the tasks stopped", |ng| {
        let p = counters(ng);
        p["counters"]["respawns"].as_u64().unwrap() >= 2
            && !p["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["state"] == "task")
    });
    // Said by poold when it saw the request abandoned first, or, when the caller saw it
    // first and gave its tasks up, by the deadline that then stops them (either may be
    // written after the counters moved).
    ng.wait_for("the line saying so", |ng| {
        let log = ng.log();
        log.contains("of its fan-out tasks stopped") || log.contains("(or its caller gave it up)")
    });
    ng.finish();
}

#[test]
fn a_caller_killed_mid_map_leaks_nothing_and_leaves_no_process() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(4, ""), LOCATIONS));
    ng.allow("killed by SIGKILL");
    ng.allow("fan-out tasks of its own");
    let port = ng.port;
    let client =
        std::thread::spawn(move || request(port, "GET", "/slow?s=1&n=8", &[], b"").unwrap());
    // The caller is the busy worker (the others show "task" while they run its tasks).
    let mut caller = 0u32;
    ng.wait_for("the caller to fan out", |ng| {
        let p = counters(ng);
        let workers = p["workers"].as_array().unwrap().clone();
        let busy: Vec<_> = workers.iter().filter(|w| w["state"] == "busy").collect();
        let tasks = workers.iter().filter(|w| w["state"] == "task").count();
        if busy.len() == 1 && tasks >= 1 {
            caller = busy[0]["pid"].as_u64().unwrap() as u32;
        }
        caller != 0
    });
    procs::kill(caller, libc::SIGKILL);
    assert_eq!(client.join().unwrap().status, 502);
    settled(&mut ng);
    ng.wait_for("the pool at its size", |ng| {
        memory::pool_workers(ng).len() == 4
    });
    assert!(!procs::alive(caller));
    assert_eq!(ng.get("/seed?n=4").json()["sum"], 14, "the pool goes on");
    ng.finish();
}

#[test]
fn a_100_mib_result_streams_through_a_small_arena() {
    // 16 MiB of arena: the result passes through it in windows.
    let mut ng = Nginx::start(Conf::new(&fanout_pool(2, "arena=16m"), LOCATIONS));
    let r = ng.get("/big?mib=100");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["size"], 100 << 20);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest((0..=255u8).collect::<Vec<_>>().repeat(4096 * 100))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(j["sha256"], want);
    settled(&mut ng);
    ng.finish();
}

#[test]
fn outside_a_pool_worker_ngx_pool_is_multiprocessing() {
    // The same code run by a plain interpreter (flask run, pytest, a script): a real
    // multiprocessing.Pool and ProcessPoolExecutor.
    let script = r#"
import concurrent.futures, multiprocessing.pool, ngx_pool

def square(x):
    return x * x

if __name__ == "__main__":
    assert not ngx_pool.in_pool()
    with ngx_pool.Pool(2) as pool:
        assert isinstance(pool, multiprocessing.pool.Pool), type(pool)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    with ngx_pool.Executor(2) as ex:
        assert isinstance(ex, concurrent.futures.ProcessPoolExecutor)
        assert list(ex.map(square, [3])) == [9]
    print("ok")
"#;
    let root = python_apps().join("../../..").canonicalize().unwrap();
    let dir = ngx_pool_tests::temp_prefix();
    let file = dir.join("fallback.py");
    std::fs::write(&file, script).unwrap();
    let out = std::process::Command::new(python_env().join("bin/python"))
        .arg(&file)
        .env("PYTHONPATH", root.join("python/ngx-pool"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The checks of tests/python/apps/mpcheck.py (multiprocessing's documented behaviour of every
/// Pool method and error case) have no failures.
fn assert_no_mp_failures(r: &ngx_pool_tests::http::Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!([]),
        "{what}: ngx_pool.Pool differs from multiprocessing.Pool"
    );
}

#[test]
fn ngx_pool_pool_behaves_as_multiprocessing_pool_in_a_pool_worker() {
    // At workers=1 every task is run by its caller (no other worker): timeouts, errors and
    // pickling must still be multiprocessing's.
    for workers in [4u32, 1] {
        let mut ng = Nginx::start(Conf::new(&fanout_pool(workers, "timeout=60s"), LOCATIONS));
        let r = ng.get("/mp-checks");
        assert_no_mp_failures(&r, &format!("workers={workers}"));
        settled(&mut ng);
        ng.finish();
    }
}

#[test]
fn ngx_pool_pool_behaves_as_multiprocessing_pool_outside_a_pool_worker() {
    let apps = python_apps();
    let root = apps.join("../../..").canonicalize().unwrap();
    let out = std::process::Command::new(python_env().join("bin/python"))
        .arg(apps.join("mpcheck.py"))
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                root.join("python/ngx-pool").display(),
                apps.display()
            ),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"[]\n",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_map_from_threadpoolexecutor_threads_runs_in_parallel_on_the_workers() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(4, "timeout=60s"), LOCATIONS));
    let r = ng.get("/threads?t=4&n=3000000");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["tasks"], 8, "{j}");
    // Run by the other workers, not one after another in the caller.
    assert!(
        j["pids"].as_u64().unwrap() >= 3,
        "tasks ran on few workers: {j}"
    );
    // ...at the same time: tasks ran in two processes or more at once (the spans each task
    // measured on the machine's monotonic clock; before, all ran in the caller). Times are
    // printed, not asserted: speed is the benchmark's business.
    assert!(
        j["overlap"].as_u64().unwrap() >= 2,
        "no two processes ran tasks at once: {j}"
    );
    eprintln!(
        "4 threads' maps: {:.3} s; the same work serially: {:.3} s",
        j["threaded"].as_f64().unwrap(),
        j["serial"].as_f64().unwrap()
    );
    settled(&mut ng);
    ng.finish();
}

#[test]
fn tasks_a_request_left_behind_do_not_reach_the_next_request() {
    let mut ng = Nginx::start(Conf::new(&fanout_pool(2, ""), LOCATIONS));
    for round in 0..4 {
        let left = ng.get("/leave?n=4&s=0.3");
        assert_eq!(left.status, 200, "{}", left.text());
        // At once, in whichever worker: the pool's own tasks only.
        for _ in 0..2 {
            let r = ng.get("/seed?n=4");
            assert_eq!(r.status, 200, "round {round}: {}", r.text());
            assert_eq!(r.json()["sum"], 14, "round {round}");
        }
    }
    settled(&mut ng);
    ng.allow("ResourceWarning");
    ng.finish();
}
