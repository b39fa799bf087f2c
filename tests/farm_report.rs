//! The build journal (FARM_JOURNAL) and `farm report` on real builds: lua5.4 by
//! `make -j2` through farm-cc, cold then warm; a compile shipped to a peer of a real
//! two-farmd cluster; journals that cannot be written.

mod common;
use common::farmd::*;
use common::*;

use std::fs;
use std::path::Path;

use farm::journal::{self, Kind, Line};

fn read_journal(path: &Path) -> Vec<Line> {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "the journal ends with a whole line");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            journal::parse_line(l).unwrap_or_else(|e| panic!("journal line {}: {e}: {l:?}", i + 1))
        })
        .collect()
}

/// `farm report ARGS`, asserting success; the page's text.
fn report(env: &Env, journal: &Path, args: &[&str]) -> String {
    let out = journal.with_extension("html");
    let o = env
        .cmd(farm_bin())
        .arg("report")
        .arg(journal)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "farm report: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        out.display().to_string(),
        "prints the page's path"
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::read_to_string(&out).unwrap()
}

/// The HTML table with `id`, as text.
fn table<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<table id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no table {id}"));
    let len = page[start..].find("</table>").unwrap();
    &page[start..start + len]
}

#[test]
fn lua_make_j2_journal_then_report() {
    require("gcc");
    require("make");
    let src = sources("lua5.4");
    let env = Env::new("direct");
    let tree = env.root.path().join("lua");
    let jpath = env.root.path().join("build.jsonl");
    copy_tree(&src, &tree);
    let farm_cc = farm_cc_bin().display().to_string();
    let make = || {
        let o = env
            .cmd("make")
            .current_dir(tree.join("src"))
            .args(["-j2", "linux", &format!("CC={farm_cc} -std=gnu99")])
            .env("FARM_JOURNAL", &jpath)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "make failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    make();
    let objects: Vec<String> = objects(&tree).into_keys().collect();
    let n = objects.len();
    assert!(n >= 30, "lua has ~34 TUs, got {n}");
    let cold = read_journal(&jpath);
    let compiles: Vec<&Line> = cold
        .iter()
        .filter(|l| l.outcome != Kind::Passthrough)
        .collect();
    assert_eq!(compiles.len(), n, "one line per compile: {cold:#?}");
    for l in &compiles {
        assert_eq!(l.outcome, Kind::Miss, "{l:?}");
        assert_eq!(l.ran.as_deref(), Some("home"));
        assert_eq!(l.family.as_deref(), Some("gcc"));
        assert!(l.compile_ms.is_some() && l.out_bytes.unwrap() > 0, "{l:?}");
        assert_eq!(l.exit, Some(0));
        assert!(Path::new(l.source_abs.as_ref().unwrap()).is_file());
    }
    // Every object's source is journaled once.
    for o in &objects {
        let c = Path::new(o).with_extension("c");
        let c = c.file_name().unwrap().to_string_lossy();
        assert_eq!(
            compiles
                .iter()
                .filter(|l| l.source.as_deref() == Some(&*c))
                .count(),
            1,
            "{c}"
        );
    }
    // The links went through farm-cc too: pass-throughs with their reason.
    let links = cold.len() - n;
    assert!(links >= 2, "lua and luac are linked by $CC");
    assert!(cold
        .iter()
        .filter(|l| l.outcome == Kind::Passthrough)
        .all(|l| l.reason.as_deref() == Some("passthrough.link")));

    // A pause longer than --gap between the builds: the report splits them.
    sh(&tree.join("src"), "make clean >/dev/null");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    make();
    let all = read_journal(&jpath);
    assert_eq!(all.len(), 2 * cold.len(), "one line per compile, no other");
    let warm = &all[cold.len()..];
    let hits: Vec<&Line> = warm.iter().filter(|l| l.outcome == Kind::Hit).collect();
    assert_eq!(hits.len(), n, "every TU hits: {warm:#?}");
    assert!(hits.iter().all(|l| l.tier.as_deref() == Some("local")
        && l.how.as_deref() == Some("hit.direct")
        && l.saved_ms.is_some()));
    let saved: u64 = hits.iter().map(|l| l.saved_ms.unwrap()).sum();
    assert!(saved > 0, "hits save time: {hits:#?}");

    let page = report(&env, &jpath, &["--gap", "2"]);
    for bad in ["http://", "https://", "src=", "<link"] {
        assert!(!page.contains(bad), "the page fetches nothing: {bad}");
    }
    for l in &compiles {
        assert!(page.contains(l.source.as_deref().unwrap()));
    }
    assert!(page.contains("<b id=\"hit-rate\">50%</b>"));
    let builds = table(&page, "builds");
    assert_eq!(builds.matches("<td class=\"rate\">").count(), 2, "{builds}");
    assert!(builds.contains("<td class=\"rate\">0%</td>"));
    assert!(builds.contains("<td class=\"rate\">100%</td>"));
    assert_eq!(page.matches("<svg class=\"timeline\"").count(), 2);
    assert_eq!(page.matches("<rect class=\"hit\"").count(), n);
    assert_eq!(page.matches("<rect class=\"miss\"").count(), n);
    let slowest = table(&page, "slowest");
    assert!(slowest.matches("<tr>").count() > 10, "{slowest}");
    let reasons = table(&page, "reasons");
    assert!(reasons.contains(&format!("<td>passthrough.link</td><td>{}</td>", 2 * links)));
    let dirs = table(&page, "dirs");
    let srcdir = tree.join("src").display().to_string();
    assert!(
        dirs.contains(&format!(
            "<td>{srcdir}</td><td>{}</td><td>{n}</td><td>{n}</td><td>50%</td>",
            2 * n
        )),
        "{dirs}"
    );

    // The page as a browser shows it, offline: its script ran, the timelines drew.
    if let Some(chromium) = common::chromium::chromium() {
        let url = format!("file://{}", jpath.with_extension("html").display());
        let dom = common::chromium::run_chromium(&chromium, &url, &["--dump-dom"]);
        assert_eq!(dom.matches("<svg class=\"timeline\"").count(), 2, "{dom}");
        assert_eq!(dom.matches("<rect class=\"hit\"").count(), n);
        assert!(dom.contains("Slowest compiles"));
        common::chromium::screenshot(&chromium, &url, "report.png");
    }

    // Without --gap (10 s) the two builds are one.
    let page = report(&env, &jpath, &[]);
    assert_eq!(
        table(&page, "builds")
            .matches("<td class=\"rate\">")
            .count(),
        1
    );
    let out = env.root.path().join("elsewhere.html");
    let o = env
        .cmd(farm_bin())
        .args(["report", "-o"])
        .arg(&out)
        .arg(&jpath)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(fs::read_to_string(&out)
        .unwrap()
        .contains("Slowest compiles"));
}

#[test]
fn a_compile_shipped_to_a_peer_names_it_in_journal_and_report() {
    require("gcc");
    let cl = Cluster::home_and_peer();
    let env = Env::new("direct");
    let jpath = env.root.path().join("farm.jsonl");
    for i in 0..3 {
        env.write(
            &format!("f{i}.c"),
            &format!("int f{i}(int x) {{ return x * {i} + 1; }}\n"),
        );
        let o = env
            .cmd(farm_bin())
            .args(["gcc", "-O2", "-c", &format!("f{i}.c")])
            .env("FARM_AGENT", cl.nodes[0].socket())
            .env("FARM_JOURNAL", &jpath)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let lines = read_journal(&jpath);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l.outcome, Kind::Miss, "{l:?}");
        assert_eq!(l.ran.as_deref(), Some("peer"), "{l:?}");
        assert_eq!(l.peer.as_deref(), Some("peer"), "{l:?}");
        assert_eq!(l.how.as_deref(), Some("farm.remote"));
        assert!(l.fetched_bytes.unwrap() > 0);
    }
    let page = report(&env, &jpath, &[]);
    let place = table(&page, "where");
    assert!(
        place.contains("<tr><td>peer</td><td>3</td>"),
        "the peer compiled all three: {place}"
    );
    assert!(page.contains("miss on peer"));
}

/// A journal farm cannot write changes nothing: same output, messages and exit
/// code as without one, on a miss, a hit, a failed compile and a pass-through.
#[test]
fn unwritable_journal_changes_nothing() {
    require("gcc");
    let env = Env::new("direct");
    env.write("warn.c", "int f(void) { int x; return 1; }\n");
    env.write("bad.c", "int f(void) { return nope; }\n");
    fs::create_dir_all(env.work.join("adir")).unwrap();
    let run = |journal: Option<&Path>, args: &[&str]| {
        let mut c = env.cmd(farm_cc_bin());
        c.args(args);
        if let Some(j) = journal {
            c.env("FARM_JOURNAL", j);
        }
        c.output().unwrap()
    };
    let cases: [&[&str]; 4] = [
        &["-Wall", "-c", "warn.c", "-o", "w.o"],
        &["-Wall", "-c", "warn.c", "-o", "w.o"],
        &["-c", "bad.c", "-o", "b.o"],
        &["-E", "warn.c"],
    ];
    for args in cases {
        let plain = run(None, args);
        for journal in [
            env.work.join("adir"),
            env.work.join("no/such/dir/j.jsonl"),
            Path::new("/proc/version").to_path_buf(),
        ] {
            let o = run(Some(&journal), args);
            assert_eq!(o.status.code(), plain.status.code(), "{args:?} {journal:?}");
            assert_eq!(o.stdout, plain.stdout, "{args:?} {journal:?}");
            assert_eq!(o.stderr, plain.stderr, "{args:?} {journal:?}");
        }
    }
    assert_eq!(env.hits(), 7, "the warning compile hits once cached");
    assert!(!env.work.join("no").exists());
    // The failure is in farm's log, not on the compiler's stderr.
    let log = fs::read_to_string(&env.log).unwrap();
    assert!(log.contains("cannot write the build journal"), "{log}");
}

#[test]
fn report_errors_name_the_journal() {
    let env = Env::new("direct");
    let j = env.root.path().join("j.jsonl");
    let mut good = Line::begin(std::time::Instant::now(), Path::new("gcc"));
    good.set_source(Path::new("a.c"));
    good.outcome = Kind::Miss;
    let mut text = good.encode();
    text.extend(b"{ torn line\n");
    text.extend(good.encode());
    text.extend(b"garbage\n");
    fs::write(&j, &text).unwrap();
    let o = env.cmd(farm_bin()).arg("report").arg(&j).output().unwrap();
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&j.display().to_string())
            && stderr.contains("2 bad line(s)")
            && stderr.contains("line 2"),
        "{stderr}"
    );
    let page = fs::read_to_string(j.with_extension("html")).unwrap();
    assert!(page.contains("2 bad line(s)"));

    for unreadable in [env.root.path().join("none.jsonl"), env.work.clone()] {
        let o = env
            .cmd(farm_bin())
            .arg("report")
            .arg(&unreadable)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&unreadable.display().to_string()),
            "{stderr}"
        );
    }
    let o = env
        .cmd(farm_bin())
        .args(["report", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("usage: farm report JOURNAL"));
}
