//! `farm gradle-init` and `farm maven-init`: route Gradle's and Maven's javac
//! through `farm-javac` without editing any build file, switched on by an
//! environment variable (`FARM_GRADLE` / `FARM_MAVEN`) so one install serves builds
//! with and without farm.

use std::io::Write;
use std::path::{Path, PathBuf};

/// `farm-javac` beside the running `farm` binary, else the name for PATH.
fn farm_javac_path() -> String {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join("farm-javac");
            if p.is_file() {
                return p.to_string_lossy().into_owned();
            }
        }
    }
    "farm-javac".into()
}

/// Gradle init script: every JavaCompile task forks `farm-javac` when FARM_GRADLE is
/// set (1/true/yes/on); a task that already names an executable keeps it.
pub fn gradle_script(farm_javac: &str) -> String {
    let exe = farm_javac.replace('\\', "\\\\").replace('\'', "\\'");
    format!(
        "// farm: compile Java through farm-javac when FARM_GRADLE=1 (written by `farm gradle-init`).
// Gradle's daemon keeps the environment it started with: run `gradle --stop` after
// changing FARM_GRADLE or other FARM_* variables.
def farmOn = (System.getenv('FARM_GRADLE') ?: '').toLowerCase() in ['1', 'true', 'yes', 'on']
if (farmOn) {{
    allprojects {{
        tasks.withType(JavaCompile) {{
            if (!options.forkOptions.executable) {{
                options.fork = true
                options.forkOptions.executable = '{exe}'
            }}
        }}
    }}
}}
"
    )
}

/// Maven settings with a profile that forks `farm-javac` when FARM_MAVEN is set.
pub fn maven_settings(farm_javac: &str) -> String {
    let exe = farm_javac
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!-- farm: compile Java through farm-javac when FARM_MAVEN is set (written by `farm maven-init`).
     Merge the profile into an existing settings.xml, or pass this file with -s. -->
<settings>
  <profiles>
    <profile>
      <id>farm</id>
      <activation>
        <property><name>env.FARM_MAVEN</name></property>
      </activation>
      <properties>
        <maven.compiler.fork>true</maven.compiler.fork>
        <maven.compiler.executable>{exe}</maven.compiler.executable>
      </properties>
    </profile>
  </profiles>
</settings>
"
    )
}

fn gradle_user_home() -> Option<PathBuf> {
    std::env::var_os("GRADLE_USER_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".gradle")))
}

fn install(path: &Path, text: &str, overwrite: bool) -> Result<(), String> {
    if !overwrite && path.exists() {
        return Err(format!(
            "{} exists; farm does not edit it: add the profile printed by `farm maven-init` yourself",
            path.display()
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::fsutil::write_atomic(path, text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Prints `text`, or with `--install` writes it where `dest` says.
fn init_command(
    command: &str,
    install_it: bool,
    text: &str,
    dest: Option<PathBuf>,
    overwrite: bool,
    how: &str,
) -> i32 {
    let fail = |msg: String| {
        let _ = writeln!(std::io::stderr(), "farm: {msg}");
        1
    };
    match install_it {
        false => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            0
        }
        true => {
            let Some(path) = dest else {
                return fail(format!("{command}: no home directory to install into"));
            };
            match install(&path, text, overwrite) {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "installed {}; {how}", path.display());
                    0
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// `farm gradle-init [--install]`: the init script, or `~/.gradle/init.d/farm.gradle`.
pub fn gradle_init(install: bool) -> i32 {
    let dest = gradle_user_home().map(|h| h.join("init.d/farm.gradle"));
    let text = gradle_script(&farm_javac_path());
    init_command(
        "gradle-init",
        install,
        &text,
        dest,
        true,
        "builds use farm when FARM_GRADLE=1",
    )
}

/// `farm maven-init [--install]`: the settings file, or `~/.m2/settings.xml` when
/// there is none yet.
pub fn maven_init(install: bool) -> i32 {
    let dest = dirs::home_dir().map(|h| h.join(".m2/settings.xml"));
    let text = maven_settings(&farm_javac_path());
    init_command(
        "maven-init",
        install,
        &text,
        dest,
        false,
        "builds use farm when FARM_MAVEN=1",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_the_path() {
        let g = gradle_script("/opt/o'neil/farm-javac");
        assert!(g.contains("executable = '/opt/o\\'neil/farm-javac'"));
        assert!(g.contains("FARM_GRADLE"));
        let m = maven_settings("/opt/a&b/farm-javac");
        assert!(m.contains("<maven.compiler.executable>/opt/a&amp;b/farm-javac<"));
        assert!(m.contains("env.FARM_MAVEN"));
    }
}
