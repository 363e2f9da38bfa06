"""Helpers shared by the benchmark scripts (scripts/bench, scripts/login-timing, scripts/soak).

They build the release binary, run the product's own CLI against a data dir, start
`pixee-pim serve` on a free loopback port and read its CPU time and RSS from /proc, so every
script measures the binary a self-hoster runs.
"""
import json, os, re, shutil, signal, socket, ssl, subprocess, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "pixee-pim")
OUT_DIR = os.path.join(ROOT, "target", "bench")
PASSWORD = "bench admin password 1"
ADMIN_EMAIL = "admin@localhost"
# Per-key and per-IP limits lifted, otherwise the limits are what gets measured.
UNLIMITED = ["--key-reads-per-minute", "4000000000", "--key-writes-per-minute", "4000000000",
             "--login-rate-per-minute", "0", "--refresh-rate-per-minute", "0"]


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def build(*extra):
    """`cargo build --release --locked` plus `extra` (e.g. "--example", "soak")."""
    subprocess.run(["cargo", "build", "--release", "--locked", *extra], cwd=ROOT, check=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cli(data, *args):
    return sh(BIN, "--data-dir", data, *args).stdout.strip()


class Server:
    """`pixee-pim serve` on a free loopback port; waits until /healthz answers."""

    def __init__(self, data, args=UNLIMITED, env=None, log=None, binary=None, tls=False):
        self.port = free_port()
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        # A self-signed certificate on this machine: not verified.
        self.context = ssl._create_unverified_context() if tls else None
        env = {**os.environ, "PIXEE_ADMIN_PASSWORD": PASSWORD, "RUST_LOG": "warn", **(env or {})}
        out = log if log is not None else subprocess.DEVNULL
        started = time.monotonic()
        self.proc = subprocess.Popen([binary or BIN, "--data-dir", data, "serve", "--listen",
                                      f"127.0.0.1:{self.port}", *args],
                                     env=env, stdout=out, stderr=out)
        while True:
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1,
                                            context=self.context) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit("server exited during start-up")
            time.sleep(0.005)
        self.startup_s = time.monotonic() - started

    @property
    def pid(self):
        return self.proc.pid

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, limit_s=90):
        """Waits until the server is idle (background work after opening a large store, such
        as sled's own flushing, would otherwise be measured as request cost)."""
        started = time.monotonic()
        last = self.cpu_seconds()
        while time.monotonic() - started < limit_s:
            time.sleep(1)
            now = self.cpu_seconds()
            if now - last < 0.02:
                break
            last = now
        return time.monotonic() - started

    def rss_mib(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def reset_peak_rss(self):
        """Restarts VmHWM from the current RSS (Linux `clear_refs` 5), so a later VmHWM is the
        peak of what ran since, not of the start-up."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def login(self, email=ADMIN_EMAIL, password=PASSWORD):
        req = urllib.request.Request(self.base + "/api/v1/auth/login", method="POST",
                                     data=json.dumps({"email": email, "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.context) as r:
            return json.load(r)["access_token"]

    def healthy(self, timeout=5):
        """Whether /healthz answers within `timeout` seconds."""
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=timeout,
                                        context=self.context) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        """SIGTERM, then SIGKILL if the server has not exited after 30 s."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def percentile(values, p):
    """Nearest-rank percentile, p in 0..100."""
    values = sorted(values)
    rank = max(1, min(len(values), -(-len(values) * p // 100)))
    return values[int(rank) - 1]


def print_table(rows):
    """Rows of (name, value, note), aligned."""
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")


def write_figures(name, figures):
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name)
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"\nfigures written to {path}")
    return path


def ensure(tool, package):
    """Installs Debian's `package` when `tool` (a command or a path) is missing."""
    if shutil.which(tool) or os.path.exists(tool):
        return
    root = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(root + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(root + ["apt-get", "install", "-y", "-qq", package], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, headers=(), connections=64, threads=2, script=None, duration="5s"):
    """One wrk run: requests/s, p50 and p99 in ms, requests, non-2xx answers."""
    args = ["wrk", "-t", str(threads), "-c", str(connections), "-d", duration, "--latency"]
    for h in headers:
        args += ["-H", h]
    if script:
        args += ["-s", script]
    out = sh(*args, url).stdout
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": to_ms(re.search(r"\n\s+50%\s+(\S+)", out).group(1)),
            "p99_ms": to_ms(re.search(r"\n\s+99%\s+(\S+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non_2xx": int(bad.group(1)) if bad else 0}


def seed(keys, products, scopes="products:read", prefix="pixee-bench-"):
    """A fresh data dir with tenant `default`, `keys` keys and `products` products seeded through
    the CLI; returns the dir and one more key with `scopes`."""
    data = tempfile.mkdtemp(prefix=prefix)
    cli(data, "tenant", "create", "--name", "default")
    cli(data, "seed", "--tenant", "default", "--keys", str(keys), "--products", str(products))
    key = cli(data, "key", "create", "--tenant", "default", "--name", "bench", "--scopes", scopes)
    return data, key


# wrk scripts.

# `ean13(body)`: the 12 digits of `body` (a number, zero-padded, or a string of 12 digits)
# followed by their EAN-13 check digit. Prepended to the wrk scripts that make EANs.
EAN13_LUA = r"""
local function ean13(body)
  local digits = type(body) == "number" and string.format("%012d", body) or body
  local sum = 0
  for i = 1, 12 do
    local d = tonumber(digits:sub(i, i))
    if i % 2 == 0 then sum = sum + 3 * d else sum = sum + d end
  end
  return digits .. tostring((10 - sum % 10) % 10)
end
"""


# PostgreSQL (scripts/bench-postgres, scripts/bench-cluster).

CREATE_LUA = EAN13_LUA + r"""
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  run = args[1]
  n = 0
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  local ean = ean13(string.format("%s%d%08d", run, tid, n))
  -- No header table: wrk's own headers (the -H key among them) go with the request.
  return wrk.format("POST", nil, nil, '{"ean":"' .. ean .. '","name":"Bench ' .. ean .. '"}')
end
"""


def pg_bin():
    versions = sorted(d for d in os.listdir("/usr/lib/postgresql")
                      if os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb"))
    if not versions:
        raise SystemExit("install Debian's postgresql first (scripts/test does)")
    return f"/usr/lib/postgresql/{versions[-1]}/bin"


class PgCluster:
    """initdb + pg_ctl in a temporary directory, loopback only; stop() removes it."""

    def __init__(self):
        self.bin = pg_bin()
        self.dir = tempfile.mkdtemp(prefix="pixee-bench-pg-")
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            sh("chown", "-R", "postgres:postgres", self.dir)
        self.run("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                 "-c shared_buffers=128MB", "start")

    def run(self, tool, *args):
        cmd = [f"{self.bin}/{tool}", *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir)

    def database(self, name):
        sh(f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
           "-c", f"CREATE DATABASE {name}")
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        try:
            self.run("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def wrk_rps(url, header, script=None, args=(), duration="5s"):
    cmd = ["wrk", "-t", "2", "-c", "64", "-d", duration, "-H", header]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    out = sh(*cmd).stdout
    rps = float(out.split("Requests/sec:")[1].split()[0])
    bad = 0
    if "Non-2xx or 3xx responses:" in out:
        bad = int(out.split("Non-2xx or 3xx responses:")[1].split()[0])
    return rps, bad
