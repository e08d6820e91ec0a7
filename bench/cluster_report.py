#!/usr/bin/env python3
"""Sums and table for bench/cluster.sh.

usage:
  cluster_report.py run RUN_DIR IMAGE_BYTES VMS...
      Checks the backup reports RUN_DIR/<vm>.json (each committed, every byte read, every
      chunk new) and prints one line of figures for the run:
        uploaded_bytes wire_bytes stored_copies_bytes cpu_busy cluster_cpu chunks_not_new repairs
        range_mean_s range_max_s lease_wait_s
      uploaded_bytes  sum of disks[].bytes_uploaded (record bytes written on all storage
                      nodes together, every copy)
      wire_bytes      TCP payload the workers sent to the storage nodes' ports (tcp_info
                      bytes_sent - bytes_retrans, from RUN_DIR/ss.txt, `ss -tinpH`): the
                      gRPC requests with their HTTP/2 framing, Missing and Put alike
      stored_copies_bytes  sum of RUN_DIR/packs.txt (`du -sb` of each node's packs dir)
      cpu_busy        share of the machine's CPU time not idle (nor iowait) between
                      RUN_DIR/cpu0.txt and cpu1.txt (the `cpu` line of /proc/stat), every
                      process of the machine counted
      cluster_cpu     the cluster members' share of all cores' time (RUN_DIR/ticks0.txt,
                      ticks1.txt: their user + system clock ticks; times.txt: t0 t1)
      chunks_not_new  chunks the reports count as already stored (a repair that copied a
                      chunk while its put was on the way makes a copy look existing)
      repairs         the coordinator's repairs after its startup one (RUN_DIR/data/
                      coordinator-1/log): storage nodes that missed a check, repaired
                      while the backups ran
      range_*_s       mean and longest lease-to-done time of a range, from the workers'
                      "range done ... secs=" lines (RUN_DIR/data/worker-*/log, BORA_LOG=info);
                      0 when the workers did not log them
      lease_wait_s    from the first "job started" to the first "range leased" in the
                      coordinator's log: how long idle workers took to ask for work
  cluster_report.py table RESULTS_TSV TOTAL_BYTES READ_LIMIT RUNS
      Prints the table and the summary from the best run of every configuration.
"""
import glob
import json
import os
import re
import sys


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def stamp(line: str):
    """Seconds of the day of a log line's leading RFC 3339 timestamp (None if none)."""
    m = re.match(r"\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d(?:\.\d+)?)", line)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def fail(msg: str) -> None:
    print(f"cluster_report: {msg}", file=sys.stderr)
    sys.exit(1)


def run(run_dir: str, image_bytes: int, vms: list) -> None:
    uploaded = 0
    not_new = 0
    for vm in vms:
        path = f"{run_dir}/{vm}.json"
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            fail(f"{path}: no backup report ({e})")
        d = r["disks"][0]
        chunks = image_bytes // (256 << 10)
        counted = d["chunks_new"] + d["chunks_reused"] + d["chunks_zero"] + d["chunks_clean"]
        if d["bytes_read"] != image_bytes or counted != chunks:
            fail(
                f"{vm}: read {d['bytes_read']} of {image_bytes} bytes, "
                f"{counted} of {chunks} chunks accounted for"
            )
        not_new += chunks - d["chunks_new"]
        uploaded += d["bytes_uploaded"]

    with open(f"{run_dir}/members.json") as f:
        status = json.load(f)
    workers = {m["pid"] for m in status["members"] if m["role"] == "worker"}
    storage = {n["addr"] for n in status["ring"]["nodes"]}
    if not workers or not storage:
        fail(f"{run_dir}/members.json: no workers or storage nodes")

    # ss -tinpH state established: a socket line (Recv-Q Send-Q local peer users:(...))
    # followed by an indented tcp_info line.
    wire = 0
    sock = None
    with open(f"{run_dir}/ss.txt") as f:
        for line in f:
            if not line.strip():
                continue
            if not line[0].isspace():
                sock = line.split()
                continue
            if sock is None:
                continue
            peer = sock[3]
            pid = re.search(r"pid=(\d+)", " ".join(sock))
            if pid and int(pid.group(1)) in workers and peer in storage:
                sent = re.search(r"\bbytes_sent:(\d+)", line)
                retrans = re.search(r"\bbytes_retrans:(\d+)", line)
                wire += int(sent.group(1)) if sent else 0
                wire -= int(retrans.group(1)) if retrans else 0
            sock = None
    if wire < uploaded:
        # Not fatal: the backups are fine, only this figure is not (see the table's note).
        print(
            f"warning: the workers' open connections to the storage nodes carried {wire} "
            f"bytes, less than the {uploaded} bytes uploaded: a connection closed before "
            "`ss` read it",
            file=sys.stderr,
        )

    stored = 0
    with open(f"{run_dir}/packs.txt") as f:
        for line in f:
            stored += int(line.split()[0])
    cpu = []
    for name in ("cpu0.txt", "cpu1.txt"):
        with open(f"{run_dir}/{name}") as f:
            cpu.append([int(x) for x in f.read().split()[1:]])
    delta = [b - a for a, b in zip(*cpu)]
    idle = delta[3] + delta[4]  # idle, iowait
    busy = 1 - idle / max(1, sum(delta[:8]))  # guest time is already in user
    ticks = []
    for name in ("ticks0.txt", "ticks1.txt"):
        with open(f"{run_dir}/{name}") as f:
            ticks.append(int(f.read()))
    with open(f"{run_dir}/times.txt") as f:
        t0, t1 = (float(x) for x in f.read().split())
    cluster_cpu = (ticks[1] - ticks[0]) / os.sysconf("SC_CLK_TCK") / ((t1 - t0) * os.cpu_count())
    repairs = 0
    started = leased = None
    try:
        with open(f"{run_dir}/data/coordinator-1/log", errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line)
                repairs += line.startswith("repair after")
                if started is None and "job started" in line:
                    started = stamp(line)
                if leased is None and "range leased" in line:
                    leased = stamp(line)
    except OSError:
        pass
    lease_wait = leased - started if started is not None and leased is not None else 0.0
    secs = []
    for log in glob.glob(f"{run_dir}/data/worker-*/log"):
        with open(log, errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line)
                m = re.search(r"range done .*\bsecs=([0-9.]+)", line)
                if m:
                    secs.append(float(m.group(1)))
    mean = sum(secs) / len(secs) if secs else 0.0
    print(uploaded, wire, stored, f"{busy:.3f}", f"{cluster_cpu:.3f}", not_new, max(0, repairs - 1),
          f"{mean:.3f}", f"{max(secs, default=0.0):.3f}", f"{lease_wait:.3f}")


def table(results: str, total: int, read_limit: int, runs: int) -> None:
    rows = []
    with open(results) as f:
        for line in f:
            (w, s, r, secs, uploaded, wire, stored, busy, ccpu, not_new, repairs, rmean,
             rmax, wait) = line.split()
            rows.append((int(w), int(s), int(r), float(secs), int(uploaded), int(wire),
                         int(stored), float(busy), float(ccpu), int(not_new), int(repairs),
                         float(rmean), float(rmax), float(wait)))
    base = next((row for row in rows if row[:3] == (1, 1, 1)), rows[0])
    mib = 1 << 20
    gib = total / (1 << 30)
    print()
    print(
        f"{gib:g} GiB: 4 dense mixed images backed up at once, "
        f"each source read at <= {read_limit / mib:g} MiB/s per worker"
    )
    hdr = ("workers", "storage", "replicas", "seconds", "MiB/s", "scaling", "CPU bora/all",
           "1st lease", "range s", "gRPC MiB", "stored MiB", "gRPC/stored", "uploaded/stored")
    print("%7s %7s %8s %8s %6s %7s %12s %9s %9s %8s %10s %11s %15s" % hdr)
    for w, s, r, secs, uploaded, wire, stored, busy, ccpu, _, _, rmean, rmax, wait in rows:
        unique = stored / r
        print(
            "%7d %7d %8d %8.2f %6.0f %6.2fx %12s %9.2f %9s %8.0f %10.0f %11.3f %15.3f"
            % (w, s, r, secs, total / secs / mib, base[3] / secs,
               f"{ccpu * 100:.0f}%/{busy * 100:.0f}%", wait, f"{rmean:.2f}/{rmax:.2f}",
               wire / mib, unique / mib, wire / unique, uploaded / unique)
        )
    for w, s, r, _, uploaded, wire, *_, not_new, repairs, _, _, _ in rows:
        if not_new or repairs:
            print(
                f"  note {w}x{s} r{r}: {repairs} repair(s) during the backups, {not_new} chunks "
                "reported as already stored"
            )
        if wire < uploaded:
            print(
                f"  note {w}x{s} r{r}: gRPC bytes undercounted (less than uploaded): a worker's "
                "connection to a storage node closed before it was read"
            )
    print()
    scaling = ", ".join(
        f"{w}x{s} r{r} {base[3] / secs:.2f}x" for w, s, r, secs, *_ in rows if (w, s, r) != base[:3]
    )
    per_replicas = {}
    for row in rows:
        per_replicas.setdefault(row[2], []).append(row[5] / (row[6] / row[2]))
    ratios = ", ".join(
        f"{min(v):.3f}-{max(v):.3f} with {r} replica{'s' if r > 1 else ''}"
        if round(min(v), 3) != round(max(v), 3)
        else f"{v[0]:.3f} with {r} replica{'s' if r > 1 else ''}"
        for r, v in sorted(per_replicas.items())
    )
    if scaling:
        scaling = (
            f"scaling vs {base[0]}x{base[1]} r{base[2]} (workers x storage nodes, replicas): "
            f"{scaling}; "
        )
    print(f"{scaling}gRPC bytes per unique stored byte: {ratios}")
    print(
        "(CPU bora/all: the cluster members' and the whole machine's share of all cores; "
        "1st lease: seconds from the first job started to the first range leased; range s: "
        "mean/longest range, lease to done; gRPC: TCP payload workers -> storage nodes; "
        "stored: unique pack bytes; uploaded: the reports' bytes_uploaded)"
    )
    print(
        f"(best of {runs} run{'s' if runs > 1 else ''} each; wall clock from the first backup "
        f"started to the last committed; images in page cache; {os.cpu_count()} cores)"
    )


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 6 and sys.argv[1] == "table":
        table(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
