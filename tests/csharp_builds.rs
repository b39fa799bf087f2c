//! farm-csc end to end: Mono's mcs 6.8 and xbuild from Debian, a two-project solution
//! and dbus-sharp from Debian sources. mcs output is not deterministic (a module's
//! MVID is random), so outputs are compared with plain mcs's byte for byte except at
//! the bytes two plain builds of the same input differ in, which are few; a hit must
//! restore exactly the bytes the miss produced.

mod common;
use common::farmd::*;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn mcs() -> std::path::PathBuf {
    require("mcs")
}

fn farm_csc_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_farm-csc"))
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn run_csc(env: &Env, farm: bool, dir: &Path, args: &[&str]) -> Output {
    let prog = if farm { farm_csc_bin() } else { mcs() };
    env.cmd(prog).current_dir(dir).args(args).output().unwrap()
}

/// Every file of a build's output, by relative path.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_with_ext(dir, "")
}

/// `got` equals `plain` byte for byte, except at the positions where two plain builds
/// (`plain`, `plain2`) of the same input differ; those must be few (the MVID and the
/// like), and the files must have the same names and sizes.
fn assert_same_but_varying(
    plain: &BTreeMap<String, Vec<u8>>,
    plain2: &BTreeMap<String, Vec<u8>>,
    got: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    assert!(!plain.is_empty(), "{what}: the plain build wrote nothing");
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{what}: output files differ"
    );
    for (name, p) in plain {
        let (p2, g) = (&plain2[name], &got[name]);
        assert_eq!(
            p.len(),
            p2.len(),
            "{what}: two plain builds of {name} differ in size"
        );
        assert_eq!(
            p.len(),
            g.len(),
            "{what}: {name} differs in size from plain"
        );
        let varying: Vec<usize> = (0..p.len()).filter(|&i| p[i] != p2[i]).collect();
        assert!(
            varying.len() <= 64,
            "{what}: {name}: {} varying bytes",
            varying.len()
        );
        let differ: Vec<usize> = (0..p.len())
            .filter(|&i| p[i] != g[i] && !varying.contains(&i))
            .collect();
        assert!(
            differ.is_empty(),
            "{what}: {name} differs from plain at {} bytes beyond the {} that vary (first at {})",
            differ.len(),
            varying.len(),
            differ[0]
        );
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

#[test]
fn mcs_misses_hits_response_files_and_references() {
    mcs();
    let env = Env::new("direct");
    let w = env.work.clone();
    write(
        &w,
        "lib/Greeter.cs",
        "namespace L { public class Greeter { public const int X = 1;\n public static string Hi() { int unused; return \"hi\"; } } }\n",
    );
    write(
        &w,
        "app/Main.cs",
        "class P { static void Main() { System.Console.WriteLine(L.Greeter.Hi() + L.Greeter.X); } }\n",
    );
    write(
        &w,
        "app/Util.cs",
        "static class U { public static int Two() { return 2; } }\n",
    );
    // The library, referenced by bare name through /lib:.
    fs::create_dir_all(w.join("libs")).unwrap();
    let lib = |out: &str| {
        ok(
            run_csc(
                &env,
                false,
                &w,
                &["/t:library", &format!("/out:{out}"), "lib/Greeter.cs"],
            ),
            "mcs lib",
        )
    };
    lib("libs/L.dll");
    // Nested response files, quoting, both option dialects.
    write(&w, "inner.rsp", "-r:L.dll \"app/Util.cs\"\n");
    let rsp = |out: &str| {
        fs::create_dir_all(w.join(out).join("doc")).unwrap();
        write(
            &w,
            &format!("{out}.rsp"),
            &format!(
                "/t:exe /debug /out:{out}/P.exe /doc:{out}/doc/P.xml /lib:libs\n@inner.rsp 'app/Main.cs'\n"
            ),
        );
        format!("@{out}.rsp")
    };
    let plain = |out: &str| ok(run_csc(&env, false, &w, &[&rsp(out)]), "mcs");
    // mcs seeds the MVID and time stamps from the clock: a second apart, two plain
    // builds show which bytes vary.
    let p1 = plain("plain1");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    plain("plain2");
    let cold = ok(run_csc(&env, true, &w, &[&rsp("farm")]), "farm-csc");
    assert_eq!((&cold.stdout, &cold.stderr), (&p1.stdout, &p1.stderr));
    assert_same_but_varying(
        &outputs(&w.join("plain1")),
        &outputs(&w.join("plain2")),
        &outputs(&w.join("farm")),
        "miss",
    );
    assert_eq!(env.misses(), 1);
    let miss_bytes = outputs(&w.join("farm"));
    // The assembly, its symbols and the XML documentation, each where it was named.
    assert_eq!(
        miss_bytes.keys().collect::<Vec<_>>(),
        vec!["P.exe", "P.exe.mdb", "doc/P.xml"]
    );
    // A hit restores exactly what the miss produced, and replays the messages.
    fs::remove_dir_all(w.join("farm")).unwrap();
    let warm = ok(run_csc(&env, true, &w, &[&rsp("farm")]), "farm-csc");
    assert_eq!((&warm.stdout, &warm.stderr), (&p1.stdout, &p1.stderr));
    assert_eq!(
        outputs(&w.join("farm")),
        miss_bytes,
        "a hit restores the miss's bytes"
    );
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    let run = Command::new(require("mono"))
        .env("MONO_PATH", w.join("libs"))
        .arg(w.join("farm/P.exe"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ok(run, "mono").stdout), "hi1\n");
    // The referenced library changes (a constant the exe inlines): a miss.
    std::thread::sleep(std::time::Duration::from_millis(30));
    write(
        &w,
        "lib/Greeter.cs",
        "namespace L { public class Greeter { public const int X = 2;\n public static string Hi() { int unused; return \"hi\"; } } }\n",
    );
    lib("libs/L.dll");
    ok(run_csc(&env, true, &w, &[&rsp("farm")]), "farm-csc");
    assert_eq!(env.misses(), 2, "a referenced assembly is an input");
    let run = Command::new(require("mono"))
        .env("MONO_PATH", w.join("libs"))
        .arg(w.join("farm/P.exe"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ok(run, "mono").stdout), "hi2\n");
    // Every place a bare reference may be found is keyed, found or not: an L.dll
    // appearing in the working directory is a miss (conservative: mcs searches it after
    // /lib:, so it would still take libs/L.dll).
    fs::copy(w.join("libs/L.dll"), w.join("L.dll")).unwrap();
    ok(run_csc(&env, true, &w, &[&rsp("farm")]), "farm-csc");
    assert_eq!(
        env.misses(),
        3,
        "every place a reference may be found is keyed"
    );
    // An edited source is a miss.
    std::thread::sleep(std::time::Duration::from_millis(30));
    write(
        &w,
        "app/Util.cs",
        "static class U { public static int Two() { return 3; } }\n",
    );
    ok(run_csc(&env, true, &w, &[&rsp("farm")]), "farm-csc");
    assert_eq!(env.misses(), 4);
    // A compile error: mcs's exit code and words, nothing stored.
    write(&w, "bad/Bad.cs", "class Bad { int x = \"no\"; }\n");
    let args = ["/t:library", "/out:bad.dll", "bad/Bad.cs"];
    let p = run_csc(&env, false, &w, &args);
    let f = run_csc(&env, true, &w, &args);
    assert_ne!(p.status.code(), Some(0));
    assert_eq!(
        (f.status.code(), &f.stdout, &f.stderr),
        (p.status.code(), &p.stdout, &p.stderr)
    );
    assert_eq!(env.counter(&["compile_failed"]), 1);
    // Version and help are the real compiler's; /pkg: (runs pkg-config) passes through.
    for a in [
        &["--version"][..],
        &["-help"],
        &["/pkg:none", "/out:x.dll", "a.cs"],
    ] {
        let p = run_csc(&env, false, &w, a);
        let f = run_csc(&env, true, &w, a);
        assert_eq!(
            (f.status.code(), &f.stdout, &f.stderr),
            (p.status.code(), &p.stdout, &p.stderr),
            "{a:?}"
        );
    }
    assert_eq!(env.counter(&["passthrough", "information"]), 2);
    assert_eq!(env.counter(&["passthrough", "pkg_config"]), 1);
}

const GUID_LIB: &str = "{5A6B2C1D-1111-4A4A-9B9B-0123456789AB}";
const GUID_APP: &str = "{5A6B2C1D-2222-4A4A-9B9B-0123456789AB}";

fn csproj(kind: &str, name: &str, files: &[&str], project_ref: Option<&str>) -> String {
    let compile: String = files
        .iter()
        .map(|f| format!("    <Compile Include=\"{f}\" />\n"))
        .collect();
    let reference = project_ref
        .map(|r| {
            format!(
                "  <ItemGroup>\n    <ProjectReference Include=\"{r}\">\n      <Project>{GUID_LIB}</Project>\n      <Name>lib</Name>\n    </ProjectReference>\n  </ItemGroup>\n"
            )
        })
        .unwrap_or_default();
    let guid = if kind == "Library" {
        GUID_LIB
    } else {
        GUID_APP
    };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Project DefaultTargets="Build" ToolsVersion="4.0" xmlns="http://schemas.microsoft.com/developer/msbuild/2003">
  <PropertyGroup>
    <Configuration Condition=" '$(Configuration)' == '' ">Debug</Configuration>
    <Platform Condition=" '$(Platform)' == '' ">AnyCPU</Platform>
    <ProjectGuid>{guid}</ProjectGuid>
    <OutputType>{kind}</OutputType>
    <AssemblyName>{name}</AssemblyName>
    <TargetFrameworkVersion>v4.5</TargetFrameworkVersion>
    <DebugSymbols>true</DebugSymbols>
    <DebugType>full</DebugType>
    <OutputPath>bin\Debug</OutputPath>
    <WarningLevel>4</WarningLevel>
  </PropertyGroup>
  <ItemGroup>
    <Reference Include="System" />
  </ItemGroup>
  <ItemGroup>
{compile}  </ItemGroup>
{reference}  <Import Project="$(MSBuildBinPath)\Microsoft.CSharp.targets" />
</Project>
"#
    )
}

fn solution(root: &Path) {
    write(
        root,
        "lib/Greeter.cs",
        "namespace Lib { public class Greeter { public string Hello(string n) { return \"hello, \" + n; } } }\n",
    );
    write(
        root,
        "lib/Shapes.cs",
        "namespace Lib { public static class Shapes { public static double Area(double r) { return System.Math.PI * r * r; } } }\n",
    );
    write(
        root,
        "lib/lib.csproj",
        &csproj("Library", "Lib", &["Greeter.cs", "Shapes.cs"], None),
    );
    write(
        root,
        "app/Program.cs",
        "class Program { static void Main() { System.Console.WriteLine(new Lib.Greeter().Hello(\"farm\")); } }\n",
    );
    write(
        root,
        "app/app.csproj",
        &csproj("Exe", "App", &["Program.cs"], Some("..\\lib\\lib.csproj")),
    );
    let sln = format!(
        "\r\nMicrosoft Visual Studio Solution File, Format Version 11.00\r\n# Visual Studio 2010\r\n\
Project(\"{{FAE04EC0-301F-11D3-BF4B-00C04F79EFBC}}\") = \"lib\", \"lib\\lib.csproj\", \"{GUID_LIB}\"\r\nEndProject\r\n\
Project(\"{{FAE04EC0-301F-11D3-BF4B-00C04F79EFBC}}\") = \"app\", \"app\\app.csproj\", \"{GUID_APP}\"\r\nEndProject\r\n\
Global\r\n\tGlobalSection(SolutionConfigurationPlatforms) = preSolution\r\n\t\tDebug|Any CPU = Debug|Any CPU\r\n\tEndGlobalSection\r\n\
\tGlobalSection(ProjectConfigurationPlatforms) = postSolution\r\n\
\t\t{GUID_LIB}.Debug|Any CPU.ActiveCfg = Debug|Any CPU\r\n\t\t{GUID_LIB}.Debug|Any CPU.Build.0 = Debug|Any CPU\r\n\
\t\t{GUID_APP}.Debug|Any CPU.ActiveCfg = Debug|Any CPU\r\n\t\t{GUID_APP}.Debug|Any CPU.Build.0 = Debug|Any CPU\r\n\
\tEndGlobalSection\r\nEndGlobal\r\n"
    );
    write(root, "two.sln", &sln);
}

/// xbuild with farm-csc as its C# compiler (`CscToolPath`/`CscToolExe`), or plain.
fn xbuild(env: &Env, dir: &Path, target: &str, farm: bool) {
    let mut c = env.cmd(require("xbuild"));
    c.current_dir(dir).arg(target);
    if farm {
        let bin = farm_csc_bin();
        c.arg(format!(
            "/p:CscToolPath={}",
            bin.parent().unwrap().display()
        ))
        .arg("/p:CscToolExe=farm-csc");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "xbuild {target} failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The assemblies and symbol files a build wrote, under every bin/ and obj/.
fn build_outputs(root: &Path, dirs: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for d in dirs {
        for (k, v) in outputs(&root.join(d)) {
            if k.ends_with(".dll")
                || k.ends_with(".exe")
                || k.ends_with(".mdb")
                || k.ends_with(".pdb")
            {
                all.insert(format!("{d}/{k}"), v);
            }
        }
    }
    all
}

#[test]
fn xbuild_two_project_solution_cold_then_warm() {
    mcs();
    let env = Env::new("direct");
    let dirs = ["lib/obj", "app/obj"];
    // Debug symbols hold the sources' absolute paths: every build uses one tree.
    let root = env.work.join("two");
    solution(&root);
    let clean = || {
        for d in ["lib/obj", "lib/bin", "app/obj", "app/bin"] {
            let _ = fs::remove_dir_all(root.join(d));
        }
    };
    let mut plains = Vec::new();
    for _ in 0..2 {
        clean();
        xbuild(&env, &root, "two.sln", false);
        plains.push(build_outputs(&root, &dirs));
    }
    assert_eq!(env.misses(), 0);
    clean();
    xbuild(&env, &root, "two.sln", true);
    assert_eq!(env.misses(), 2, "both projects compiled through farm-csc");
    let cold = build_outputs(&root, &dirs);
    assert_same_but_varying(&plains[0], &plains[1], &cold, "xbuild cold");
    // Warm: a clean tree, every compile a hit, the same bytes as the cold build.
    clean();
    xbuild(&env, &root, "two.sln", true);
    assert_eq!(env.counter(&["hits", "declared"]), 2);
    assert_eq!(
        build_outputs(&root, &dirs),
        cold,
        "a hit restores the miss's bytes"
    );
    let run = Command::new(require("mono"))
        .arg(root.join("app/bin/Debug/App.exe"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ok(run, "mono").stdout),
        "hello, farm\n"
    );
}

#[test]
fn dbus_sharp_from_debian_cold_then_warm_through_xbuild() {
    mcs();
    let src = sources("dbus-sharp");
    let env = Env::new("direct");
    // Debug symbols hold the sources' absolute paths: every build uses one tree.
    let tree = env.work.join("dbus-sharp");
    copy_tree(&src, &tree);
    let mut plains = Vec::new();
    for _ in 0..2 {
        let _ = fs::remove_dir_all(tree.join("src/obj"));
        xbuild(&env, &tree.join("src"), "dbus-sharp.csproj", false);
        plains.push(build_outputs(&tree, &["src/obj"]));
    }
    fs::remove_dir_all(tree.join("src/obj")).unwrap();
    xbuild(&env, &tree.join("src"), "dbus-sharp.csproj", true);
    assert_eq!(env.misses(), 1);
    let cold = build_outputs(&tree, &["src/obj"]);
    assert!(
        cold.keys().any(|k| k.ends_with("dbus-sharp.dll")),
        "{:?}",
        cold.keys()
    );
    assert_same_but_varying(&plains[0], &plains[1], &cold, "dbus-sharp cold");
    fs::remove_dir_all(tree.join("src/obj")).unwrap();
    xbuild(&env, &tree.join("src"), "dbus-sharp.csproj", true);
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    assert_eq!(build_outputs(&tree, &["src/obj"]), cold);
}

#[test]
fn remote_mcs_ships_references_once_and_matches_plain() {
    mcs();
    let farm = Cluster::home_and_peer();
    let env = Env::new("direct");
    let w = env.work.clone();
    write(
        &w,
        "lib/G.cs",
        "namespace L { public class G { public const int X = 5; } }\n",
    );
    for d in ["libs", "plain1", "plain2", "farm"] {
        fs::create_dir_all(w.join(d)).unwrap();
    }
    ok(
        run_csc(
            &env,
            false,
            &w,
            &["/t:library", "/out:libs/L.dll", "lib/G.cs"],
        ),
        "mcs lib",
    );
    write(&w, "app/A.cs", "class A { int x = L.G.X; }\n");
    write(&w, "app/B.cs", "class B { static void Main() {} }\n");
    let args = |out: &str| {
        vec![
            "/t:exe".to_string(),
            format!("/out:{}", w.join(out).join("A.exe").display()),
            format!("/r:{}", w.join("libs/L.dll").display()),
            w.join("app/A.cs").display().to_string(),
            w.join("app/B.cs").display().to_string(),
        ]
    };
    let run = |out: &str, farm_on: bool| {
        let prog = if farm_on { farm_csc_bin() } else { mcs() };
        env.cmd(prog)
            .env("FARM_AGENT", farm.nodes[0].socket())
            .current_dir(&w)
            .args(args(out))
            .output()
            .unwrap()
    };
    let p = ok(run("plain1", false), "mcs");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(run("plain2", false), "mcs");
    let f = ok(run("farm", true), "farm-csc");
    assert_eq!((&f.stdout, &f.stderr), (&p.stdout, &p.stderr));
    assert_same_but_varying(
        &outputs(&w.join("plain1")),
        &outputs(&w.join("plain2")),
        &outputs(&w.join("farm")),
        "remote mcs",
    );
    assert_eq!(
        env.counter(&["farm", "remote"]),
        1,
        "{}",
        String::from_utf8_lossy(&fs::read(&env.log).unwrap_or_default())
    );
    // Another machine's shim (an empty local cache) gets the same bytes from the
    // farm's cache.
    // (The first shim published its result asynchronously through its agent.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    let other = Env::new("direct");
    fs::create_dir_all(w.join("farm2")).unwrap();
    let a2 = args("farm2");
    let o = other
        .cmd(farm_csc_bin())
        .env("FARM_AGENT", farm.nodes[0].socket())
        .current_dir(&w)
        .args(&a2)
        .output()
        .unwrap();
    ok(o, "farm-csc, farm hit");
    assert_eq!(other.counter(&["hits", "farm"]), 1);
    assert_eq!(outputs(&w.join("farm2")), outputs(&w.join("farm")));
    let blobs = files_with_ext(&farm.nodes[1].dir.join("state/blobs"), "b").len();
    assert_eq!(blobs, 3, "two sources and the reference");
    std::thread::sleep(std::time::Duration::from_millis(30));
    write(
        &w,
        "app/B.cs",
        "class B { static void Main() { } static int Y; }\n",
    );
    ok(run("farm", true), "farm-csc");
    assert_eq!(env.counter(&["farm", "remote"]), 2);
    assert_eq!(
        files_with_ext(&farm.nodes[1].dir.join("state/blobs"), "b").len(),
        blobs + 1,
        "only the edited source crosses again"
    );
}
