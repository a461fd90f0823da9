"""Issue 15, running chatd as an operator would: --help and --version, the
version in the log and /metrics, -T, -t on conflicts and ignored settings,
paths relative to the config file, Redis passwords, sd_notify readiness,
make install with the systemd unit, make cluster's checks, and the split
of install-deps.sh. Each test is bounded in time; only loopback."""

import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conftest import (CHATD_BIN, HOST, REPO, RedisServer, free_port, http_exchange,
                      metrics, port_open, run_chatd_cmd, wait_until, write_config)


def git_describe():
    r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                       text=True, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def binary_version():
    r = run_chatd_cmd(["--version"])
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"chatd (\S+)\n", r.stdout)
    assert m, r.stdout
    return m.group(1)


def make_cert(folder):
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return cert, key


def tls_handshake_ok(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((HOST, port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.version() is not None


# --------------------------------------------------------------------------
# options and the version


def test_help_lists_every_option():
    for flag in ("--help", "-h"):
        r = run_chatd_cmd([flag])
        assert r.returncode == 0, r.stderr
        for opt in ("-c FILE", "-t", "-T", "-h, --help", "-v, --version"):
            assert opt in r.stdout, (flag, opt, r.stdout)
        assert r.stderr == ""
    r = run_chatd_cmd(["--no-such-option"])
    assert r.returncode == 1
    assert "usage: chatd" in r.stderr and r.stdout == ""


def test_version_is_git_describe_or_the_version_file(tmp_path):
    v = binary_version()
    assert run_chatd_cmd(["-v"]).stdout == f"chatd {v}\n"
    number = open(os.path.join(REPO, "VERSION")).read().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", number)
    # The Makefile's answer here (the binary may predate the last commit).
    made = subprocess.run(["make", "-s", "--no-print-directory", "version"], cwd=REPO,
                          capture_output=True, text=True, timeout=30).stdout.strip()
    d = git_describe()
    if d:
        assert made.endswith(d), (made, d)
        assert made == d or made == f"{number}-{d}", made
    assert v == made or v.startswith(number) or re.match(r"v?\d", v), (v, made)
    # Without git (a tarball), the VERSION file alone.
    shutil.copy(os.path.join(REPO, "Makefile"), tmp_path / "Makefile")
    (tmp_path / "VERSION").write_text("9.8.7\n")
    r = subprocess.run(["make", "-s", "--no-print-directory", "version"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path.parent)))
    assert r.stdout.strip() == "9.8.7", r


def test_version_in_start_line_and_metrics(chatd):
    v = binary_version()
    c = chatd()
    assert re.search(r"chatd listening at ws://\S+ \(.*version " + re.escape(v) + r"\)", c.log())
    m = metrics(c.port)
    assert m[f'chatd_build_info{{version="{v}"}}'] == 1
    assert "chatd_stream_read_lag" in m  # the last metric still fits


# --------------------------------------------------------------------------
# -T and -t


def test_T_prints_effective_config_with_secrets_masked(tmp_path):
    (tmp_path / "pw").write_text("filepass\n")
    conf = write_config(tmp_path / "c.conf", {
        "listen": "127.0.0.1:5000", "auth_secret": '"t0p s3cret"', "broker": "redis",
        "redis_url": "redis://bob:h%40nter2@127.0.0.1:6390/1", "workers": 3,
    })
    port = free_port()
    r = run_chatd_cmd(["-T", "-c", str(conf)], env={"PORT": str(port)})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("# chatd ")
    assert f"\nlisten = 127.0.0.1:{port}\n" in out  # after the environment
    assert "\nworkers = 3\n" in out and "\nbroker = redis\n" in out
    assert "\nauth_secret = ********\n" in out
    assert "\nredis_url = redis://bob:********@127.0.0.1:6390/1\n" in out
    for secret in ("t0p", "s3cret", "h%40nter2", "hunter2"):
        assert secret not in out + r.stderr
    # It is a config file: -t accepts it as it stands.
    (tmp_path / "dump.conf").write_text(out)
    r2 = run_chatd_cmd(["-t", "-c", str(tmp_path / "dump.conf")])
    assert r2.returncode == 0, r2.stderr
    # REDIS_URL in the environment shows (masked) too.
    r3 = run_chatd_cmd(["-T", "-c", str(conf)], env={"REDIS_URL": "redis://:zz9@10.0.0.1"})
    assert "\nredis_url = redis://:********@10.0.0.1\n" in r3.stdout and "zz9" not in r3.stdout


def check(tmp_path, directives, env=None, name="t.conf"):
    conf = write_config(tmp_path / name, directives)
    return run_chatd_cmd(["-t", "-c", str(conf)], env=env)


def test_t_warns_of_ignored_settings(tmp_path):
    cert, key = make_cert(tmp_path)
    r = check(tmp_path, {"tls_cert": cert, "tls_key": key})
    assert r.returncode == 0, r.stderr
    assert f"chatd: warning: {tmp_path}/t.conf:2: tls_cert is ignored: tls_listen is empty" in r.stderr
    assert f"{tmp_path}/t.conf:3: tls_key is ignored" in r.stderr
    assert "valid (with warnings)" in r.stdout

    r = check(tmp_path, {"redis_url": "redis://10.0.0.5:6379"})
    assert r.returncode == 0
    assert "t.conf:2: redis_url is ignored: broker = local" in r.stderr
    # REDIS_URL in the environment selects the Redis broker: nothing is ignored.
    r = check(tmp_path, {"redis_url": "redis://10.0.0.5:6379"},
              env={"REDIS_URL": "redis://127.0.0.1:1"})
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = check(tmp_path, {"rate_burst": 40})
    assert "rate_burst is ignored: rate_limit = 0" in r.stderr
    # The shipped file warns of nothing.
    r = run_chatd_cmd(["-t", "-c", os.path.join(REPO, "conf", "chatd.conf")])
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_t_refuses_conflicts(tmp_path):
    cert, key = make_cert(tmp_path)
    r = check(tmp_path, {"listen": "0.0.0.0:5000", "tls_listen": "127.0.0.1:5000",
                         "tls_cert": cert, "tls_key": key})
    assert r.returncode == 1
    assert "listen and tls_listen are both on port 5000" in r.stderr
    # PORT in the environment makes them meet: caught too.
    r = check(tmp_path, {"listen": "127.0.0.1:5000", "tls_listen": "127.0.0.1:5443",
                         "tls_cert": cert, "tls_key": key}, env={"PORT": "5443"})
    assert r.returncode == 1 and "both on port 5443" in r.stderr
    r = check(tmp_path, {"redis_url": "redis://:a@127.0.0.1", "redis_password": "b"})
    assert r.returncode == 1 and "give the password once" in r.stderr
    r = check(tmp_path, {"redis_password": "a", "redis_password_file": "pw"})
    assert r.returncode == 1 and "both set" in r.stderr


def test_t_accepts_nginx_tls_spelling(tmp_path):
    cert, key = make_cert(tmp_path)
    base = {"tls_listen": f"{HOST}:{free_port()}", "tls_cert": cert, "tls_key": key}
    for v in ("TLSv1.3", "TLSv1.2", "1.3"):
        r = check(tmp_path, dict(base, tls_min_version=v))
        assert r.returncode == 0, (v, r.stderr)
    r = check(tmp_path, dict(base, tls_min_version="TLSv1.1"))
    assert r.returncode == 1 and "TLS 1.0 and 1.1 are never offered" in r.stderr
    r = check(tmp_path, dict(base, tls_min_version="1.4"))
    assert r.returncode == 1 and "not a TLS version" in r.stderr


def test_malformed_redis_url_never_echoed(tmp_path):
    for url in ("redis://:hunter2@127.0.0.1:99999", "redis://:hunter2", "redis://:hun%zzter2@h",
                "http://:hunter2@h"):
        r = check(tmp_path, {"broker": "redis", "redis_url": url})
        assert r.returncode == 1, url
        assert "redis_url" in r.stderr and "hunter2" not in r.stderr + r.stdout, r.stderr
        r = run_chatd_cmd(["-t"], env={"REDIS_URL": url})
        assert r.returncode == 1 and "hunter2" not in r.stderr + r.stdout, r.stderr


# --------------------------------------------------------------------------
# paths relative to the config file, Redis passwords in every form


@pytest.mark.redis
def test_redis_passwords_work_and_never_show(chatd, tmp_path):
    password = "p@ss:w/rd%x"
    enc = "p%40ss%3Aw%2Frd%25x"
    r = RedisServer(tmp_path).start()
    try:
        assert r.cli("CONFIG", "SET", "requirepass", password) == "OK"
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "redis.pw").write_text(password + "\n")
        variants = [
            {"redis_url": f"redis://:{enc}@{HOST}:{r.port}"},
            {"redis_url": f"redis://{HOST}:{r.port}", "redis_password": f'"{password}"'},
            {"redis_url": f"redis://{HOST}:{r.port}", "redis_password_file": "redis.pw"},
        ]
        for i, v in enumerate(variants):
            c = chatd(name=f"n{i}", start=False, broker="redis", **v)
            c.conf_path = etc / f"n{i}.conf"  # the password file is beside it, not in cwd
            c.start()
            wait_until(lambda: http_exchange(c.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                       .status == 200, 10, what=f"/readyz 200 with {v}")
            c.stop()
            log = c.log()
            assert password not in log and enc not in log and "p@ss" not in log, log
            t = run_chatd_cmd(["-T", "-c", str(c.conf_path)])
            assert t.returncode == 0, t.stderr
            assert password not in t.stdout and enc not in t.stdout
            if "redis_password_file" in v:
                assert f"\nredis_password_file = {etc}/redis.pw\n" in t.stdout
        # A wrong password is a readiness problem, named without the password.
        c = chatd(name="wrong", broker="redis", redis_url=f"redis://:n0tit@{HOST}:{r.port}")
        wait_until(lambda: "503" in str(http_exchange(
            c.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").status), 10, what="503")
        assert "n0tit" not in c.log()
    finally:
        r.stop()


def test_tls_paths_relative_to_the_config_file(chatd, tmp_path):
    etc = tmp_path / "etc" / "chatd"
    etc.mkdir(parents=True)
    make_cert(etc)
    tport = free_port()
    c = chatd(start=False, tls_listen=f"{HOST}:{tport}", tls_cert="cert.pem", tls_key="key.pem")
    c.conf_path = etc / "chatd.conf"  # chatd runs in tmp_path: cert.pem is not there
    assert not (tmp_path / "cert.pem").exists()
    c.start()
    assert tls_handshake_ok(tport)
    r = run_chatd_cmd(["-T", "-c", str(c.conf_path)])
    assert f"\ntls_cert = {etc}/cert.pem\n" in r.stdout


# --------------------------------------------------------------------------
# sd_notify


def test_sd_notify_ready_once_listening(chatd, tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(path)
        s.settimeout(15)
        c = chatd(start=False, env={"NOTIFY_SOCKET": path})
        c.start()
        msg = s.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in msg.split("\n"))
        assert fields["READY"] == "1"
        assert fields["MAINPID"] == str(c.proc.pid)
        assert port_open(c.port)  # ready means listening
        rc, _ = c.stop()
        assert rc == 0
        s.settimeout(5)
        assert "STOPPING=1" in s.recv(4096).decode()
    finally:
        s.close()


def test_sd_notify_abstract_socket(chatd, tmp_path):
    name = f"chatd-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind("\0" + name)
        s.settimeout(15)
        chatd(env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096).decode().startswith("READY=1\n")
    finally:
        s.close()


# --------------------------------------------------------------------------
# make install


def build_dir():
    """make's BUILD for the binary under test, or skip."""
    d = os.path.dirname(os.path.abspath(CHATD_BIN))
    if os.path.basename(CHATD_BIN) != "chatd" or not os.path.isdir(os.path.join(d, "obj")):
        pytest.skip(f"{CHATD_BIN} is not a build of this Makefile")
    return d


def make_install(dest, prefix, timeout=120):
    build = build_dir()
    # The sanitizer builds (build/asan, build/tsan) link with their flags.
    san = os.path.basename(build) if os.path.basename(build) in ("asan", "tsan") else ""
    args = ["make", "-s", "--no-print-directory", f"BUILD={build}", f"SAN={san}", "install",
            f"PREFIX={prefix}"]
    if dest:
        args.append(f"DESTDIR={dest}")
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_make_install_layout_and_run_from_elsewhere(tmp_path):
    dest = tmp_path / "root"
    make_install(dest, "/usr")
    sbin, conf = dest / "usr/sbin/chatd", dest / "usr/etc/chatd/chatd.conf"
    man, unit = dest / "usr/share/man/man8/chatd.8", dest / "usr/lib/systemd/system/chatd.service"
    for f in (sbin, conf, man, unit):
        assert f.is_file(), f
    assert os.access(sbin, os.X_OK)
    assert conf.read_text() == open(os.path.join(REPO, "conf", "chatd.conf")).read()
    u = unit.read_text()
    assert "\nExecStart=/usr/sbin/chatd -c /usr/etc/chatd/chatd.conf\n" in u
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "LimitNOFILE="):
        assert "\n" + line in u, line
    assert "@SBINDIR@" not in u and "@SYSCONFDIR@" not in u

    # The installed binary with the installed config, from another working
    # directory; the certificate beside the config, named relatively.
    make_cert(conf.parent)
    port, tport = free_port(), free_port()
    text = conf.read_text()
    text = re.sub(r"(?m)^listen = .*$", f"listen = {HOST}:{port}", text)
    text = re.sub(r"(?m)^tls_listen =.*$", f"tls_listen = {HOST}:{tport}", text)
    text = re.sub(r"(?m)^tls_cert =.*$", "tls_cert = cert.pem", text)
    text = re.sub(r"(?m)^tls_key =.*$", "tls_key = key.pem", text)
    text = re.sub(r"(?m)^workers = .*$", "workers = 1", text)
    conf.write_text(text)
    # An existing config is kept by a second install.
    make_install(dest, "/usr")
    assert conf.read_text() == text

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert subprocess.run([str(sbin), "-t", "-c", str(conf)], cwd=elsewhere, capture_output=True,
                          timeout=20).returncode == 0
    log = open(tmp_path / "installed.log", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "REDIS_URL", "NOTIFY_SOCKET")}
    p = subprocess.Popen([str(sbin), "-c", str(conf)], cwd=elsewhere, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, env=env)
    try:
        wait_until(lambda: p.poll() is not None or (port_open(port) and port_open(tport)), 15,
                   what="the installed chatd to listen")
        assert p.poll() is None, (tmp_path / "installed.log").read_text()
        assert http_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
        assert tls_handshake_ok(tport)
    finally:
        p.terminate()
        rc = p.wait(timeout=20)
        log.close()
    assert rc == 0, (tmp_path / "installed.log").read_text()


def test_man_page_renders_cleanly():
    if shutil.which("groff") is None:
        pytest.skip("no groff")
    r = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(REPO, "doc", "chatd.8")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here")
    # Installed under a real prefix, so that ExecStart names a file that exists.
    prefix = tmp_path / "prefix"
    make_install(None, str(prefix))
    unit = prefix / "lib/systemd/system/chatd.service"
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr


# --------------------------------------------------------------------------
# make cluster


def run_cluster(tmp_path, redis_port, node_ports, conf=None, timeout=30):
    env = dict(os.environ, REDIS_PORT=str(redis_port), NODE_PORTS=" ".join(map(str, node_ports)),
               CHATD_BIN=os.path.abspath(CHATD_BIN), CLUSTER_DIR=str(tmp_path / "cluster"),
               CONF=str(conf or os.path.join(REPO, "conf", "chatd.conf")))
    env.pop("PORT", None)
    env.pop("REDIS_URL", None)
    return subprocess.run([os.path.join(REPO, "test", "cluster.sh")], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_cluster_refuses_a_taken_port(tmp_path):
    held = socket.socket()
    held.bind((HOST, 0))
    held.listen(1)
    taken = held.getsockname()[1]
    try:
        r = run_cluster(tmp_path, taken, [free_port(), free_port()])
        assert r.returncode == 1
        assert f"port {taken} is taken" in r.stderr and "REDIS_PORT" in r.stderr, r.stderr
        assert "share redis://" not in r.stdout
        r = run_cluster(tmp_path, free_port(), [free_port(), taken])
        assert r.returncode == 1
        assert f"port {taken} is taken" in r.stderr and "NODE_PORTS" in r.stderr, r.stderr
        assert "share redis://" not in r.stdout
    finally:
        held.close()


@pytest.mark.redis
def test_cluster_fails_loudly_when_a_node_does_not_start(tmp_path):
    bad = write_config(tmp_path / "bad.conf", {"workers": "many"})
    rport = free_port()
    r = run_cluster(tmp_path, rport, [free_port(), free_port()], conf=bad)
    assert r.returncode == 1
    assert "exited at start" in r.stderr and "workers" in r.stderr, r.stderr
    assert "share redis://" not in r.stdout
    wait_until(lambda: not port_open(rport), 10, what="the cluster's redis to stop")


@pytest.mark.redis
def test_cluster_banner_once_every_node_listens(tmp_path):
    rport, p1, p2 = free_port(), free_port(), free_port()
    conf = write_config(tmp_path / "c.conf", {"listen": f"{HOST}:5000", "workers": 1})
    env = dict(os.environ, REDIS_PORT=str(rport), NODE_PORTS=f"{p1} {p2}",
               CHATD_BIN=os.path.abspath(CHATD_BIN), CLUSTER_DIR=str(tmp_path / "cluster"),
               CONF=str(conf))
    out = open(tmp_path / "cluster.out", "w+")
    p = subprocess.Popen([os.path.join(REPO, "test", "cluster.sh")], stdout=out,
                         stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "share redis://" in (tmp_path / "cluster.out").read_text()
                   or p.poll() is not None, 20, what="the banner")
        assert p.poll() is None, (tmp_path / "cluster.out").read_text()
        # Every node listens by the time the banner is out.
        assert port_open(p1) and port_open(p2) and port_open(rport)
    finally:
        p.terminate()
        p.wait(timeout=30)
        out.close()
    wait_until(lambda: not (port_open(p1) or port_open(p2) or port_open(rport)), 20,
               what="the cluster to stop")


# --------------------------------------------------------------------------
# dependencies and documentation


def deps(set_name):
    r = subprocess.run([os.path.join(REPO, "third_party", "install-deps.sh"), "--list", set_name],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_make_run_installs_only_what_running_needs():
    run, cluster, test = deps("run"), deps("cluster"), deps("test")
    assert {"libevent-dev", "libhiredis-dev", "libssl-dev", "libjansson-dev", "node-llhttp",
            "pkg-config"} <= run
    for tool in ("libcmocka-dev", "python3-pytest", "python3-websockets", "clang", "chromium",
                 "redis-server", "nodejs", "npm"):
        assert tool not in run, tool
    assert run < cluster and cluster - run == {"redis-server"}
    assert cluster < test and {"libcmocka-dev", "python3-pytest", "clang", "chromium"} <= test

    def make_n(target):
        return subprocess.run(["make", "-n", "--no-print-directory", target], cwd=REPO,
                              capture_output=True, text=True, timeout=30).stdout
    assert "install-deps.sh run" in make_n("run")
    assert "install-deps.sh cluster" in make_n("cluster")
    assert "install-deps.sh test" in make_n("test")


def test_docs_reference_nothing_outside_the_tree():
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True,
                           timeout=20).stdout.split()
    assert "README.md" in files
    for f in files:
        text = open(os.path.join(REPO, f), encoding="utf-8").read()
        assert "FIGURES.md" not in text, f
        base = os.path.dirname(os.path.join(REPO, f))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL, not a file of ours
            assert os.path.exists(os.path.join(base, target)), f"{f} links {target}"
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "Linux" in readme and "Debian 12" in readme
