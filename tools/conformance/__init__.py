"""The conformance runner: run an external test suite inside a msbfs mount.

Three pieces that know nothing of each other's insides:

* a ``Target`` (``targets.py``) provides a directory served by msbfs and a way to run a
  command there: ``HostMountTarget`` mounts with ``msbfs mount`` on this host;
  ``NativeTarget`` is a plain directory (the baseline). A guest target implements the
  same protocol (stage files in, run a command, tear down).
* a ``Suite`` (``suites.py``) says which command to run and turns its output into
  per-test results: TAP files (through ``prove`` or directly), a pytest path, or a shell
  command;
* the runner (``runner.py``) glues one to the other and prints every failure, then the
  plain last line ``N passed, N failed``.

``python -m tools.conformance --help`` for the command line.
"""

from tools.conformance.runner import Outcome, run_suite
from tools.conformance.suites import PytestSuite, ShellSuite, Suite, TapSuite, TestResult
from tools.conformance.targets import HostMountTarget, NativeTarget, Target

__all__ = ["HostMountTarget", "NativeTarget", "Outcome", "PytestSuite", "ShellSuite", "Suite",
           "TapSuite", "Target", "TestResult", "run_suite"]
