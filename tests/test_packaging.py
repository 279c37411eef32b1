"""
The package as pip installs it (a wheel, not the editable checkout the test
suite runs from) carries its twistd plugins.

The wheel is built once, with C{pip wheel --no-deps .} (build isolation: it
needs the package index, as C{tools/setup} does), and installed with
C{--no-deps} into a fresh virtualenv made in a temporary directory.  The
dependencies (Twisted & co.) are borrowed from the test suite's own
virtualenv through a C{.pth} line, which adds that directory to C{sys.path}
without processing its own C{.pth} files, so the editable checkout is not
visible there: what twistd finds is what the wheel installed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(ROOT, "twisted", "plugins")


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, **kwargs)  # type: ignore[call-overload, no-any-return]


def _tapnames() -> dict[str, str]:
    """The tapname of each plugin file in the checkout."""
    names = {}
    for path in sorted(glob.glob(os.path.join(PLUGIN_DIR, "*.py"))):
        with open(path) as f:
            text = f.read()
        found = re.findall(r'"(conpaassql-[a-z-]+)"', text)
        if found:
            names[os.path.basename(path)] = found[-1]
    return names


class InstalledPackageTests(TestCase):
    """
    One wheel, one fresh virtualenv (trial has no setUpClass, and building
    is the slow part: one test does both checks).
    """

    timeout = 300

    def install(self) -> tuple[str, str, str]:
        """
        Build the wheel and install it into a fresh virtualenv.

        @return: the work directory, the wheel and the virtualenv's python.
        """
        workdir = tempfile.mkdtemp(prefix="cq-packaging-")
        self.addCleanup(shutil.rmtree, workdir, True)
        # Build from a clean copy: a build/ left in the checkout would be
        # reused by setuptools, and building writes build/ and *.egg-info.
        source = os.path.join(workdir, "source")
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
            ".git", ".venv", ".hypothesis", "_trial_temp*", "build", "*.egg-info",
            "__pycache__", ".state", "artifacts"))
        wheels = os.path.join(workdir, "wheels")
        build = _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
             "-q", "-w", wheels, source],
            cwd=workdir,
        )
        self.assertEqual(build.returncode, 0, f"pip wheel failed:\n{build.stdout}{build.stderr}")
        wheel = glob.glob(os.path.join(wheels, "conpaassql-*.whl"))[0]
        venv = os.path.join(workdir, "venv")
        made = _run([sys.executable, "-m", "venv", "--without-pip", venv])
        self.assertEqual(made.returncode, 0, made.stderr)
        python = os.path.join(venv, "bin", "python")
        install = _run(
            [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
             "--disable-pip-version-check", "-q", wheel],
            cwd=workdir,
        )
        self.assertEqual(install.returncode, 0,
                         f"pip install failed:\n{install.stdout}{install.stderr}")
        purelib = _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
        with open(os.path.join(purelib, "zz-borrowed-dependencies.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        return workdir, wheel, python

    def test_installed_wheel(self) -> None:
        """
        The wheel holds every plugin file of the checkout (and nothing else
        under twisted/); C{twistd --help}, run by the fresh virtualenv's
        Python outside the checkout, lists every conpaassql plugin, and the
        agent's options load from the installed package.
        """
        workdir, wheel, python = self.install()

        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
        expected = {f"twisted/plugins/{name}" for name in os.listdir(PLUGIN_DIR)
                    if name.endswith(".py")}
        self.assertTrue(expected)
        self.assertEqual({n for n in names if n.startswith("twisted/")}, expected)
        self.assertIn("conpaassql/agent/tap.py", names)

        twistd = "from twisted.scripts.twistd import run; run()"
        result = _run([python, "-c", twistd, "--help"], cwd=workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        tapnames = _tapnames()
        self.assertIn("conpaassql-agent", tapnames.values())
        for tapname in tapnames.values():
            self.assertRegex(result.stdout, rf"(?m)^\s+{re.escape(tapname)}\s")
        where = _run([python, "-c", "import conpaassql; print(conpaassql.__file__)"],
                     cwd=workdir)
        self.assertTrue(where.stdout.strip().startswith(os.path.join(workdir, "venv")),
                        where.stdout + where.stderr)
        agent = _run([python, "-c", twistd, "conpaassql-agent", "--help"], cwd=workdir)
        self.assertEqual(agent.returncode, 0, agent.stderr)
        self.assertIn("--state-dir", agent.stdout)
