// Records the git revision for `graygate --version`: $GRAYGATE_GIT_REV when set (container builds,
// which have no .git), else `git rev-parse`.
fn main() {
    let rev = std::env::var("GRAYGATE_GIT_REV")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GRAYGATE_GIT_REV={rev}");
    println!("cargo:rerun-if-env-changed=GRAYGATE_GIT_REV");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
