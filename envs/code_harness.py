"""The test harness of espl/Code-v0. It runs INSIDE the sandbox as main.py (stdlib only; never imported by
the host), with the model's code in solution.py and the problem in problem.json.

Verdicts: one JSON line per test on the process's original stdout, each carrying a random token the host
sends on stdin; the model's own prints are redirected to stderr. So printing "all tests passed", exiting
early (`sys.exit(0)`, `os._exit(0)`) or crashing the interpreter cannot fake a pass: a test without a
tokened verdict line counts as failed. (Code that digs the token out of this harness's frames could still
forge one; docs/sandbox.md lists that as not covered.)
"""

import json
import os
import signal
import sys
import traceback


class TestTimeout(BaseException):  # BaseException: `except Exception` in the model's code does not swallow it
    pass


def main():
    token = sys.stdin.readline().strip()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the model's stdout now goes to stderr; `report` is the verdict channel
    with open("problem.json") as f:
        problem = json.load(f)
    per_test = float(problem["per_test_timeout_s"])

    def emit(**fields):
        report.write("\n" + json.dumps(dict(t=token, **fields)) + "\n")
        report.flush()

    def on_alarm(signum, frame):
        raise TestTimeout("test took longer than %g s" % per_test)

    def begin(i):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, per_test)

    def finish(i, error):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if error is None:
            emit(i=i, ok=True)
        else:
            emit(i=i, ok=False, err=describe(error))

    ns = {"__name__": "solution", "__builtins__": __builtins__}
    exec(compile(problem["stub"], "problem.py", "exec"), ns)
    try:
        with open("solution.py") as f:
            source = f.read()
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, per_test)
        exec(compile(source, "solution.py", "exec"), ns)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit(load_error=describe(exc))
        traceback.print_exc()
        return
    candidate = ns.get(problem["entry_point"])
    ns.update(_espl_begin=begin, _espl_finish=finish)
    try:
        exec(compile(problem["tests"], "tests.py", "exec"), ns)
        ns["check"](candidate)
    except BaseException as exc:  # setup code of the tests failed: the remaining tests have no verdict
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit(abort=describe(exc))
        traceback.print_exc()
        return
    emit(done=True)


def describe(exc):
    text = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    return text[:500]


main()
