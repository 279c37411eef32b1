"""
Making a new server instance's data directory: with the server's installer,
or by copying a pristine I{template} made once with it.

C{mariadb-install-db} takes most of a second; copying the data directory it
makes takes a few hundredths (measured: 34 MB, 1.1 s against 0.07 s with
C{cp -a}).  A host that starts many instances (the LOCAL cloud) makes one
template per server version::

    python -m conpaassql.agent.initdb --root DIR

prints the template's directory, C{DIR/<flavor>-<version>/}, after making it
if it does not exist yet: C{data/} (what C{mariadb-install-db} made: root
with no password, no test database, no anonymous-account clean-up yet) and
C{template.json} (the version, and every file with its size), written last;
the directory is built under a temporary name and renamed, so it is complete
or absent.  A template is never started as a server after it is made.

An agent given C{datadir_template} (L{check_template} passes) copies C{data/}
instead of running the installer; everything that makes an instance its own
is done after the copy, as for a freshly installed one: its own root
password (set at its first start), its own C{my.cnf}, port, socket and
C{tmpdir}.  MariaDB keeps no server identity file (MySQL's C{auto.cnf} is
made at first start, and is removed from a copy should a template have
one).  The Aria control file's uuid is the same in every copy, as in every
clone of a VM image: it names the data directory the Aria tables were made
in, and must stay with them (a copy without it has a corrupt
C{mysql.proc}).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MARKER",
    "TemplateError",
    "check_template",
    "ensure_template",
    "initialise_argv",
    "parse_version",
    "template_name",
]

#: The file of a template directory that says it is complete.
MARKER = "template.json"
#: The data directory inside a template directory.
DATA = "data"
#: Files a copy must not keep (per-server identity; MySQL).
IDENTITY_FILES = ("auto.cnf",)
#: Seconds the installer may take.
INSTALL_TIMEOUT = 120.0

_VERSION = re.compile(r"\bVer\s+(\S+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class TemplateError(Exception):
    """
    A template could not be made.
    """


def parse_version(output: str) -> tuple[str, str]:
    """
    Parse the output of C{mariadbd --version} / C{mysqld --version} or the
    result of C{SELECT VERSION()}.

    @return: C{(flavor, version)} with flavor C{"mariadb"} or C{"mysql"}.
    """
    match = _VERSION.search(output)
    version = match.group(1) if match else output.strip().split()[0] if output.strip() else ""
    flavor = "mariadb" if "mariadb" in output.lower() else "mysql"
    return flavor, version


def user_option() -> list[str]:
    """
    C{--user=<us>} when running as root (the server refuses root otherwise).
    """
    if os.geteuid() != 0:
        return []
    try:
        return [f"--user={pwd.getpwuid(os.geteuid()).pw_name}"]
    except KeyError:
        return [f"--user={os.geteuid()}"]


def initialise_argv(
    install_db: str | None, mysqld: str, flavor: str | None, datadir: str, tmpdir: str
) -> list[str]:
    """
    The command that initialises an empty data directory: root without a
    password, no test database, the agent's small InnoDB sizes.
    """
    if flavor == "mysql" or install_db is None:
        return [mysqld, "--no-defaults", "--initialize-insecure", f"--datadir={datadir}",
                f"--tmpdir={tmpdir}", *user_option()]
    return [
        install_db,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        f"--tmpdir={tmpdir}",
        *user_option(),
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=16M",
    ]


def template_name(flavor: str, version: str) -> str:
    """
    The name of the template directory for a server version (an upgrade
    makes a new one).
    """
    return _UNSAFE.sub("_", f"{flavor}-{version}")


def _inventory(datadir: str) -> dict[str, int]:
    files: dict[str, int] = {}
    for top, _, names in os.walk(datadir):
        for name in names:
            path = os.path.join(top, name)
            files[os.path.relpath(path, datadir)] = os.lstat(path).st_size
    return files


def check_template(directory: str, version: str | None) -> str | None:
    """
    Whether C{directory} is a complete template for this server C{version}
    (blocking; small reads and C{stat}s).

    @return: L{None} if it is, else why not.
    """
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
            marker: Any = json.load(f)
    except (OSError, ValueError) as e:
        return f"no complete template in {directory} ({e})"
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return f"{directory}/{MARKER} is not a template description"
    if version is None or marker.get("version") != version:
        return (f"the template in {directory} is of version {marker.get('version')!r}, "
                f"the server is {version!r}")
    datadir = os.path.join(directory, DATA)
    if not os.path.isdir(os.path.join(datadir, "mysql")):
        return f"the template in {directory} has no {DATA}/mysql/"
    for name, size in marker["files"].items():
        try:
            if os.lstat(os.path.join(datadir, name)).st_size != size:
                return f"the template in {directory} was changed: {name}"
        except (OSError, TypeError):
            return f"the template in {directory} misses {name}"
    return None


def _run(argv: list[str], env: dict[str, str], log: str, cwd: str) -> None:
    with open(log, "ab") as out:
        try:
            result = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    timeout=INSTALL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TemplateError(f"{argv[0]} failed: {e}") from None
    if result.returncode != 0:
        with open(log, "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
        raise TemplateError(f"{argv[0]} exited with {result.returncode}:\n{tail}")


def ensure_template(
    root: str, mysqld: str | None, install_db: str | None, env: dict[str, str]
) -> str:
    """
    The template directory for the installed server under C{root}, made
    first if there is none (blocking: run it in a process of its own, as
    C{python -m conpaassql.agent.initdb}).

    @raise TemplateError: if it cannot be made.
    """
    if mysqld is None:
        raise TemplateError("no mariadbd or mysqld found")
    try:
        out = subprocess.run([mysqld, "--version"], env=env, capture_output=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise TemplateError(f"cannot run {mysqld} --version: {e}") from None
    flavor, version = parse_version(out.decode("utf-8", "replace"))
    if not version:
        raise TemplateError(f"cannot read the version of {mysqld}")
    target = os.path.join(root, template_name(flavor, version))
    if check_template(target, version) is None:
        return target
    os.makedirs(root, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".build-", dir=root)
    try:
        datadir = os.path.join(work, DATA)
        tmpdir = os.path.join(work, "tmp")
        os.mkdir(tmpdir, 0o700)
        _run(initialise_argv(install_db, mysqld, flavor, datadir, tmpdir), env,
             os.path.join(work, "install.log"), work)
        if not os.path.isdir(os.path.join(datadir, "mysql")):
            raise TemplateError(f"the installer made no {datadir}/mysql/")
        built = os.path.join(work, "template")
        os.mkdir(built, 0o700)
        os.rename(datadir, os.path.join(built, DATA))
        marker = {"flavor": flavor, "version": version, "mysqld": mysqld,
                  "files": _inventory(os.path.join(built, DATA))}
        with open(os.path.join(built, MARKER), "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if os.path.lexists(target):
            # An incomplete or changed one: out of the way, then removed.
            os.rename(target, os.path.join(work, "old"))
        try:
            os.rename(built, target)
        except OSError:
            # Another builder was quicker: use theirs if it is complete.
            if check_template(target, version) is None:
                return target
            raise
    except OSError as e:
        raise TemplateError(f"cannot make the template in {root}: {e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """
    C{python -m conpaassql.agent.initdb --root DIR}: print the template
    directory for the installed server, making it first if needed.
    """
    import argparse

    from conpaassql.agent.config import ServerSettings

    parser = argparse.ArgumentParser(prog="python -m conpaassql.agent.initdb",
                                     description=main.__doc__)
    parser.add_argument("--root", required=True, help="where templates are kept")
    args = parser.parse_args(argv)
    settings = ServerSettings().with_binaries_found()
    path = [os.path.dirname(b) for b in (settings.mysqld, settings.install_db) if b]
    path += ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    env = {"PATH": os.pathsep.join(dict.fromkeys(path)), "LANG": "C", "LC_ALL": "C",
           "HOME": os.path.abspath(args.root), "TMPDIR": tempfile.gettempdir()}
    try:
        print(ensure_template(os.path.abspath(args.root), settings.mysqld,
                              settings.install_db, env))
    except TemplateError as e:
        print(f"template: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
