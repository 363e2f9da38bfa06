//! The Debian package (SPEC §11): scripts/test builds it with scripts/package (cargo-deb) before
//! the tests; this checks what it holds and installs it into a throwaway root (`dpkg-deb -x`):
//! the file list and modes, the conffile, the maintainer scripts, lintian (Debian's own package
//! checker) with no error or warning, and `systemd-analyze verify` on the unit as installed.
//! (A full install, upgrade, remove and purge through dpkg changes the machine it runs on; it is
//! `scripts/package --install-cycle`, for a disposable machine, with its result in
//! docs/DECISIONS.md.)
use std::path::{Path, PathBuf};
use std::process::Command;

fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no .deb in {}: run scripts/test, which builds it with scripts/package",
            dir.display()
        )
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_installs_the_binary_the_hardened_unit_and_a_private_env_file() {
    use std::os::unix::fs::PermissionsExt;
    let deb = package();
    // The package is the current source's: its binary reports this crate's version.
    let fields = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Version", "Depends"]));
    assert!(fields.contains("Package: pixee-pim"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}-1", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(fields.contains("adduser"), "{fields}");

    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path()));
    let mode = |p: &str| {
        std::fs::metadata(root.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };
    for (path, expected) in [
        ("usr/bin/pixee-pim", 0o755),
        ("etc/pixee-pim/pixee-pim.env", 0o640),
        ("usr/lib/systemd/system/pixee-pim.service", 0o644),
        ("usr/share/man/man1/pixee-pim.1.gz", 0o644),
        ("usr/share/man/man1/pixee-pim-serve.1.gz", 0o644),
        ("usr/share/man/man1/pixee-pim-backup.1.gz", 0o644),
        ("usr/share/bash-completion/completions/pixee-pim", 0o644),
        ("usr/share/zsh/vendor-completions/_pixee-pim", 0o644),
        ("usr/share/fish/vendor_completions.d/pixee-pim.fish", 0o644),
        ("usr/share/doc/pixee-pim/copyright", 0o644),
        ("usr/share/doc/pixee-pim/changelog.Debian.gz", 0o644),
    ] {
        assert_eq!(mode(path), expected, "{path}");
    }
    // Nothing under the data directory: it belongs to the service, not to the package.
    assert!(!root.path().join("var/lib/pixee-pim").exists());
    let binary = root.path().join("usr/bin/pixee-pim");
    let version = run(Command::new(&binary).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("pixee-pim {}", env!("CARGO_PKG_VERSION"))
    );

    // The env file is a conffile (an admin's edits survive upgrades); the scripts create the
    // user, give the env file to its group, and delete the data only on purge.
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    assert_eq!(read("conffiles").trim(), "/etc/pixee-pim/pixee-pim.env");
    let postinst = read("postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("chown root:pixee-pim /etc/pixee-pim/pixee-pim.env"));
    assert!(
        postinst.contains("deb-systemd-helper"),
        "the unit is enabled: {postinst}"
    );
    let postrm = read("postrm");
    let purge = postrm.find(r#"if [ "$1" = "purge" ]; then"#).unwrap();
    let data = postrm.find("rm -rf /var/lib/pixee-pim").unwrap();
    assert!(
        data > purge && postrm[purge..data].lines().count() <= 2,
        "{postrm}"
    );
    assert_eq!(postrm.matches("/var/lib/pixee-pim").count(), 1, "{postrm}");
    for script in ["postinst", "postrm", "prerm"] {
        run(Command::new("sh")
            .arg("-n")
            .arg(control.path().join(script)));
    }

    // lintian: not one error or warning (the two overridden tags say why in the package).
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&deb)
        .output()
        .expect("lintian is installed by scripts/test");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "lintian: {said}"
    );

    // The unit as installed; systemd-analyze wants its binary where ExecStart says, so the
    // copy it checks points into the throwaway root.
    let unit =
        std::fs::read_to_string(root.path().join("usr/lib/systemd/system/pixee-pim.service"))
            .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/pixee-pim serve --data-dir /var/lib/pixee-pim"));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "StateDirectory=pixee-pim",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // The threads that lower their priority (setpriority, in systemd's @resources group, which
    // the unit denies) must not be killed for it: the call is allowed again, and anything else
    // the filter denies fails with EPERM rather than SIGSYS.
    let resources = run(Command::new("systemd-analyze").args(["syscall-filter", "@resources"]));
    assert!(resources.contains("setpriority"), "{resources}");
    let deny = unit
        .find("SystemCallFilter=~@privileged @resources")
        .unwrap();
    let allow = unit.find("SystemCallFilter=setpriority\n").unwrap();
    assert!(allow > deny, "the allow line must follow the deny line");
    assert!(unit.contains("SystemCallErrorNumber=EPERM"));
    let units = tempfile::tempdir().unwrap();
    let checked = units.path().join("pixee-pim.service");
    std::fs::write(
        &checked,
        unit.replace(
            "ExecStart=/usr/bin/pixee-pim",
            &format!("ExecStart={}", binary.display()),
        ),
    )
    .unwrap();
    run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&checked));
}
