"""Consumer-group members on threads, shared by ck_group.py and kp_group.py: what they consumed
and own, how to stop one, and waiting on that with a deadline. A member thread that dies fails
the waiting script at once, with its exception, instead of a timeout that hides it."""
import threading, time


class Members:
    def __init__(self, consume, timeout):
        """`consume(name)` runs one member until `stop[name]` is set; `timeout` bounds a wait."""
        self.lock = threading.Lock()
        self.consumed = []      # (member, value)
        self.assignment = {}    # member -> set of partitions
        self.stop = {}
        self.failed = []        # why a member thread died
        self._consume, self._timeout, self._threads = consume, timeout, []

    def start(self, *names):
        for name in names:
            # Daemon threads: a script that fails ends at once, not after a member stuck in a
            # client call it cannot interrupt.
            t = threading.Thread(target=self._run, args=(name,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, name):
        try:
            self._consume(name)
        except BaseException as e:
            with self.lock:
                self.failed.append(f"member {name}: {e!r}")
            raise

    def unique(self):
        return {v for _, v in self.consumed}

    def wait(self, what, cond):
        deadline = time.time() + self._timeout
        while time.time() < deadline:
            with self.lock:
                if self.failed:
                    raise SystemExit(f"while waiting for {what}: {self.failed}")
                if cond():
                    return
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}: assignment={self.assignment} consumed={len(self.consumed)}")

    def join(self):
        for t in self._threads:
            t.join()
        if self.failed:
            raise SystemExit(f"a member failed: {self.failed}")
