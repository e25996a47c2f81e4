//! The launchers that start host agents for `pstream-coord run`: `--ssh` to
//! simulated hosts (network namespaces, each with its own sshd, from the scripts in
//! tests/cluster/), and `--launcher slurm` on a Slurm cluster whose nodes are those
//! hosts. The names, subnet and ports are this file's own, so that its clusters
//! never touch another on this machine.
//!
//! Needs root, `ip` (iproute2), and for the ssh tests openssh-server, for the Slurm
//! tests munge and slurm (the scripts install them with apt-get when missing).
//! Without root the tests fail, saying so; set `PSTREAM_SKIP_CLUSTER=1` to skip
//! them instead (each says that it was skipped). They take the cluster tests' lock,
//! so that one cluster is up at a time, and tear everything down when they end,
//! passed or failed.

#[path = "support/cluster.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{
    assert_every_host_worked, assert_workers_on_every_host, bin, poll, read_json, stats,
    write_numbers, Cluster, Names, Run, Services,
};

/// This file's clusters: the simulated hosts' names are `psln-h` and a number;
/// bridge, subnet, ports and state directory are this file's own. The lock is
/// shared with tests/cluster.rs, so that one of their clusters is up at a time.
static NAMES: Names = Names {
    tests: "the launcher tests",
    root_for: "network namespaces, sshd, slurmd",
    prefix: "psln-h",
    bridge: "pslnbr",
    subnet: "10.81.0",
    lock: "pstream-cluster-tests.lock",
    state: "pstream-launchers-cluster",
    sshd_port: Some(2251),
    slurm_ports: Some((16851, 16852)),
};

/// A generous limit for anything that takes seconds: a hang guard, not a timing
/// assertion.
const PATIENCE: Duration = Duration::from_secs(180);

/// `hosts` simulated hosts with `services`, or `None` if the tests are skipped.
fn up(hosts: usize, services: Services) -> Option<Cluster> {
    Cluster::up(&NAMES, hosts, services)
}

/// `pstream-coord run` of `slow_double` over the job in `dir`.
fn coordinator(dir: &Path, extra: &[&str]) -> Command {
    harness::run_command(dir, "slow_double", extra)
}

/// Numbers 1..=n as input; the output of the same job on this machine alone.
fn job(dir: &Path, n: u64) -> Vec<u8> {
    write_numbers(dir, n);
    let local = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("in.txt"), local.path().join("in.txt")).unwrap();
    let (code, stderr) =
        Run::start(coordinator(local.path(), &["--workers", "2"])).finish(PATIENCE);
    assert_eq!(code, Some(0), "the one-machine run failed: {stderr}");
    let out = std::fs::read(local.path().join("out.txt")).unwrap();
    assert!(out.len() as u64 > n, "the one-machine run wrote too little");
    out
}

/// The `pstream.*` directories that `--transfer` makes in the hosts' temporary
/// directory (the simulated hosts share this machine's filesystem).
fn transferred() -> Vec<PathBuf> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pstream."))
        })
        .collect()
}

#[test]
fn ssh_to_three_hosts_is_exact_and_every_host_works() {
    let Some(cluster) = up(3, Services::Ssh) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    let before = transferred();
    let hosts: Vec<String> = (1..=3)
        .map(|i| format!("root@{}", cluster.host_ip(i)))
        .collect();
    // --transfer: the coordinator's own binary (the plugin here) is copied to
    // each host and run from there.
    let ssh = cluster.ssh_command();
    let run = Run::start(coordinator(
        dir.path(),
        &[
            "--ssh",
            &hosts.join(","),
            "--ssh-command",
            &ssh,
            "--workers-per-host",
            "2",
            "--transfer",
            // Every host's workers in before the job starts: a host slower to
            // come up (ssh, the copy) would otherwise find the job done.
            "--min-workers",
            "6",
        ],
    ));
    let (code, stderr) = run.finish(PATIENCE);
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(
        out == expected,
        "the output differs from the one-machine run's"
    );
    let stats = stats(dir.path());
    assert_every_host_worked(&cluster, &stats, 1..=3);
    assert_eq!(stats["items_failed"], 0, "{stats}");
    // Agents and workers are gone from every host, and so are the copies.
    for i in 1..=3 {
        cluster.wait_idle(i, Duration::from_secs(30));
    }
    assert_eq!(transferred(), before, "a copied program was left behind");
}

#[test]
fn the_token_is_on_no_command_line_and_in_no_environment() {
    let Some(cluster) = up(2, Services::Ssh) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), 150_000);
    // A token file, so that this test knows the token it looks for.
    let token_file = dir.path().join("job.token");
    let token = pstream::protocol::auth::create_token_file(&token_file)
        .unwrap()
        .to_hex();
    let hosts: Vec<String> = (1..=2)
        .map(|i| format!("root@{}", cluster.host_ip(i)))
        .collect();
    let ssh = cluster.ssh_command();
    let mut run = Run::start(coordinator(
        dir.path(),
        &[
            "--ssh",
            &hosts.join(","),
            "--ssh-command",
            &ssh,
            "--workers-per-host",
            "2",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    ));
    // While the job runs: every process's command line (what `ps` shows, on this
    // machine and the hosts, which share its process table) and environment.
    let mut looks = 0;
    let mut agents_seen = false;
    while run.child.running() {
        let ps = Command::new("ps")
            .args(["-eww", "-o", "pid=,args="])
            .output()
            .expect("ps");
        let ps = String::from_utf8_lossy(&ps.stdout);
        for line in ps.lines() {
            assert!(!line.contains(&token), "the token is in `ps`: {line}");
        }
        agents_seen |= ps.lines().any(|l| l.contains("--agent"));
        for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
            if let Ok(environ) = std::fs::read(entry.path().join("environ")) {
                assert!(
                    !String::from_utf8_lossy(&environ).contains(&token),
                    "the token is in the environment of process {}",
                    entry.file_name().to_string_lossy()
                );
            }
        }
        looks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stderr) = run.finish(PATIENCE);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(agents_seen, "no agent was seen running in {looks} looks");
}

#[test]
fn a_host_whose_ssh_fails_is_named_and_the_others_do_the_job() {
    let Some(cluster) = up(3, Services::Ssh) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    // Host 3 is down (its cable pulled); host 2 refuses the user.
    cluster.cut(3);
    let down = format!("root@{}", cluster.host_ip(3));
    let refused = format!("nobody@{}", cluster.host_ip(2));
    let hosts = [
        format!("root@{}", cluster.host_ip(1)),
        refused.clone(),
        down.clone(),
    ];
    let ssh = cluster.ssh_command();
    let (code, stderr) = Run::start(coordinator(
        dir.path(),
        &[
            "--ssh",
            &hosts.join(","),
            "--ssh-command",
            &ssh,
            "--workers-per-host",
            "2",
        ],
    ))
    .finish(PATIENCE);
    cluster.heal(3);
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    for (host, said) in [(&refused, "Permission denied"), (&down, "port 2251")] {
        let named = stderr
            .lines()
            .find(|l| l.starts_with(&format!("pstream: host {host}: ")))
            .unwrap_or_else(|| panic!("{host} is not named: {stderr}"));
        assert!(named.contains(said), "{named}");
        assert!(named.contains("(exit status 255)"), "{named}");
    }
    let stats = stats(dir.path());
    assert!(stats["hosts"][cluster.host_ip(1)]["items"].as_u64() == Some(60_000));

    // No host at all (no sshd on port 2): a clear error naming each, at once.
    let hosts = [1, 2].map(|i| format!("root@{}", cluster.host_ip(i)));
    let ssh = ssh.replace(&format!("-p {}", NAMES.sshd_port.unwrap()), "-p 2");
    let (code, stderr) = Run::start(coordinator(
        dir.path(),
        &["--ssh", &hosts.join(","), "--ssh-command", &ssh],
    ))
    .finish(PATIENCE);
    assert_eq!(code, Some(3), "{stderr}");
    let failed = stderr
        .lines()
        .find_map(|l| l.split("no host could start workers: ").nth(1))
        .unwrap_or_else(|| panic!("no clear error: {stderr}"));
    for host in hosts {
        assert!(
            failed.contains(&format!(
                "{host}: ssh exited before the job ended (exit status 255): ssh: connect to \
                 host {} port 2: Connection refused",
                &host[5..]
            )),
            "{failed}"
        );
    }
}

#[test]
fn the_slurm_launcher_outside_an_allocation_says_to_use_sbatch_or_salloc() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "1\n").unwrap();
    let mut cmd = coordinator(dir.path(), &["--launcher", "slurm"]);
    cmd.env_remove("SLURM_JOB_ID");
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SLURM_JOB_ID is not set")
            && stderr.contains("sbatch")
            && stderr.contains("salloc"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out.txt").exists(),
        "the output was touched"
    );
}

/// Files to hash, and their list (`files.txt`) in `dir`; the sums a one-machine
/// run writes.
fn hash_job(dir: &Path, n: usize) -> Vec<u8> {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let mut list = String::new();
    for i in 0..n {
        let file = data.join(format!("f{i}"));
        std::fs::write(&file, format!("file {i}\n").repeat(1500 + i % 50)).unwrap();
        list.push_str(&format!("{}\n", file.display()));
    }
    std::fs::write(dir.join("files.txt"), list).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--function", "sha256sum", "--workers", "2"])
        .arg("--input")
        .arg(dir.join("files.txt"))
        .arg("--output")
        .arg(dir.join("local.txt"));
    let (code, stderr) = Run::start(cmd).finish(PATIENCE);
    assert_eq!(code, Some(0), "the one-machine run failed: {stderr}");
    let sums = std::fs::read(dir.join("local.txt")).unwrap();
    std::fs::remove_file(dir.join("local.txt")).unwrap();
    assert_eq!(sums.iter().filter(|&&b| b == b'\n').count(), n);
    sums
}

#[test]
fn the_slurm_launcher_under_salloc_is_exact_with_workers_on_every_node() {
    let Some(cluster) = up(3, Services::Slurm) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    let mut salloc = cluster.slurm("salloc");
    salloc
        .args(["-N3", "--ntasks-per-node=2", "--time=5"])
        .arg(bin())
        .args(
            // Every node's workers in before the job starts (see the ssh test).
            coordinator(dir.path(), &["--launcher", "slurm", "--min-workers", "6"]).get_args(),
        );
    let (code, stderr) = Run::start(salloc).finish(PATIENCE);
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(
        out == expected,
        "the output differs from the one-machine run's"
    );
    let stats = stats(dir.path());
    assert_workers_on_every_host(&cluster, &stats, 1..=3, 2);
    assert_every_host_worked(&cluster, &stats, 1..=3);
    for i in 1..=3 {
        cluster.wait_idle(i, Duration::from_secs(30));
    }
}

/// The `sbatch` script of docs/cluster.md, as it is there.
fn documented_sbatch_script() -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cluster.md"),
    )
    .unwrap();
    doc.split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("#SBATCH") && block.contains("--launcher slurm"))
        .expect("docs/cluster.md has an sbatch script with --launcher slurm")
        .to_string()
}

#[test]
fn the_documented_sbatch_script_runs_exactly() {
    let Some(cluster) = up(3, Services::Slurm) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = hash_job(dir.path(), 3_000);
    // What the script names: the plugin in the job's directory (pstream-coord
    // serves sha256sum), pstream-coord on the PATH.
    std::os::unix::fs::symlink(bin(), dir.path().join("my-plugin")).unwrap();
    std::fs::write(dir.path().join("job.sh"), documented_sbatch_script()).unwrap();
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cluster
        .slurm("sbatch")
        .args(["--parsable", "--time=5", "-D"])
        .arg(dir.path())
        .arg(dir.path().join("job.sh"))
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Its end, from scontrol (a completed job stays visible for a minute).
    let record = poll(PATIENCE, Duration::from_millis(200), || {
        let out = cluster
            .slurm("scontrol")
            .args(["show", "job", "-o", &id])
            .output()
            .unwrap();
        let record = String::from_utf8_lossy(&out.stdout).to_string();
        let ended = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"]
            .iter()
            .any(|s| record.contains(&format!("JobState={s} ")));
        match ended {
            true => Ok(record),
            false => Err(format!("job {id} did not end: {record}")),
        }
    });
    let log =
        std::fs::read_to_string(dir.path().join(format!("pstream-{id}.log"))).unwrap_or_default();
    assert!(
        record.contains("JobState=COMPLETED ") && record.contains("ExitCode=0:0"),
        "{record}\n{log}"
    );
    let sums = std::fs::read(dir.path().join("sums.txt")).unwrap();
    assert!(
        sums == expected,
        "the sums differ from the one-machine run's\n{log}"
    );
    // Workers on every node (2 CPUs each: --ntasks-per-node=2; the 40 MB to hash
    // take the job long enough for all to join). Whether each got items is up
    // to the race: 3,000 items fit in the one batch of the first to join.
    let stats = read_json(&dir.path().join(format!("stats-{id}.json")));
    assert_workers_on_every_host(&cluster, &stats, 1..=3, 2);
}

#[test]
fn launcher_options_that_cannot_work_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "1\n").unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--launcher", "none"], "--launcher none starts no worker"),
        (
            &["--launcher", "none", "--workers", "2"],
            "--workers 2 asks for 2 here: drop one of them",
        ),
        (&["--launcher", "ssh"], "--launcher ssh needs hosts"),
        (&["--ssh", "a", "--launcher", "local"], "drop one of them"),
        (
            &["--ssh", "a", "--ssh-command", "ssh 'open"],
            "a single quote is not closed",
        ),
        (&["--ssh", "a:0"], "0 workers"),
        (
            &["--transfer"],
            "--transfer is for workers started over ssh",
        ),
    ];
    for (args, said) in cases {
        let out = coordinator(dir.path(), args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("out.txt").exists(),
            "{args:?} touched the output"
        );
    }
}
