"""
C{tools/render-cloud-templates}: the cloud templates of etc/, rendered for a
given manager configuration.

    tools/render-cloud-templates --config /etc/conpaassql/manager.cnf --out DIR

writes into DIR:
  - C{agent-boot.sh}: the agent VM boot script the driver sends to every
    node (C{OPENNEBULA_CONTEXT_SCRIPT_AGENT}/C{LIBCLOUD_BOOT_SCRIPT}
    rendered), to read or test by hand;
  - for C{DRIVER = OPENNEBULA_XMLRPC}, also C{manager-boot.sh} (the manager
    VM's boot script) and C{manager-vm.template} (mode 0600: it carries the
    OpenNebula password in CONTEXT), for C{onevm create manager-vm.template}.

Every setting is checked by the driver's own parser first; values reach the
scripts shell-quoted and the VM template OpenNebula-quoted.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import os
import re
import sys
from collections.abc import Sequence

from conpaassql.common.files import write_file_atomic, write_secret_file
from conpaassql.iaas.base import DriverConfigError
from conpaassql.iaas.bootscript import _ETC, DEFAULT_MANAGER_TEMPLATE, renderPlaceholders
from conpaassql.iaas.onetemplate import quoteValue

__all__ = ["main", "render"]

DEFAULT_VM_TEMPLATE = os.path.join(_ETC, "manager-vm.template.in")
PASSWORD_PATH = "/etc/conpaassql/opennebula-password"


def _managerConfigForVM(text: str) -> str:
    """The configuration file without the password; the password file path set."""
    lines = [line for line in text.splitlines() if not re.match(r"\s*OPENNEBULA_PASSWORD(_FILE)?\s*[=:]", line, re.IGNORECASE)]
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.strip().lower() == "[iaas]":
            out.append(f"OPENNEBULA_PASSWORD_FILE = {PASSWORD_PATH}")
    return "\n".join(out) + "\n"


def render(configPath: str, outDir: str, *, vmName: str = "conpaassql-manager", cpu: str = "1",
           memory: str = "1024") -> list[str]:
    """
    Render the templates for the configuration at C{configPath} into C{outDir}.

    @return: the paths written.
    @raise DriverConfigError: if the [iaas] settings are wrong.
    @raise OSError: if a file cannot be read or written.
    """
    with open(configPath, encoding="utf-8") as f:
        text = f.read()
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text, source=configPath)
    if not parser.has_section("iaas"):
        raise DriverConfigError([f"{configPath}: no [iaas] section"])
    settings = dict(parser.items("iaas", raw=True))
    driver = settings.get("DRIVER", "LOCAL").strip().upper()
    os.makedirs(outDir, exist_ok=True)
    written = []
    if driver == "OPENNEBULA_XMLRPC":
        from conpaassql.iaas import opennebula

        config = opennebula.parseConfig(settings)
        boot = config.boot
    elif driver == "LIBCLOUD":
        from conpaassql.iaas import libcloud

        boot = libcloud.parseConfig(settings).boot
    else:
        raise DriverConfigError([f"DRIVER: {driver} has no cloud templates (OPENNEBULA_XMLRPC or LIBCLOUD)"])
    path = os.path.join(outDir, "agent-boot.sh")
    write_file_atomic(path, boot.script, mode=0o755)
    written.append(path)
    if driver != "OPENNEBULA_XMLRPC":
        return written

    upper = {k.upper(): v.strip() for k, v in settings.items()}
    values = {
        "AGENT_PACKAGE": upper.get("AGENT_PACKAGE", "conpaassql"),
        "AGENT_WHEEL_URL": upper.get("AGENT_WHEEL_URL", ""),
        "AGENT_WHEEL_SHA256": upper.get("AGENT_WHEEL_SHA256", "").lower(),
    }
    managerTemplate = upper.get("OPENNEBULA_CONTEXT_SCRIPT_MANAGER") or DEFAULT_MANAGER_TEMPLATE
    with open(managerTemplate, encoding="utf-8") as f:
        managerScript = renderPlaceholders(f.read(), values, source=managerTemplate)
    path = os.path.join(outDir, "manager-boot.sh")
    write_file_atomic(path, managerScript, mode=0o755)
    written.append(path)

    vmValues = {
        "MANAGER_VM_NAME": vmName, "MANAGER_CPU": cpu, "MANAGER_MEMORY": memory,
        "OPENNEBULA_IMAGE_ID": str(config.imageId), "OPENNEBULA_NETWORK_ID": str(config.networkId),
        "OPENNEBULA_SSH_PUBLIC_KEY": config.sshPublicKey or "",
        "MANAGER_CONFIG_BASE64": base64.b64encode(_managerConfigForVM(text).encode()).decode(),
        "ONE_PASSWORD": config.password,
        "START_SCRIPT_BASE64": base64.b64encode(managerScript.encode()).decode(),
    }
    with open(DEFAULT_VM_TEMPLATE, encoding="utf-8") as f:
        try:
            vmTemplate = renderPlaceholders(
                f.read(), vmValues, source=DEFAULT_VM_TEMPLATE,
                quote=lambda name, value: quoteValue(name, value),
            )
        except ValueError as e:
            raise DriverConfigError([str(e)]) from None
    path = os.path.join(outDir, "manager-vm.template")
    write_secret_file(path, vmTemplate)
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="render-cloud-templates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the manager configuration file")
    parser.add_argument("--out", required=True, help="the directory to write into")
    parser.add_argument("--vm-name", default="conpaassql-manager", help="the manager VM's name")
    parser.add_argument("--cpu", default="1", help="the manager VM's CPU share")
    parser.add_argument("--memory", default="1024", help="the manager VM's memory (MB)")
    args = parser.parse_args(argv)
    try:
        paths = render(args.config, args.out, vmName=args.vm_name, cpu=args.cpu, memory=args.memory)
    except DriverConfigError as e:
        for problem in e.problems:
            print(f"render-cloud-templates: {problem}", file=sys.stderr)
        return 2
    except (OSError, configparser.Error) as e:
        print(f"render-cloud-templates: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
