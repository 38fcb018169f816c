#!/usr/bin/env python3
"""Run a command and write what it used to OUT: `<user s> <system s> <peak RSS KiB> <exit status>`.

Usage: rusage.py OUT PIDFILE -- COMMAND [ARGS...]

The child's pid goes to PIDFILE at once (the benchmark signals the child
itself); its resource usage comes from wait4(2) once it ends, so it holds
for the child alone, whatever else runs on the machine.
"""
import os
import sys


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, pidfile, cmd = sys.argv[1], sys.argv[2], sys.argv[4:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    with open(pidfile, "w") as f:
        f.write(f"{pid}\n")
    _, status, ru = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        f.write(f"{ru.ru_utime:.3f} {ru.ru_stime:.3f} {ru.ru_maxrss} {code}\n")
    return 0 if code in (0, -15) else 1


if __name__ == "__main__":
    sys.exit(main())
