"""Run a stage's command line and SIGKILL it in the middle of its N-th record-log append: the part
written before the kill stays, the line itself is torn (half written, no newline), nothing is
cleaned up. The fault tests use it to kill ``sample`` and ``evaluate`` at a known point.

    python tests/kill_after.py N ttpa_jax.sample --model ... --out ...
"""

import json
import os
import runpy
import signal
import sys

from ttpa_jax.core import record_log


def main() -> None:
    kill_at, module = int(sys.argv[1]), sys.argv[2]
    real, calls = record_log.RecordLog.append, [0]

    def append(self, record):
        calls[0] += 1
        if calls[0] == kill_at:
            line = json.dumps(record).encode()
            record_log.write_synced(self._fd, line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, record)

    record_log.RecordLog.append = append
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
