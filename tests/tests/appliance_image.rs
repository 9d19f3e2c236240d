//! The broker appliance image end to end: `clk image build` makes it (twice, byte-identical),
//! `clk image proxmox` makes a valid template kit, and QEMU (OVMF, TCG here) boots it:
//! cloud-init sets the address and host name, kcat produces and consumes through a forwarded
//! port, the ACPI power button shuts it down cleanly, and the data is there after the next
//! boot. A bad per-VM configuration gives one clear console line and a power-off; a failing
//! upgrade is tried, then rolled back. The S3 gateway's image boots with its access keys
//! from cloud-init and serves boto3; the witness's image boots and serves its admin port; the
//! edge gateway's image boots, buffers kcat's events and forwards them to a hub on the host.
//!
//! These tests share the package cache and are heavy under TCG: nextest runs them one at a
//! time, and never beside a hub test (test group `heavy` in .config/nextest.toml).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clk_qemu::{Vm, VmOptions, cloud_init_iso, free_port};
use e2e::broker::bin;
use e2e::clients::{kcat, python, run};
use e2e::s3gw::{ACCESS_KEY, SECRET_KEY};

const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
/// Boot to ready under TCG is ~15-30 s here; leave room for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build_image(out: &Path, extra: &[&str]) -> serde_json::Value {
    build_appliance_image("broker", out, extra)
}

fn build_appliance_image(appliance: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(bin("clk"));
    cmd.current_dir(repo())
        .args(["image", "build", appliance, "--json"])
        .args(extra)
        .arg("--config")
        .arg(format!("image/configs/{appliance}.toml"))
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(repo().join("target/clk-cache"));
    let o = run(cmd, None, BUILD_TIMEOUT);
    assert!(
        o.status.success(),
        "clk image build failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().expect("a JSON report")).expect("JSON report")
}

#[test]
fn image_builds_are_reproducible_and_the_proxmox_kit_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let a = build_image(&dir.path().join("a"), &[]);
    let b = build_image(&dir.path().join("b"), &[]);
    assert_eq!(
        a["raw_sha256"], b["raw_sha256"],
        "two builds of the same inputs differ"
    );
    assert_eq!(a["qcow2_sha256"], b["qcow2_sha256"]);
    eprintln!(
        "image sizes: uki {} bytes, initramfs {} bytes, qcow2 {} bytes",
        a["uki_bytes"], a["initramfs_bytes"], a["qcow2_bytes"]
    );

    let kit = dir.path().join("proxmox");
    let mut cmd = Command::new(bin("clk"));
    cmd.args(["image", "proxmox", "--vmid", "9100", "--image"])
        .arg(a["qcow2"].as_str().unwrap())
        .arg("--out")
        .arg(&kit);
    let o = run(cmd, None, Duration::from_secs(60));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script_path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let script = std::fs::read_to_string(&script_path).unwrap();
    let syntax = run(
        {
            let mut c = Command::new("bash");
            c.arg("-n").arg(&script_path);
            c
        },
        None,
        Duration::from_secs(10),
    );
    assert!(syntax.status.success(), "qm script is not valid bash");
    for required in [
        "--machine q35",
        "--bios ovmf",
        "efitype=4m,pre-enrolled-keys=0",
        "--scsihw virtio-scsi-single",
        "import-from=$IMAGE",
        "--scsi1 \"$STORAGE:cloudinit\"",
        "--serial0 socket",
        "--vga serial0",
        "--watchdog model=i6300esb",
        "--boot order=scsi0",
        "qm template \"$VMID\"",
    ] {
        assert!(
            script.contains(required),
            "qm script lacks {required}:\n{script}"
        );
    }
    assert!(kit.join("broker-qemu.qcow2").exists());
}

/// Build one image for the boot tests (profile qemu unless `extra` names another).
fn boot_image(dir: &Path, extra: &[&str]) -> PathBuf {
    let report = build_image(&dir.join("images"), extra);
    let disk = dir.join("vm.qcow2");
    std::fs::copy(report["qcow2"].as_str().unwrap(), &disk).unwrap();
    disk
}

#[test]
fn broker_image_boots_with_cloud_init_serves_kcat_and_keeps_data_across_reboot() {
    let dir = tempfile::tempdir().unwrap();
    // Installed with a boot counter, as an upgrade would be: the first healthy boot blesses it.
    let disk = boot_image(dir.path(), &["--boot-tries", "3"]);
    let kafka = free_port().unwrap();
    let admin = free_port().unwrap();
    let mac = "52:54:00:c1:0c:01";
    let iso = dir.path().join("cidata.iso");
    cloud_init_iso(
        &iso,
        "instance-id: e2e-1\n",
        &format!(
            "#cloud-config\nhostname: broker-a1\nfqdn: broker-a1.hub.example\nclk_config: |\n  [kafka]\n  advertised = \"127.0.0.1:{kafka}\"\n"
        ),
        Some(&format!(
            "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: '{mac}'\n    subnets:\n      - type: static\n        address: '10.0.2.15'\n        netmask: '255.255.255.0'\n        gateway: '10.0.2.2'\n  - type: nameserver\n    address: ['10.0.2.3']\n"
        )),
    )
    .unwrap();
    let mut opts = VmOptions::new(&disk);
    opts.forwards = vec![(kafka, 9092), (admin, 9644)];
    opts.cidata = Some(iso);
    opts.mac = mac.into();

    // First boot: blank data area formatted, cloud-init applied.
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_for_http(admin, "/ready", BOOT_TIMEOUT).unwrap();
    eprintln!("first boot (formats the data area) to ready: {ready:?} under TCG");
    // Blessing follows readiness.
    vm.wait_for_console("boot assessed good", Duration::from_secs(60))
        .unwrap();
    let console = vm.console();
    assert!(
        console.contains(r#""hostname":"broker-a1""#),
        "host name not from cloud-init:\n{console}"
    );
    assert!(
        console.contains(r#""source":"cloud-init""#) && console.contains("10.0.2.15/24"),
        "address not from cloud-init:\n{console}"
    );
    assert!(
        console.contains(r#""formatted":true"#),
        "data area not formatted on first boot"
    );
    assert!(
        console.contains(r#"Blessed { from: \"broker-0.1.0+2-1.efi\", to: \"broker-0.1.0.efi\" }"#),
        "the counted boot was not blessed:\n{console}"
    );

    let bootstrap = format!("127.0.0.1:{kafka}");
    let records: String = (0..200).map(|i| format!("scada-event-{i}\n")).collect();
    kcat(
        &["-b", &bootstrap, "-t", "events", "-P", "-X", "acks=all"],
        Some(records.as_bytes()),
        Duration::from_secs(60),
    );
    let consumed = kcat(
        &["-b", &bootstrap, "-t", "events", "-C", "-e", "-q"],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(consumed.lines().count(), 200);

    // Proxmox "Shutdown": ACPI power button -> clean stop -> power off.
    vm.press_power_button().unwrap();
    vm.wait_for_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    assert!(
        console.contains("stop requested"),
        "power button not seen:\n{console}"
    );
    assert!(console.contains("system going down"));
    drop(vm);
    // The operator grows the disk (`qm resize ... +1G`); the next boot grows the data area.
    let resize = run(
        {
            let mut c = Command::new("qemu-img");
            c.args(["resize", "-q"]).arg(&disk).arg("+1G");
            c
        },
        None,
        Duration::from_secs(30),
    );
    assert!(
        resize.status.success(),
        "{}",
        String::from_utf8_lossy(&resize.stderr)
    );

    // Second boot from the same disk: the data area is kept, the records are there.
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_for_http(admin, "/ready", BOOT_TIMEOUT).unwrap();
    eprintln!("second boot to ready: {ready:?} under TCG");
    vm.wait_for_console("boot assessed good", Duration::from_secs(60))
        .unwrap();
    let console = vm.console();
    assert!(
        console.contains(r#""formatted":false"#),
        "data area re-formatted:\n{console}"
    );
    assert!(
        console.contains(r#""partition_grown_to":"Some("#)
            && console.contains(r#""fs_grown_to_blocks":"Some("#),
        "the data area did not grow with the disk:\n{console}"
    );
    assert!(
        console.contains(r#""blessing":"NotCounted""#),
        "the blessed image was counted again:\n{console}"
    );
    assert!(
        console.contains(r#""clean_shutdown":true"#),
        "previous stop was not clean:\n{console}"
    );
    let consumed = kcat(
        &["-b", &bootstrap, "-t", "events", "-C", "-e", "-q"],
        None,
        Duration::from_secs(60),
    );
    // Three partitions: order holds within each, so compare the sets.
    let mut got: Vec<String> = consumed.lines().map(String::from).collect();
    let mut expected: Vec<String> = (0..200).map(|i| format!("scada-event-{i}")).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn bad_cloud_init_config_gives_one_clear_line_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_image(dir.path(), &[]);
    let iso = dir.path().join("cidata.iso");
    // No network-config: the address comes from DHCP (QEMU's user network serves it).
    cloud_init_iso(
        &iso,
        "instance-id: e2e-2\n",
        "#cloud-config\nclk_config: |\n  [kafka]\n  listen = \"not-an-address\"\n",
        None,
    )
    .unwrap();
    let mut opts = VmOptions::new(&disk);
    opts.cidata = Some(iso);
    // No host name from cloud-init: the SMBIOS serial names the node (`qm set --smbios1`).
    opts.serial_number = Some("broker-b7".into());
    let mut vm = Vm::boot(&opts).unwrap();
    vm.wait_for_exit(BOOT_TIMEOUT).unwrap();
    let console = vm.console();
    assert!(
        console.contains(r#""hostname":"broker-b7""#),
        "SMBIOS serial not used:\n{console}"
    );
    assert!(
        console.contains("DHCP lease applied"),
        "no DHCP lease:\n{console}"
    );
    let fatal: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("clk-init: FATAL:"))
        .collect();
    assert_eq!(fatal.len(), 1, "expected one FATAL line:\n{console}");
    assert!(
        fatal[0].contains("[kafka] listen = \"not-an-address\"") && fatal[0].contains("cloud-init"),
        "the line does not say what is wrong: {}",
        fatal[0]
    );
    assert!(
        !console.contains("Kernel panic"),
        "PID 1 exited:\n{console}"
    );
}

#[test]
fn a_failing_upgrade_is_tried_then_rolled_back_to_the_previous_image() {
    let dir = tempfile::tempdir().unwrap();
    let good = build_image(&dir.path().join("good"), &[]);
    let disk = dir.path().join("vm.raw");
    std::fs::copy(good["raw"].as_str().unwrap(), &disk).unwrap();
    // Version 0.2.0 whose kernel module parameters the kernel refuses: PID 1 cannot start it.
    let bad = build_image(
        &dir.path().join("bad"),
        &[
            "--version",
            "0.2.0",
            "--profile",
            "tests/fixtures/profiles/qemu-bad-module.toml",
        ],
    );
    let mut cmd = Command::new(bin("clk"));
    cmd.args([
        "image",
        "install",
        "--name",
        "broker-0.2.0",
        "--tries",
        "2",
        "--disk",
    ])
    .arg(&disk)
    .arg("--uki")
    .arg(bad["uki"].as_str().unwrap());
    let o = run(cmd, None, Duration::from_secs(60));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let admin = free_port().unwrap();
    let mut opts = VmOptions::new(&disk);
    opts.forwards = vec![(admin, 9644)];
    opts.allow_reboot = true;
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_for_http(admin, "/ready", BOOT_TIMEOUT * 2).unwrap();
    eprintln!("two failed tries and the rollback boot took {ready:?} under TCG");
    let console = vm.console();
    let fatal: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("clk-init: FATAL:"))
        .collect();
    assert_eq!(fatal.len(), 2, "expected one failure per try:\n{console}");
    assert!(
        fatal.iter().all(|l| l.contains("kernel module scsi_debug")),
        "the line does not name the module: {fatal:?}"
    );
    assert!(console.contains("rebooting: this image is on trial"));
    let last_start = console.rfind("clk-init starting").unwrap();
    assert!(
        console[last_start..].contains(r#""version":"0.1.0""#),
        "did not fall back to 0.1.0:\n{}",
        &console[last_start..]
    );
}

#[test]
fn xeon_profile_builds_with_its_drivers_and_names_missing_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let report = build_image(dir.path(), &["--profile", "xeon-nvme-25g"]);
    let modules: Vec<&str> = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for driver in ["nvme", "ice", "usb_storage", "iTCO_wdt"] {
        assert!(
            modules.contains(&driver),
            "{driver} missing from {modules:?}"
        );
    }
    // nvme_core (a dependency) loads before nvme.
    let pos = |m: &str| modules.iter().position(|x| *x == m).unwrap();
    assert!(pos("nvme_core") < pos("nvme"));
    // The E810 DDP package lives in Debian's non-free-firmware component: either this
    // machine's apt sources carry it, or the report says clearly that the image lacks it.
    let missing = report["missing_firmware"].as_array().unwrap();
    if let Some(m) = missing
        .iter()
        .find(|m| m.as_str().unwrap().contains("ice.pkg"))
    {
        assert!(
            m.as_str().unwrap().contains("non-free-firmware"),
            "unclear: {m}"
        );
    }
}

#[test]
fn s3gw_image_boots_with_keys_from_cloud_init_and_serves_boto3() {
    let dir = tempfile::tempdir().unwrap();
    let report = build_appliance_image("s3gw", &dir.path().join("images"), &[]);
    let disk = dir.path().join("vm.qcow2");
    std::fs::copy(report["qcow2"].as_str().unwrap(), &disk).unwrap();
    let s3 = free_port().unwrap();
    let admin = free_port().unwrap();
    let iso = dir.path().join("cidata.iso");
    cloud_init_iso(
        &iso,
        "instance-id: e2e-s3\n",
        &format!(
            "#cloud-config\nhostname: s3gw-a1\nclk_config: |\n  [[credentials]]\n  access_key = \"{ACCESS_KEY}\"\n  secret_key = \"{SECRET_KEY}\"\n"
        ),
        None,
    )
    .unwrap();
    let mut opts = VmOptions::new(&disk);
    opts.forwards = vec![(s3, 9000), (admin, 9645)];
    opts.cidata = Some(iso);
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_for_http(admin, "/ready", BOOT_TIMEOUT).unwrap();
    eprintln!("s3gw image first boot to ready: {ready:?} under TCG");
    let out = python(
        "s3_boto3.py",
        &[&format!("http://127.0.0.1:{s3}"), ACCESS_KEY, SECRET_KEY],
        Duration::from_secs(300),
    );
    assert_eq!(out["roundtrip"], true, "{out}");
    assert_eq!(out["range"], true);
    assert_eq!(out["wrong_secret"], "SignatureDoesNotMatch");
    vm.press_power_button().unwrap();
    vm.wait_for_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    assert!(console.contains(r#""hostname":"s3gw-a1""#), "{console}");
    assert!(console.contains("system going down"), "{console}");
}

/// The witness's own image: it boots with its host name from cloud-init, serves health,
/// quorum metrics and the cluster status on its admin port (its voters are elsewhere: it
/// waits for them as a real witness would), and stops cleanly on the power button. Its size
/// beside the broker's is printed for docs/benchmarks.md.
#[test]
fn witness_image_boots_serves_its_admin_port_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let report = build_appliance_image("witness", &dir.path().join("images"), &[]);
    let qcow2 = report["qcow2"].as_str().unwrap();
    eprintln!(
        "witness image: {} bytes (qcow2)",
        std::fs::metadata(qcow2).unwrap().len()
    );
    let disk = dir.path().join("vm.qcow2");
    std::fs::copy(qcow2, &disk).unwrap();
    let admin = free_port().unwrap();
    let iso = dir.path().join("cidata.iso");
    cloud_init_iso(
        &iso,
        "instance-id: e2e-w\n",
        "#cloud-config\nhostname: witness-c1\n",
        None,
    )
    .unwrap();
    let mut opts = VmOptions::new(&disk);
    opts.forwards = vec![(admin, 9646)];
    opts.cidata = Some(iso);
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_for_http(admin, "/ready", BOOT_TIMEOUT).unwrap();
    eprintln!("witness image first boot to ready: {ready:?} under TCG");
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let metrics = e2e::clients::metrics_text(&url);
    assert!(metrics.contains("quorum_voters"), "{metrics}");
    eprintln!(
        "witness resident memory: {:?} bytes",
        e2e::clients::metric(&url, "process_resident_memory_bytes")
    );
    let status = e2e::clients::metrics_text(&format!("http://127.0.0.1:{admin}/v1/cluster"));
    assert!(
        status.contains("\"answered_by\": 100") && status.contains("clickceler-hub"),
        "{status}"
    );
    vm.press_power_button().unwrap();
    vm.wait_for_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    assert!(console.contains(r#""hostname":"witness-c1""#), "{console}");
    assert!(console.contains("system going down"), "{console}");
}

/// The edge gateway's image, as a branch receives it: it boots with its gateway name and the
/// hub's address from cloud-init, takes events from kcat on its Kafka port (fsynced in its
/// buffer) and forwards them to a hub broker on the host, then stops cleanly.
#[test]
fn edge_image_boots_buffers_events_and_forwards_them_to_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    // The hub: a broker on the host with a listener for branches, advertised at the address
    // the VM reaches the host by (QEMU's user network).
    let branches = free_port().unwrap();
    let hub = e2e::Broker::start_with(&format!(
        "[[kafka.listeners]]\nname = \"branches\"\nlisten = \"127.0.0.1:{branches}\"\nadvertised = \"10.0.2.2:{branches}\"\n"
    ));
    let report = build_appliance_image("edge", &dir.path().join("images"), &[]);
    let disk = dir.path().join("vm.qcow2");
    std::fs::copy(report["qcow2"].as_str().unwrap(), &disk).unwrap();
    let kafka = free_port().unwrap();
    let admin = free_port().unwrap();
    let iso = dir.path().join("cidata.iso");
    cloud_init_iso(
        &iso,
        "instance-id: e2e-e\n",
        &format!(
            "#cloud-config\nhostname: edge-017\nclk_config: |\n  gateway = \"branch-017\"\n  [hub]\n  bootstrap = [\"10.0.2.2:{branches}\"]\n  security = \"PLAINTEXT\"\n  [buffer.kafka]\n  advertised = \"127.0.0.1:{kafka}\"\n  [forward]\n  linger = \"50ms\"\n"
        ),
        None,
    )
    .unwrap();
    let mut opts = VmOptions::new(&disk);
    opts.forwards = vec![(kafka, 9092), (admin, 9644)];
    opts.cidata = Some(iso);
    let mut vm = Vm::boot(&opts).unwrap();
    let ready = vm.wait_for_http(admin, "/ready", BOOT_TIMEOUT).unwrap();
    eprintln!("edge image first boot to ready: {ready:?} under TCG");

    let records: String = (0..200)
        .map(|i| format!("{}:reading-{i}\n", i % 8))
        .collect();
    kcat(
        &[
            "-b",
            &format!("127.0.0.1:{kafka}"),
            "-t",
            "readings",
            "-P",
            "-K:",
            "-X",
            "acks=all",
        ],
        Some(records.as_bytes()),
        Duration::from_secs(60),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let at_hub = loop {
        // kcat fails until the gateway's first batch makes the hub create the topic.
        let lines = std::panic::catch_unwind(|| {
            e2e::clients::kcat_consume_all(
                &hub.bootstrap(),
                "readings",
                "%s\n",
                Duration::from_secs(60),
            )
        });
        if let Some(lines) = lines.ok().filter(|l| l.len() >= 200) {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the events did not reach the hub; the VM's console:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut values = at_hub.clone();
    values.sort();
    values.dedup();
    assert_eq!(
        (at_hub.len(), values.len()),
        (200, 200),
        "each event once at the hub"
    );
    let url = format!("http://127.0.0.1:{admin}/metrics");
    assert_eq!(
        e2e::clients::metric(&url, "edge_forwarded_records_total{topic=\"readings\"}"),
        Some(200.0)
    );
    eprintln!(
        "edge image: {} bytes (qcow2), resident memory {:?} bytes",
        std::fs::metadata(report["qcow2"].as_str().unwrap())
            .unwrap()
            .len(),
        e2e::clients::metric(&url, "process_resident_memory_bytes")
    );
    vm.press_power_button().unwrap();
    vm.wait_for_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    assert!(console.contains(r#""hostname":"edge-017""#), "{console}");
    assert!(console.contains("system going down"), "{console}");
}

/// The README's VM example, run as written: its commands are read from README.md, only the
/// path of `clk` is adapted to the build under test (and the package cache shared with the
/// other image tests through `CLK_CACHE`). A client on the host produces and consumes through
/// the forwarded port; Ctrl-C then stops the VM cleanly.
#[test]
fn readme_vm_example_works_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let commands = readme_commands(&readme, "./target/release/clk image build broker");
    assert_eq!(
        commands.len(),
        4,
        "expected build, boot and two kcat commands in the README's VM example: {commands:#?}"
    );
    let clk = bin("clk");
    let adapt = |c: &str| c.replace("./target/release/clk", &clk.display().to_string());
    // The example's relative paths (image/configs, build/images) resolve in a scratch
    // directory that shows the repository's image/ folder.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("image"), dir.path().join("image")).unwrap();
    let shell = |command: &str| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(command)
            .current_dir(dir.path())
            .env("CLK_CACHE", repo().join("target/clk-cache"));
        c
    };

    let built = run(shell(&adapt(&commands[0])), None, BUILD_TIMEOUT);
    assert!(
        built.status.success(),
        "{}: {}",
        commands[0],
        String::from_utf8_lossy(&built.stderr)
    );
    let mut boot = shell(&format!("exec {}", adapt(&commands[1])));
    let mut vm = boot
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let progress = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let progress = std::sync::Arc::clone(&progress);
        let stderr = vm.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("clk vm boot: {line}");
                progress.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    e2e::wait_until("the README's VM to be ready", BOOT_TIMEOUT, || {
        assert!(
            vm.try_wait().unwrap().is_none(),
            "clk vm boot exited:\n{}",
            progress.lock().unwrap()
        );
        progress
            .lock()
            .unwrap()
            .contains("appliance ready")
            .then_some(())
    });
    let produced = run(shell(&commands[2]), None, Duration::from_secs(60));
    assert!(produced.status.success(), "{}", commands[2]);
    let consumed = run(shell(&commands[3]), None, Duration::from_secs(60));
    let out = String::from_utf8_lossy(&consumed.stdout);
    assert!(
        consumed.status.success() && out.contains("hello from the host"),
        "{} printed {out:?}: {}",
        commands[3],
        String::from_utf8_lossy(&consumed.stderr)
    );

    // Ctrl-C: the power button, a clean stop, the VM powers off and clk exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = e2e::wait_until(
        "clk vm boot to exit after Ctrl-C",
        Duration::from_secs(180),
        || vm.try_wait().unwrap(),
    );
    reader.join().unwrap();
    let progress = progress.lock().unwrap().clone();
    assert!(status.success(), "clk vm boot: {status}\n{progress}");
    assert!(progress.contains("power button pressed"), "{progress}");
    let console = std::fs::read_to_string(
        dir.path()
            .join("build/images/broker-qemu.qcow2.console.log"),
    )
    .unwrap();
    assert!(console.contains("clean shutdown"), "{console}");
}

/// The shell commands of the README code block that holds `first`: from that line to the end
/// of the block, comments dropped, `\` continuations joined.
fn readme_commands(readme: &str, first: &str) -> Vec<String> {
    let start = readme.find(first).expect("the README's VM example");
    let block = &readme[start
        ..readme[start..]
            .find("```")
            .map_or(readme.len(), |e| start + e)];
    let mut commands = vec![];
    let mut pending = String::new();
    for line in block.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}
