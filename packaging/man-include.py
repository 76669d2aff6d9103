"""help2man include file: a COMMANDS section with each subcommand's --help,
and the FILES / SEE ALSO sections (used by build-deb.sh)."""
import subprocess
import sys

COMMANDS = ["run", "replay", "collect", "nic", "stats", "config", "service"]


def roff(text: str) -> str:
    return "\n".join(("\\&" + line if line.startswith((".", "'")) else line)
                     .replace("\\", "\\\\") if not line.startswith(".") else "\\&" + line
                     for line in text.splitlines())


def main() -> None:
    exe = sys.argv[1]
    print("[COMMANDS]")
    for cmd in COMMANDS:
        out = subprocess.run([exe, cmd, "--help"], capture_output=True, text=True,
                             check=True).stdout
        print(f".SS {cmd}\n.nf\n{roff(out).rstrip()}\n.fi")
    print("""[FILES]
.TP
.I /etc/flowprobe/flowprobe.yaml
The configuration of the flowprobe service; every key is documented in it.
.TP
.I /run/flowprobe/flowprobe.sock
Counters of the running probe (\\fBflowprobe stats\\fR).
.TP
.I /lib/systemd/system/flowprobe.service
The hardened service: user flowprobe, CAP_NET_RAW and CAP_NET_ADMIN only.
.TP
.I /usr/share/flowprobe/afxdp.conf
Drop-in for capture.backend: afxdp (adds CAP_BPF, CAP_PERFMON, AF_XDP).
[SEE ALSO]
.BR systemctl (1),
.BR nfdump (1),
.BR tcpdump (8)
""")


if __name__ == "__main__":
    main()
